"""Pretraining objective: next-token prediction on packed text.

    L(theta) = -1/N * sum_{t} log p_theta(x_{t+1} | x_{<=t})          over the N labelled positions

(Radford et al. 2018/2019). The loader packs documents separated by <|endoftext|> into full rows,
so every position is a real token and N = B*T. For MoE models the router's load-balancing loss
(already scaled by its coefficient) is added: L + aux.

SFT uses the same loss with labels = -100 outside the assistant's tokens (see sft.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..model import segment_mask

IGNORE = -100


def cross_entropy(logits, labels, weights=None):
    """Mean negative log-likelihood over labelled positions. logits (B, T, V), labels (B, T).

    With per-position `weights` (B, T): sum_t w_t * nll_t / sum_t w_t over labelled positions.
    """
    V = logits.shape[-1]
    if weights is None:
        return F.cross_entropy(logits.reshape(-1, V).float(), labels.reshape(-1), ignore_index=IGNORE)
    nll = F.cross_entropy(logits.reshape(-1, V).float(), labels.reshape(-1), ignore_index=IGNORE,
                          reduction="none")  # (B*T,)
    w = weights.reshape(-1).float() * (labels.reshape(-1) != IGNORE)
    return (nll * w).sum() / w.sum().clamp(min=1)


def packed_inputs(batch) -> dict:
    """Model keyword arguments for packed rows: positions restarting at 0 and an attention mask
    that keeps each packed conversation to itself (nothing for plain rows)."""
    if "segments" not in batch:
        return {}
    position_ids, mask = segment_mask(batch["segments"])
    return {"position_ids": position_ids, "mask": mask}


class LanguageModeling:
    """loss(model, batch) = CE(model(input_ids), labels) (+ MoE aux loss)."""

    name = "pretrain"

    def loss(self, model, batch):
        out = model(batch["input_ids"], **packed_inputs(batch))
        loss = cross_entropy(out.logits, batch["labels"], batch.get("weights"))
        metrics = {"n_tokens": batch["n_tokens"]}
        if out.aux_loss is not None:
            metrics["aux_loss"] = out.aux_loss.detach()
            loss = loss + out.aux_loss
        return loss, metrics
