"""Log-likelihood scoring: the one forward pass that perplexity, multiple choice and length curves use.

A causal language model gives a token sequence the probability p(x) = prod_t p(x_t | x_<t). With
teacher forcing, one forward pass over x_1..x_{n-1} yields every conditional at once:

    log p(x_t | x_<t) = log_softmax(W_out h_{t-1})[x_t]                      (h: final hidden states)

A row is a token sequence plus a mask of which tokens to score. Multiple choice scores a
continuation c after a context a (lm-eval's `loglikelihood`):

    log p(c | a) = sum_{j=1..m} log p(c_j | a, c_<j)
    greedy       = every c_j is the argmax of its distribution                 (lm-eval's is_greedy)

and perplexity scores every token of a text. Over N scored tokens that spell B bytes of UTF-8:

    loss = -(1/N) sum_t log p(x_t | x_<t)         nats per token
    ppl  = exp(loss)
    bpb  = loss * N / (B ln 2)                     bits per byte: B does not depend on the tokenizer,
                                                   so bpb compares models with different vocabularies

Batching: rows are sorted by length, longest first (the first batch is the largest, so running
out of memory shows at once), and right-padded. Under causal attention a real token never sees
the padding after it, so no attention mask is needed. The output projection W_out runs only at
the scored positions: a (B, T, V) logits tensor would be the largest tensor by far.

Weights stay in fp32; matmuls run under bf16 autocast where the machine has bf16 units
(runtime.pick_dtype), so scores match a float32 reference to ~1e-2 nats there and to ~1e-5 in
fp32 (`--dtype fp32`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..runtime import autocast, freeze, pick_device, pick_dtype

LOGIT_ROWS = 4096  # scored positions per output-projection chunk: 4096 x 6400 fp32 = 105 MB


@dataclass
class ScoringModel:
    """A frozen model with its tokenizer, device and autocast dtype."""

    model: torch.nn.Module
    tok: object
    device: torch.device
    dtype: torch.dtype

    @property
    def max_positions(self) -> int:
        """Longest input the RoPE tables cover."""
        return int(self.model.model.rope_cos.shape[0])


def load_scoring_model(checkpoint, device: str = "auto", dtype: str = "auto") -> ScoringModel:
    """Load a checkpoint for scoring: fp32 weights, bf16 autocast where it is fast."""
    from ..checkpoint import load_checkpoint

    dev = pick_device(device)
    model, tok = load_checkpoint(checkpoint, device=dev)
    return ScoringModel(freeze(model), tok, dev, pick_dtype(dtype, dev))


@dataclass
class Row:
    """ids: the whole sequence; scored[i] says whether ids[i] is scored (never ids[0])."""

    ids: list[int]
    scored: list[bool]


@dataclass
class RowScore:
    logprobs: torch.Tensor  # (n_scored,) float64, log p of each scored token in order
    greedy: bool  # every scored token was the argmax
    hits: torch.Tensor | None = None  # (n_scored,) bool, whether each scored token was the argmax

    @property
    def total(self) -> float:
        return float(self.logprobs.sum())


def continuation_row(context: list[int], continuation: list[int], max_positions: int) -> Row:
    """Context then continuation, continuation scored; cut from the left to fit the model (as lm-eval)."""
    if not continuation:
        raise ValueError("empty continuation")
    ids = (context + continuation)[-(max_positions + 1):]
    n_ctx = len(ids) - len(continuation)
    return Row(ids, [False] * n_ctx + [True] * len(continuation))


def score_rows(sm: ScoringModel, rows: list[Row], batch_size: int = 32, progress: bool = False,
               desc: str = "score") -> list[RowScore]:
    """Score every row; results in the order of `rows`."""
    from tqdm.auto import tqdm

    for i, r in enumerate(rows):
        if len(r.ids) - 1 > sm.max_positions:
            raise UserError(f"row {i}: {len(r.ids) - 1} input tokens exceed the model's "
                            f"{sm.max_positions} positions; shorten the input")
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].ids))
    out: list[RowScore | None] = [None] * len(rows)
    starts = range(0, len(order), batch_size)
    for s in tqdm(starts, disable=not progress, desc=desc, unit="batch", leave=False):
        idx = order[s:s + batch_size]
        for i, res in zip(idx, _score_batch(sm, [rows[i] for i in idx])):
            out[i] = res
    return out


def _pad(rows: list[Row], pad: int):
    """Inputs ids[:-1] and targets ids[1:], right-padded to (B, T), and which targets are scored."""
    T = max(len(r.ids) for r in rows) - 1
    x = torch.full((len(rows), T), pad, dtype=torch.long)
    y = torch.full((len(rows), T), pad, dtype=torch.long)
    keep = torch.zeros((len(rows), T), dtype=torch.bool)
    for b, r in enumerate(rows):
        n = len(r.ids) - 1
        x[b, :n], y[b, :n], keep[b, :n] = torch.tensor(r.ids[:-1]), torch.tensor(r.ids[1:]), torch.tensor(r.scored[1:])
    return x, y, keep


def _target_logprobs(lm_head, h, y):
    """h (N, d) hidden states, y (N,) targets -> log p(y) (N,) and whether y was the argmax (N,)."""
    lp, hit = [torch.zeros(0)], [torch.zeros(0, dtype=torch.bool)]
    for c in range(0, h.shape[0], LOGIT_ROWS):
        logits = lm_head(h[c:c + LOGIT_ROWS]).float()  # (n, V)
        target = y[c:c + LOGIT_ROWS, None]  # (n, 1)
        lp.append(F.log_softmax(logits, dim=-1).gather(-1, target)[:, 0].cpu())
        hit.append((logits.argmax(-1) == target[:, 0]).cpu())
    return torch.cat(lp).double(), torch.cat(hit)


@torch.no_grad()
def _score_batch(sm: ScoringModel, rows: list[Row]) -> list[RowScore]:
    x, y, keep = (t.to(sm.device) for t in _pad(rows, sm.tok.pad_id))
    with autocast(sm.device, sm.dtype):
        h, _ = sm.model.model(x)  # (B, T, d) final hidden states, after the last RMSNorm
        lp, hit = _target_logprobs(sm.model.lm_head, h[keep], y[keep])  # scored positions, row-major
    res, at = [], 0
    for n in keep.sum(1).tolist():
        res.append(RowScore(lp[at:at + n], bool(hit[at:at + n].all()), hit[at:at + n]))
        at += n
    return res


# ----------------------------------------------------------------------------- bytes

def token_byte_lengths(tok) -> list[int]:
    """UTF-8 bytes each token id stands for: a byte-level BPE token is a fixed byte string
    (decoded alone it may be a partial character, so count through the byte alphabet), an added
    token (<|im_end|>, <think>, ...) its literal text. For any text, the bytes of its tokens sum to
    len(text.encode("utf-8"))."""
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = set(ByteLevel.alphabet())  # the 256 printable stand-ins of the byte-level encoding
    added = {i: t.content for i, t in tok.backend.get_added_tokens_decoder().items()}
    out = []
    for i in range(tok.vocab_size):
        if i in added:
            out.append(len(added[i].encode("utf-8")))
            continue
        piece = tok.id_to_token(i) or ""
        out.append(len(piece) if all(ch in alphabet for ch in piece) else len(piece.encode("utf-8")))
    return out


def summarize(nll: float, n_tokens: int, n_bytes: int) -> dict:
    """loss (nats/token), ppl and bits per byte from a summed negative log-likelihood."""
    loss = nll / max(n_tokens, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bpb": nll / (max(n_bytes, 1) * math.log(2)),
            "tokens": n_tokens, "bytes": n_bytes}


def training_length(checkpoint) -> int | None:
    """The sequence length a checkpoint was trained at, where the checkpoint says so.

    Looked up in run.json ("max_seq_len", or --max-seq-len in its argv), then in the data position
    of train_state.pt (pretraining saves "seq_len", chat stages "max_seq_len"). None if unknown.
    """
    import json

    from ..checkpoint import resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    try:
        run = json.loads((path / "run.json").read_text())
    except (OSError, ValueError):
        run = {}
    if isinstance(run.get("max_seq_len"), int):
        return run["max_seq_len"]
    argv = [str(a) for a in run.get("argv") or []]
    if argv and argv[0] in ("pretrain", "sft", "lora", "dpo", "distill") and "--max-seq-len" in argv[:-1]:
        try:
            return int(argv[argv.index("--max-seq-len") + 1])
        except ValueError:
            pass
    return _length_from_train_state(path / "train_state.pt")


def _length_from_train_state(file) -> int | None:
    if not file.is_file():
        return None
    try:  # our own file (the engine wrote it); mmap: the optimizer state is never read into memory
        state = torch.load(file, map_location="cpu", mmap=True, weights_only=False)
    except Exception:  # a damaged train_state.pt only costs the default here
        return None
    data = state.get("data") if isinstance(state, dict) else None
    data = data[0] if isinstance(data, list) and data else data
    if isinstance(data, dict):
        for key in ("seq_len", "max_seq_len"):
            if isinstance(data.get(key), int):
                return data[key]
    return None
