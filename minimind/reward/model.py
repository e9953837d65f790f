"""A native reward model: the transformer with a scalar head, trained on preference pairs.

Bradley-Terry (1952), as used for RLHF reward models by Ouyang et al. 2022 (InstructGPT): the
probability that answer y_w is preferred over y_l for prompt x is sigmoid(r(x, y_w) - r(x, y_l)), so

    L = -log sigmoid( r(x, y_w) - r(x, y_l) )                 averaged over pairs

    r(x, y) = w . h_last                                     h_last: the trunk's final (RMS-normalised)
                                                             hidden state at the conversation's last token

The model is the decoder trunk (`MiniMindModel`, initialised from an SFT checkpoint) plus `score`,
a Linear(hidden, 1) without bias; there is no LM head. The names match transformers'
`LlamaForSequenceClassification` (`model.*`, `score.weight`) and so does the pooling: the last token
of the chat template's rendering of the whole conversation (the newline after the final
<|im_end|>), so an exported reward model scores the same in transformers (`minimind export hf`).
A reward-model checkpoint is an ordinary checkpoint directory whose config has num_labels = 1.

Held-out pair accuracy = share of pairs with r(x, y_w) > r(x, y_l). As an RL reward the score is
squashed to (0, 1) as sigmoid(r - c), c = the mean score over the training pairs (saved with the
model), so that rewards from every source share one scale.
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

CENTER_FILE = "reward.json"


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
    """loss(model, batch) for DPOLoader batches: -log sigmoid(r_w - r_l) [+ lm_coef * L_LM].

    lm_coef > 0 adds the language-modelling loss of the chosen replies (next-token cross-entropy
    on the reply tokens, through the tied embedding matrix), which keeps the trunk a language model
    while the head is fitted: the hidden-state regulariser of Yang et al. 2024 ("Regularizing Hidden
    States Enables Learning Generalizable Reward Model", GRM):

        L = -log sigmoid(r_w - r_l) + lm_coef * (-1/|y_w|) sum_t log p(y_w,t | x, y_w,<t)
    """

    name = "reward"

    def __init__(self, pad_id: int, suffix: list[int], lm_coef: float = 0.0):
        self.pad_id, self.suffix, self.lm_coef = pad_id, list(suffix), lm_coef

    def loss(self, model, batch):
        ids_w, ids_l = batch["chosen_input_ids"], batch["rejected_input_ids"]
        B, T = ids_w.shape
        ids, index = with_suffix(torch.cat([ids_w, ids_l]), self.pad_id, self.suffix)  # (2B, T+1)
        if self.lm_coef:
            r, logits = model(ids, index, lm_rows=B)  # (2B,), (B, T+1, V)
            lm = cross_entropy(logits[:, :T], batch["chosen_labels"])  # the suffix column predicts nothing
        else:
            r = model(ids, index)  # (2B,)
        r_w, r_l = r[:B], r[B:]
        bt = -F.logsigmoid(r_w - r_l).mean()
        metrics = {"n_tokens": batch["n_tokens"], "pair_acc": (r_w > r_l).float().mean().detach(),
                   "margin": (r_w - r_l).mean().detach(), "score_mean": r.mean().detach()}
        if not self.lm_coef:
            return bt, metrics
        return bt + self.lm_coef * lm, {**metrics, "bt_loss": bt.detach(), "lm_loss": lm.detach()}


@torch.no_grad()
def pair_accuracy(model, loader, pad_id: int, suffix: list[int], device=None) -> dict:
    """Share of pairs ranked right and the mean score, over one epoch of a DPOLoader."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    state = loader.state_dict()
    wins = n = 0
    total = 0.0
    for _ in range(len(loader)):
        b = next(loader)
        B = b["chosen_input_ids"].shape[0]
        ids, index = with_suffix(torch.cat([b["chosen_input_ids"], b["rejected_input_ids"]]).to(device),
                                 pad_id, suffix)
        r = model(ids, index)
        wins += int((r[:B] > r[B:]).sum())
        total += float(r.sum())
        n += B
    loader.load_state_dict(state)
    model.train(was_training)
    return {"accuracy": wins / max(n, 1), "pairs": n, "score_mean": total / max(2 * n, 1)}


# ----------------------------------------------------------------------------- loading and scoring

def save_center(path, center: float) -> None:
    (Path(path) / CENTER_FILE).write_text(json.dumps({"score_center": center}) + "\n")


def load_reward_model(path, device="cpu", dtype=None):
    """(RewardModel, tokenizer, center) from a reward-model checkpoint directory."""
    from ..checkpoint import check_checkpoint_dir, check_tokenizer_matches, load_weights
    from ..config import ModelConfig
    from ..tokenizer import Tokenizer

    path = check_checkpoint_dir(path)
    cfg = ModelConfig.load(path / "config.json")
    if not getattr(cfg, "num_labels", 0):
        raise UserError(f"{path}: not a reward model (config num_labels is 0); train one with "
                        f"`minimind reward train`")
    tok = Tokenizer.load(path)
    check_tokenizer_matches(cfg, tok, where=str(path))
    model = RewardModel(cfg)
    load_weights(model, path / "model.safetensors")
    center = 0.0
    if (path / CENTER_FILE).is_file():
        center = float(json.loads((path / CENTER_FILE).read_text())["score_center"])
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return model.eval(), tok, center


class NativeReward:
    """A reward source: sigmoid(r(x, y) - center) of a minimind reward model, batched."""

    name = "reward_model"

    def __init__(self, path, device="cpu", batch_size: int = 16):
        self.model, self.tok, self.center = load_reward_model(path, device)
        self.device, self.batch_size = torch.device(device), batch_size

    def needs_gt(self) -> bool:
        return False

    @torch.no_grad()
    def raw_scores(self, conversations: list[list[dict]]) -> list[float]:
        from ..tokenizer import render_chat_batch

        rows = [ids for ids, _ in render_chat_batch(self.tok, conversations)]
        out = []
        for s in range(0, len(rows), self.batch_size):
            chunk = rows[s:s + self.batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), width), self.tok.pad_id, dtype=torch.long)
            for i, r in enumerate(chunk):
                ids[i, :len(r)] = torch.tensor(r)
            index = torch.tensor([len(r) - 1 for r in chunk])
            out += self.model(ids.to(self.device), index.to(self.device)).tolist()
        return out

    def score(self, records: list[dict], replies: list[dict]) -> tuple[list[float], dict]:
        convs = [list(r["conversations"]) + [{"role": "assistant", "content": y.get("content") or "",
                                              "reasoning_content": y.get("reasoning_content"),
                                              "tool_calls": y.get("tool_calls") or None}]
                 for r, y in zip(records, replies)]
        raw = self.raw_scores(convs)
        return [1.0 / (1.0 + math.exp(-(s - self.center))) for s in raw], {"rm_score": raw}
