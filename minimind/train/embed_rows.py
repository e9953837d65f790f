"""`--embed-rows seen`: in each optimizer step, only the embedding rows of tokens that step read change.

Why. With a tied embedding E (the output layer is E too) the cross-entropy at a position with
hidden state h and target y gives every row of E the gradient

    dL/dE_t = (p_t - [t = y]) h        p = softmax(E h)

so a token that is never read nor written in a fine-tuning set still receives p_t h at every
position: tiny (p_t is small), but pointing the same way step after step. Adam divides each
coordinate by the root of its own running second moment, and that is as small as the gradient,
so such a row moves about one full learning-rate step per step, for the whole run. In a fine-tune
on a narrow set (chat answers about the training subjects) the rows of everything else - names
that only pretraining mentions, the values of held-out facts - drift far from where pretraining
put them (docs/training.md: after 800 SFT steps the rows SFT never reads are at cosine 0.80 to
the pretrained ones), and the model stops reading and writing them: it answers a question about
Senegal with a sentence about Nigeria. The drift of rare-token embeddings under the softmax's
push-down is the "representation degeneration" of Gao et al. 2019 ("Representation Degeneration
Problem in Training Natural Language Generation Models"); keeping only the rows a batch touched is
what lazy (sparse) Adam does for embeddings.

What. With `seen`, the rows of tokens that appear in none of the step's micro-batches (the
inputs of any forward that builds a graph, on any rank) get a zero gradient:

    g_E[t] <- g_E[t] * [t read in this step]

Adam's moments then decay for those rows, so a row that was read moves for a few more steps
(its momentum) and then stops, instead of drifting forever. `all` (the engine's default) is
plain training; fine-tuning commands default to `seen`, pretraining and RL to `all`. An untied
output layer gets the same mask (its rows take the same push-down). Models without a trainable
`embed_tokens` (LoRA, where E is frozen) are unaffected.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

MODES = ("all", "seen")


def _embedding(model):
    inner = getattr(model, "model", model)
    emb = getattr(inner, "embed_tokens", None)
    return emb if isinstance(emb, torch.nn.Embedding) else None


def _rows(model, emb) -> list:
    """The trainable (vocab, d) matrices: E, and an untied output layer (its rows get the same push-down)."""
    head = getattr(getattr(model, "lm_head", None), "weight", None)
    mats = [emb.weight] if emb.weight.requires_grad else []
    if head is not None and head is not emb.weight and head.requires_grad and head.shape[0] == emb.num_embeddings:
        mats.append(head)
    return mats


class EmbedRows:
    """Records the token ids each step's training forwards read, and masks the embedding gradient
    to those rows (`mode` "seen"); does nothing for mode "all"."""

    def __init__(self, model, mode: str = "all"):
        if mode not in MODES:
            raise ValueError(f"embed_rows must be one of {', '.join(MODES)}, got {mode!r}")
        emb = _embedding(model)
        self.weights = _rows(model, emb) if mode == "seen" and emb is not None else []
        self.active = bool(self.weights)
        self.seen = torch.zeros(emb.num_embeddings, dtype=torch.bool, device=emb.weight.device) if self.active else None
        if self.active:
            emb.register_forward_pre_hook(self._record)

    @torch.compiler.disable
    def _record(self, module, args):
        if torch.is_grad_enabled():  # a training forward; rollouts, evaluation and reference passes are not
            self.seen[args[0].reshape(-1)] = True

    def start_step(self) -> None:
        if self.active:
            self.seen.zero_()

    def mask(self, dist_enabled: bool = False) -> None:
        """Zero the gradient rows of tokens no rank read in this step (after backward, before the clip)."""
        if not self.active:
            return
        seen = self.seen
        if dist_enabled:  # every rank must apply the same mask to the same averaged gradient
            any_rank = seen.to(torch.float32)
            dist.all_reduce(any_rank, op=dist.ReduceOp.MAX)
            seen = any_rank > 0
        for w in self.weights:
            if w.grad is not None:
                w.grad[~seen] = 0
