"""Native reward models: our own transformer, fitted to preference pairs by Bradley-Terry.

Bradley-Terry (1952), as used for RLHF reward models by Ouyang et al. 2022 (InstructGPT): the
probability that answer y_w is preferred over y_l for prompt x is sigmoid(r(x, y_w) - r(x, y_l)), so

    L = -log sigmoid( r(x, y_w) - r(x, y_l) )                 averaged over pairs

Two choices of r, both started from an SFT model (`minimind reward train --head ...`):

head (the default): a scalar head on the last token,

    r(x, y) = w . h_last                                     h_last: the trunk's final (RMS-normalised)
                                                             hidden state at the conversation's last token

    The model is the decoder trunk (`MiniMindModel`) plus `score`, a Linear(hidden, 1) without bias;
    there is no LM head. The names match transformers' `LlamaForSequenceClassification` (`model.*`,
    `score.weight`) and so does the pooling: the last token of the chat template's rendering of the
    whole conversation (the newline after the final <|im_end|>), so an exported reward model scores
    the same in transformers (`minimind export hf`). Its checkpoint's config has num_labels = 1.

likelihood: the reply's mean token log-probability under a fine-tuned copy pi_phi of the model,

    r(x, y) = beta / |y| * sum_t log pi_phi(y_t | x, y_<t)       over the reply's trained tokens

    the reference-free, length-normalised reward of SimPO (Meng et al. 2024, "SimPO: Simple
    Preference Optimization with a Reference-Free Reward"), here fitted as a reward model rather
    than as the policy. A language model judges a reply token by token, each token against the
    prediction made just before it; a last-token head has to learn that comparison anew from a few
    thousand pairs, and on the built-in pairs it learns the training facts instead (docs/rl.md,
    "Reward model"). This r starts from the SFT model's own ranking and BT-training sharpens it.
    The mean, not the sum, so that as an RL reward a shorter reply is not a better one. Its
    checkpoint is an ordinary causal LM (num_labels = 0; `minimind export hf` writes a
    `LlamaForCausalLM`) with kind = "likelihood" and beta in reward.json.

Held-out pair accuracy = share of pairs with r(x, y_w) > r(x, y_l). As an RL reward the score is
squashed to (0, 1) as sigmoid(r - c) (c in reward.json), so that rewards from every source share one
scale. For the head, c = the mean score over the training pairs, chosen and rejected. For the
likelihood, c = the mean score of the chosen replies: a reply as likely as the training answers
earns 0.5. (The midpoint would put every fluent reply near 1: the policy's own samples are far more
likely than the rejected replies the fitting pushed down, 0.993 on the built-in held-out prompts.)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import UserError
from ..model import MiniMindModel
from ..train.pretrain import cross_entropy

META_FILE = "reward.json"
KINDS = ("head", "likelihood")


class RewardModel(nn.Module):
    """r(x, y): the trunk's hidden state at a given position through a scalar head."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.model = MiniMindModel(cfg)
        self.score = nn.Linear(cfg.hidden_size, 1, bias=False)
        nn.init.normal_(self.score.weight, std=1.0 / math.sqrt(cfg.hidden_size))

    def forward(self, input_ids, index, lm_rows: int = 0):
        """input_ids (B, T), index (B,) -> rewards (B,) at those positions (fp32).

        With lm_rows = n > 0 also the next-token logits of the first n rows, (n, T, V), through the
        tied embedding matrix (the LM head the trunk was trained with), for the LM regulariser."""
        h, _ = self.model(input_ids)  # (B, T, d)
        last = h[torch.arange(h.shape[0], device=h.device), index]  # (B, d)
        r = self.score(last).squeeze(-1).float()
        if not lm_rows:
            return r
        return r, F.linear(h[:lm_rows], self.model.embed_tokens.weight)  # (n, T, V)

    @classmethod
    def from_causal_lm(cls, lm) -> "RewardModel":
        """A reward model whose trunk starts as `lm`'s (an SFT model knows the language already)."""
        import copy

        cfg = copy.deepcopy(lm.config)
        cfg.num_labels = 1
        rm = cls(cfg)
        rm.model.load_state_dict(lm.model.state_dict())
        return rm


def with_suffix(ids, pad_id: int, suffix: list[int]):
    """Append the template's tokens after the final <|im_end|> to right-padded rows.

    Training rows (DPOLoader) hold a conversation without its last token (it is only a label);
    the chat template always ends a turn with <|im_end|> + `suffix` ("\\n"). Returns the
    completed rows (B, T + len(suffix)) and the index of each row's last token (B,).
    """
    B, T = ids.shape
    n = (ids != pad_id).sum(-1)  # (B,) real tokens (padding is on the right)
    out = F.pad(ids, (0, len(suffix)), value=pad_id)
    rows = torch.arange(B, device=ids.device)
    for j, t in enumerate(suffix):
        out[rows, n + j] = t
    return out, n + len(suffix) - 1


class BradleyTerry:
    """loss(model, batch) for DPOLoader batches: -log sigmoid(r_w - r_l) [+ lm_coef * L_LM], scalar head.

    lm_coef > 0 adds the language-modelling loss of the chosen replies (next-token cross-entropy
    on the reply tokens, through the tied embedding matrix), which keeps the trunk a language model
    while the head is fitted: the hidden-state regulariser of Yang et al. 2024 ("Regularizing Hidden
    States Enables Learning Generalizable Reward Model", GRM):

        L = -log sigmoid(r_w - r_l) + lm_coef * (-1/|y_w|) sum_t log p(y_w,t | x, y_w,<t)
    """

    name = "reward"
    kind = "head"

    def __init__(self, pad_id: int, suffix: list[int], lm_coef: float = 0.0):
        self.pad_id, self.suffix, self.lm_coef = pad_id, list(suffix), lm_coef

    def scores(self, model, batch, lm_rows: int = 0):
        """(r_w, r_l), each (B,); with lm_rows also the chosen rows' logits (see RewardModel.forward)."""
        B = batch["chosen_input_ids"].shape[0]
        ids, index = with_suffix(torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]]),
                                 self.pad_id, self.suffix)  # (2B, T+1)
        out = model(ids, index, lm_rows=lm_rows)
        r = out[0] if lm_rows else out  # (2B,)
        return (r[:B], r[B:], out[1]) if lm_rows else (r[:B], r[B:])

    def loss(self, model, batch):
        if self.lm_coef:
            T = batch["chosen_input_ids"].shape[1]
            r_w, r_l, logits = self.scores(model, batch, lm_rows=batch["chosen_input_ids"].shape[0])
            lm = cross_entropy(logits[:, :T], batch["chosen_labels"])  # the suffix column predicts nothing
        else:
            r_w, r_l = self.scores(model, batch)
        bt, metrics = bt_loss(r_w, r_l, batch)
        if not self.lm_coef:
            return bt, metrics
        return bt + self.lm_coef * lm, {**metrics, "bt_loss": bt.detach(), "lm_loss": lm.detach()}


class LikelihoodBradleyTerry:
    """loss(model, batch) for DPOLoader batches: -log sigmoid(r_w - r_l), r = beta * mean log pi(y|x).

    `model` is a causal LM (the copy pi_phi being fitted); the reply's tokens are the batch's labels
    (the SFT mask), so r is exactly what NativeReward scores for the same conversation.
    """

    name = "reward"
    kind = "likelihood"

    def __init__(self, beta: float = 5.0):
        self.beta = float(beta)

    def scores(self, model, batch):
        """(r_w, r_l), each (B,)."""
        return self._scores(model, batch)[:2]

    def _scores(self, model, batch):
        B = batch["chosen_input_ids"].shape[0]
        r, aux = likelihood_scores(model, torch.cat([batch["chosen_input_ids"], batch["rejected_input_ids"]]),
                                   torch.cat([batch["chosen_labels"], batch["rejected_labels"]]), self.beta)
        return r[:B], r[B:], aux

    def loss(self, model, batch):
        r_w, r_l, aux = self._scores(model, batch)
        loss, metrics = bt_loss(r_w, r_l, batch)
        if aux is not None:  # MoE load balancing
            loss = loss + aux
        return loss, metrics


def likelihood_scores(model, ids, labels, beta: float):
    """r = beta * mean log pi(label_t) over each row's labelled positions: ids, labels (N, T) ->
    r (N,) fp32, and the model's MoE auxiliary loss (None for a dense model)."""
    from ..train.dpo import sequence_logps

    out = model(ids)  # logits (N, T, V)
    logp, n = sequence_logps(out.logits, labels)
    return beta * logp.float() / n.clamp(min=1), out.aux_loss


def bt_loss(r_w, r_l, batch):
    """-log sigmoid(r_w - r_l) averaged over pairs, and the metrics both kinds log."""
    loss = -F.logsigmoid(r_w - r_l).mean()
    return loss, {"n_tokens": batch["n_tokens"], "pair_acc": (r_w > r_l).float().mean().detach(),
                  "margin": (r_w - r_l).mean().detach(), "score_mean": torch.cat([r_w, r_l]).mean().detach()}


@torch.no_grad()
def pair_accuracy(objective, model, loader, device=None) -> dict:
    """Share of pairs `objective` scores right, the mean score of all replies and of the chosen ones,
    over one epoch of a DPOLoader."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    state = loader.state_dict()
    wins = n = 0
    total = chosen = 0.0
    for _ in range(len(loader)):
        b = {k: v.to(device) for k, v in next(loader).items()}
        r_w, r_l = objective.scores(model, b)
        wins += int((r_w > r_l).sum())
        total += float(r_w.sum() + r_l.sum())
        chosen += float(r_w.sum())
        n += len(r_w)
    loader.load_state_dict(state)
    model.train(was_training)
    return {"accuracy": wins / max(n, 1), "pairs": n, "score_mean": total / max(2 * n, 1),
            "chosen_mean": chosen / max(n, 1)}


# ----------------------------------------------------------------------------- loading and scoring

def save_reward_meta(path, center: float, kind: str = "head", beta: float | None = None) -> None:
    """reward.json: the score centre (RL rewards are sigmoid(r - center)), the kind and its beta."""
    meta = {"score_center": center, "kind": kind} | ({"beta": beta} if kind == "likelihood" else {})
    (Path(path) / META_FILE).write_text(json.dumps(meta) + "\n")


def read_reward_meta(path) -> dict:
    """reward.json of a checkpoint or export folder; {} if there is none."""
    f = Path(path) / META_FILE
    if not f.is_file():
        return {}
    try:
        meta = json.loads(f.read_text())
        if not isinstance(meta, dict):
            raise ValueError(meta)
        meta.setdefault("kind", "head")
        if meta["kind"] not in KINDS or not isinstance(meta.get("score_center", 0.0), (int, float)) \
                or (meta["kind"] == "likelihood" and not isinstance(meta.get("beta"), (int, float))):
            raise ValueError(meta)
    except ValueError:
        raise UserError(f"{f}: not a reward-model description (expected score_center, kind in "
                        f"{'/'.join(KINDS)} and, for likelihood, beta); retrain with `minimind reward train`") from None
    return meta


def load_reward_model(path, device="cpu", dtype=None):
    """(model, tokenizer, meta) from a reward-model checkpoint directory.

    model is a RewardModel (kind "head") or the causal LM of a likelihood reward model; meta is
    reward.json ({"score_center", "kind"[, "beta"]}).
    """
    from ..checkpoint import check_checkpoint_dir, check_tokenizer_matches, load_checkpoint, load_weights
    from ..config import ModelConfig
    from ..tokenizer import Tokenizer

    path = check_checkpoint_dir(path)
    meta = {"score_center": 0.0, "kind": "head"} | read_reward_meta(path)
    cfg = ModelConfig.load(path / "config.json")
    if meta["kind"] == "likelihood":
        model, tok = load_checkpoint(path, device=device, dtype=dtype)
        return model.eval(), tok, meta
    if not getattr(cfg, "num_labels", 0):
        raise UserError(f"{path}: not a reward model (config num_labels is 0 and no reward.json says "
                        f"kind likelihood); train one with `minimind reward train`")
    tok = Tokenizer.load(path)
    check_tokenizer_matches(cfg, tok, where=str(path))
    model = RewardModel(cfg)
    load_weights(model, path / "model.safetensors")
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return model.eval(), tok, meta


def last_reply_labels(ids: list[int], mask: list[int]) -> list[int]:
    """Next-token labels of a rendered conversation that score only its last trained run of tokens
    (the final assistant message): labels[t] = ids[t+1] there, IGNORE elsewhere; len(ids) - 1."""
    from ..train.pretrain import IGNORE

    end = max((i for i, m in enumerate(mask) if m), default=-1) + 1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return [ids[t + 1] if start <= t + 1 < end else IGNORE for t in range(len(ids) - 1)]


class NativeReward:
    """A reward source: sigmoid(r(x, y) - center) of a minimind reward model (either kind), batched."""

    name = "reward_model"

    def __init__(self, path, device="cpu", batch_size: int = 16):
        self.model, self.tok, meta = load_reward_model(path, device)
        self.center, self.kind, self.beta = meta["score_center"], meta["kind"], meta.get("beta")
        self.device, self.batch_size = torch.device(device), batch_size

    def needs_gt(self) -> bool:
        return False

    @torch.no_grad()
    def raw_scores(self, conversations: list[list[dict]]) -> list[float]:
        from ..tokenizer import render_chat_batch
        from ..train.pretrain import IGNORE

        rendered = render_chat_batch(self.tok, conversations)
        out = []
        for s in range(0, len(rendered), self.batch_size):
            chunk = rendered[s:s + self.batch_size]
            width = max(len(r) for r, _ in chunk)
            ids = torch.full((len(chunk), width), self.tok.pad_id, dtype=torch.long)
            for i, (r, _) in enumerate(chunk):
                ids[i, :len(r)] = torch.tensor(r)
            ids = ids.to(self.device)
            if self.kind == "head":
                index = torch.tensor([len(r) - 1 for r, _ in chunk], device=self.device)
                out += self.model(ids, index).tolist()
                continue
            labels = torch.full((len(chunk), width - 1), IGNORE, dtype=torch.long)
            for i, (r, m) in enumerate(chunk):
                labels[i, :len(r) - 1] = torch.tensor(last_reply_labels(r, m))
            out += likelihood_scores(self.model, ids[:, :-1], labels.to(self.device), self.beta)[0].tolist()
        return out

    def score(self, records: list[dict], replies: list[dict]) -> tuple[list[float], dict]:
        convs = [list(r["conversations"]) + [{"role": "assistant", "content": y.get("content") or "",
                                              "reasoning_content": y.get("reasoning_content"),
                                              "tool_calls": y.get("tool_calls") or None}]
                 for r, y in zip(records, replies)]
        raw = self.raw_scores(convs)
        return [1.0 / (1.0 + math.exp(-(s - self.center))) for s in raw], {"rm_score": raw}
