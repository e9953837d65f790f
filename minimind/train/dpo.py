"""Direct Preference Optimization (DPO): learn from (chosen, rejected) answer pairs, no reward model.

DPO (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model") shows that the RLHF objective max E[r] - beta KL(pi || pi_ref) has the implicit
reward r(x, y) = beta log pi(y|x) / pi_ref(y|x), so the Bradley-Terry preference likelihood can be
maximised directly over the policy:

    L = -log sigmoid( beta * [ (log pi(y_w|x) - log pi(y_l|x)) - (log pi_ref(y_w|x) - log pi_ref(y_l|x)) ] )

y_w is the chosen answer, y_l the rejected one, and log pi(y|x) = sum_t log pi(y_t | x, y_<t) is
the sequence log-probability summed over the assistant's tokens (the SFT loss mask). pi_ref is a
frozen copy of the starting (SFT) model: at step 0 pi = pi_ref, every margin is 0 and L = log 2.
beta (~0.1) sets how far pi may move from pi_ref. Optionally an SFT term on the chosen answers,
L + sft_weight * NLL(y_w) (token mean), keeps the chosen answers likely (as in RPO, Pang et al. 2024).

Reported metrics, with implicit rewards r_w = beta (log pi(y_w) - log pi_ref(y_w)), r_l likewise:
reward accuracy = mean[r_w > r_l], margin = mean[r_w - r_l], and the policy's mean chosen /
rejected sequence log-probs.

The reference model never trains: requires_grad False, eval mode, forward in inference mode. Its
log-probs depend only on the pair, so by default they are computed once per pair and cached
(`ref_mode="cache"`), keyed by the pair's record index in the prepared dataset (the loader puts
`index` in each batch): every epoch after the first skips the reference forward (about a quarter
of a step's compute), the cache costs 8 bytes per pair and is saved with checkpoints, so a
resumed run uses exactly the values it had. `ref_mode="step"` recomputes them every step.
Held-out evaluation (`eval_loss`) always runs the reference: its indices are another dataset's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..runtime import freeze
from .pretrain import IGNORE

REF_MODES = ("cache", "step")


def sequence_logps(logits, labels):
    """Sum of log p(label_t) over labelled positions. logits (B, T, V), labels (B, T) -> (B,), counts (B,)."""
    B, T, V = logits.shape
    token_logp = -F.cross_entropy(logits.reshape(-1, V).float(), labels.reshape(-1),
                                  ignore_index=IGNORE, reduction="none").view(B, T)  # (B, T), 0 where ignored
    return token_logp.sum(-1), (labels != IGNORE).sum(-1)


def dpo_loss(pi_w, pi_l, ref_w, ref_l, beta: float):
    """DPO loss from sequence log-probs (each (B,)); returns (loss, r_w, r_l) with implicit rewards."""
    r_w = beta * (pi_w - ref_w)  # (B,) implicit reward of the chosen answer
    r_l = beta * (pi_l - ref_l)  # (B,) of the rejected answer
    loss = -F.logsigmoid(r_w - r_l).mean()  # = -log sigmoid(beta [(pi_w - pi_l) - (ref_w - ref_l)])
    return loss, r_w, r_l


class DirectPreferenceOptimization:
    """loss(model, batch) for DPOLoader batches (chosen_/rejected_ input_ids and labels, (B, T))."""

    name = "dpo"

    def __init__(self, ref_model, beta: float = 0.1, sft_weight: float = 0.0, ref_mode: str = "cache"):
        if ref_mode not in REF_MODES:
            raise ValueError(f"ref_mode must be one of {REF_MODES}, got {ref_mode!r}")
        self.ref = freeze(ref_model)
        self.beta, self.sft_weight, self.ref_mode = float(beta), float(sft_weight), ref_mode
        self.cache = torch.full((0, 2), float("nan"))  # (n_pairs, 2): ref (chosen, rejected) by record index
        self.ref_forwards = 0  # pairs the reference model has scored (cache misses)

    def to(self, device):
        self.ref.to(device)
        return self

    @torch.inference_mode()
    def _ref_logps(self, ids, labels):
        """Reference sequence log-probs of rows (N, T) -> (N,)."""
        self.ref_forwards += ids.shape[0] // 2
        return sequence_logps(self.ref(ids).logits, labels)[0].float()

    def reference(self, batch, cached: bool = True):
        """(ref_w, ref_l), each (B,): from the cache where possible, else from the reference model."""
        ids_w, lab_w = batch["chosen_input_ids"], batch["chosen_labels"]
        ids_l, lab_l = batch["rejected_input_ids"], batch["rejected_labels"]
        B = ids_w.shape[0]
        if self.ref_mode == "step" or not cached or "index" not in batch:
            ref = self._ref_logps(torch.cat([ids_w, ids_l]), torch.cat([lab_w, lab_l]))  # (2B,)
            return ref[:B].clone(), ref[B:].clone()  # clone: plain tensors, not inference tensors
        index = batch["index"].cpu()  # (B,) record indices of the pairs
        if int(index.max()) >= len(self.cache):  # grow to the largest index seen
            grown = torch.full((int(index.max()) + 1, 2), float("nan"))
            grown[: len(self.cache)] = self.cache
            self.cache = grown
        miss = self.cache[index, 0].isnan().nonzero().flatten()  # (M,) rows of the batch never scored
        if len(miss):
            m = miss.to(ids_w.device)
            ref = self._ref_logps(torch.cat([ids_w[m], ids_l[m]]), torch.cat([lab_w[m], lab_l[m]])).cpu()  # (2M,)
            self.cache[index[miss]] = torch.stack([ref[: len(miss)], ref[len(miss):]], dim=1)
        ref = self.cache[index].to(ids_w.device)  # (B, 2)
        return ref[:, 0], ref[:, 1]

    def state_dict(self) -> dict:
        return {"cache": self.cache}

    def load_state_dict(self, d: dict) -> None:
        if "cache" in d:
            self.cache = d["cache"]

    def loss(self, model, batch):
        return self._loss(model, batch, cached=True)

    def eval_loss(self, model, batch):
        return self._loss(model, batch, cached=False)

    def _loss(self, model, batch, cached: bool):
        lab_w, lab_l = batch["chosen_labels"], batch["rejected_labels"]
        B = lab_w.shape[0]
        # one forward for both answers: rows 0..B-1 chosen, B..2B-1 rejected
        out = model(torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]]))  # logits (2B, T, V)
        logps, counts = sequence_logps(out.logits, torch.cat([lab_w, lab_l]))  # (2B,)
        pi_w, pi_l = logps[:B], logps[B:]
        ref_w, ref_l = self.reference(batch, cached)
        loss, r_w, r_l = dpo_loss(pi_w, pi_l, ref_w, ref_l, self.beta)
        metrics = {"n_tokens": batch["n_tokens"], "dpo_loss": loss.detach(),
                   "reward_acc": (r_w > r_l).float().mean().detach(),
                   "reward_margin": (r_w - r_l).mean().detach(),
                   "logp_chosen": pi_w.detach().mean(), "logp_rejected": pi_l.detach().mean()}
        if self.sft_weight:
            nll = -pi_w.sum() / counts[:B].sum().clamp(min=1)  # token-mean NLL of the chosen answers
            metrics["sft_loss"] = nll.detach()
            loss = loss + self.sft_weight * nll
        if out.aux_loss is not None:  # MoE load balancing
            loss = loss + out.aux_loss
        return loss, metrics


@torch.no_grad()
def preference_accuracy(model, loader, batches: int | None = None, device=None, dtype=None) -> dict:
    """Share of pairs where the model gives the chosen answer the higher sequence log-prob.

    `loader` is a DPOLoader; one epoch is read (or `batches` batches). -> {"accuracy", "pairs",
    "logp_chosen", "logp_rejected"} (mean sequence log-probs).
    """
    from ..runtime import autocast

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    state = loader.state_dict()
    wins = n = 0
    sums = [0.0, 0.0]
    for _ in range(batches or len(loader)):
        b = next(loader)
        ids = torch.cat([b["chosen_input_ids"], b["rejected_input_ids"]]).to(device)  # (2B, T)
        labels = torch.cat([b["chosen_labels"], b["rejected_labels"]]).to(device)
        with autocast(device, dtype or torch.float32):
            logps = sequence_logps(model(ids).logits, labels)[0].float()  # (2B,)
        B = ids.shape[0] // 2
        wins += int((logps[:B] > logps[B:]).sum())
        sums[0] += float(logps[:B].sum())
        sums[1] += float(logps[B:].sum())
        n += B
    loader.load_state_dict(state)
    model.train(was_training)
    return {"accuracy": wins / max(n, 1), "pairs": n, "logp_chosen": sums[0] / max(n, 1),
            "logp_rejected": sums[1] / max(n, 1)}
