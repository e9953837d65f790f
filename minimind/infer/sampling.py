"""Sampling: per-row parameters, the logit transforms, and the draw, for a whole batch at once.

Given the model's next-token logits z (n, V) for n rows, each row with its own parameters:

    suppression:         z_i <- -inf for the row's suppressed ids (e.g. <think> with thinking off)
    repetition penalty (Keskar et al. 2019, CTRL), p per row, for every token already in the row:
                         z_i <- z_i / p if z_i > 0 else z_i * p
    temperature t:       z <- z / t        (t < TEMPERATURE_EPS means greedy: y = argmax z)
    top-k:               keep the k largest z, the rest -> -inf
    top-p (nucleus, Holtzman et al. 2019): keep the smallest set of most likely tokens whose
                         probability mass reaches p
    draw:                y = argmax_i (z_i + g_i),  g_i = -log(-log u_i),  u_i ~ U(0, 1)

The draw is the Gumbel-max trick (Gumbel 1954; Maddison et al. 2014): with independent standard
Gumbel noise g_i, P(argmax_i (z_i + g_i) = k) = softmax(z)_k exactly, so one argmax replaces the
sort and cumulative sum of a multinomial draw. Each row draws its noise from its own seeded
torch.Generator, so a row's tokens never depend on which other rows share the batch.

Log-probabilities returned with each token:
  - `logprob`: log softmax(z)_y of the distribution the token was drawn from, after penalties,
    temperature, top-k and top-p (what an RL objective needs for the behaviour policy). A greedy
    row's distribution is a point mass; its logprob is reported at temperature 1 (with the
    penalties and truncations), which is finite and useful.
  - `model_logprob` (on request): log softmax(raw logits)_y, the plain model at temperature 1 over
    the full vocabulary (OpenAI's `logprobs`, an evaluator's likelihood), with `top_logprobs`.

Limits that keep every number finite whatever a request asks for: temperature in [0, 100] (below
1e-5 is greedy), repetition_penalty in [0.01, 100], top_p in (0, 1], and at most MAX_STOP stop
strings of at most MAX_STOP_CHARS characters each. A row whose logits are not finite (a broken
model, an overflow) is reported as failed; the other rows of the batch are sampled normally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from ..errors import UserError

TEMPERATURE_EPS = 1e-5  # below this, sampling is greedy (dividing by it would overflow)
MAX_TEMPERATURE = 100.0
PENALTY_RANGE = (0.01, 100.0)
MAX_STOP, MAX_STOP_CHARS = 4, 256
NUCLEUS_HEAD = 256  # tokens a top-p row looks at before falling back to a full sort
MAX_TOP_LOGPROBS = 20
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


@dataclass
class SamplingParams:
    temperature: float = 0.7  # < TEMPERATURE_EPS = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)  # stop strings (not included in the text)
    seed: int | None = None
    suppress_ids: tuple[int, ...] = ()  # never sampled, e.g. <think> and </think> with thinking off
    logprobs: bool = False  # also return the plain model's log-prob of each token
    top_logprobs: int = 0  # and the k most likely tokens at each step (0..20; needs logprobs)

    @property
    def greedy(self) -> bool:
        return self.temperature < TEMPERATURE_EPS

    def validate(self) -> "SamplingParams":
        def bad(name, msg):
            raise UserError(f"{name}: {msg}", param=name)

        for name in ("temperature", "top_p", "repetition_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(name, f"must be a number, got {v!r}")
        for name in ("top_k", "max_new_tokens", "top_logprobs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                bad(name, f"must be an integer, got {v!r}")
        if not 0 <= self.temperature <= MAX_TEMPERATURE:
            bad("temperature", f"must be >= 0 and <= {MAX_TEMPERATURE:g} (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            bad("top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        lo, hi = PENALTY_RANGE
        if not lo <= self.repetition_penalty <= hi:
            bad("repetition_penalty", f"must be in [{lo:g}, {hi:g}] (1 = off), got {self.repetition_penalty}")
        if self.max_new_tokens < 0:
            bad("max_new_tokens", f"must be >= 0, got {self.max_new_tokens}")
        self._validate_stop(bad)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            bad("seed", f"must be an integer, got {self.seed!r}")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            bad("seed", f"must be in [-2**63, 2**64 - 1], got {self.seed}")
        if not isinstance(self.logprobs, bool):
            bad("logprobs", f"must be true or false, got {self.logprobs!r}")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            bad("top_logprobs", f"must be in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs}")
        if self.top_logprobs and not self.logprobs:
            bad("top_logprobs", "needs logprobs=true")
        self.suppress_ids = tuple(int(i) for i in self.suppress_ids)
        return self

    def _validate_stop(self, bad) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            bad("stop", f"must be a non-empty string or a list of them, got {self.stop!r}")
        if len(self.stop) > MAX_STOP:
            bad("stop", f"at most {MAX_STOP} stop strings, got {len(self.stop)}")
        if any(len(s) > MAX_STOP_CHARS for s in self.stop):
            bad("stop", f"each stop string must have at most {MAX_STOP_CHARS} characters")
        self.stop = list(self.stop)


def think_suppression(tok, think: bool) -> tuple[int, ...]:
    """The think tags' ids when thinking is off: the prompt already closed an empty think block,
    so the adaptive-thinking switch guarantees no think text by never sampling the tags."""
    if think:
        return ()
    return tuple(i for i in (tok.think_id, tok.end_think_id) if i is not None)


def make_generator(seed: int | None, device) -> torch.Generator:
    """A private random stream per request: seeded (same seed, same tokens) or fresh."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


# ----------------------------------------------------------------------------- one step, n rows

class Draw(NamedTuple):
    tokens: torch.Tensor  # (n,) sampled ids
    logprobs: torch.Tensor  # (n,) log-prob of each under its sampling distribution
    ok: torch.Tensor  # (n,) bool: False where the row's logits were not finite (the row failed)
    model_logprobs: torch.Tensor | None  # (n,) plain-model log-probs, when any row asked
    top: tuple[torch.Tensor, torch.Tensor] | None  # (n, k) ids and log-probs of the k most likely


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
           seen: torch.Tensor | None = None) -> Draw:
    """Sample one token per row. logits (n, V); params, generators: one per row; seen (n, V) bool
    marks tokens already in each row (needed when a row has a repetition penalty)."""
    raw = logits.float()  # (n, V)
    ok = torch.isfinite(raw).all(-1)  # (n,)
    z = torch.where(ok[:, None], raw, torch.zeros_like(raw))  # failed rows: harmless numbers
    z = _suppress(z, params)
    z = _penalize(z, params, seen)
    if any(p.temperature != 1.0 and not p.greedy for p in params):
        t = torch.tensor([1.0 if p.greedy else p.temperature for p in params], device=z.device)[:, None]
        z = z / t
    z = _truncate(z, params)  # (n, V), the sampling distribution's logits
    if all(p.greedy for p in params):
        tokens = z.argmax(-1)
    else:
        greedy = torch.tensor([p.greedy for p in params], device=z.device)  # (n,)
        tokens = torch.where(greedy, z.argmax(-1), _gumbel_max(z, params, generators))
    logprobs = z.log_softmax(-1).gather(-1, tokens[:, None])[:, 0]
    model_lp, top = None, None
    if any(p.logprobs for p in params):
        plain = torch.where(ok[:, None], raw, torch.zeros_like(raw)).log_softmax(-1)  # (n, V)
        model_lp = plain.gather(-1, tokens[:, None])[:, 0]
        k = max(p.top_logprobs for p in params)
        if k:
            values, ids = plain.topk(min(k, plain.shape[-1]), dim=-1)
            top = (ids, values)
    return Draw(tokens, logprobs, ok, model_lp, top)


def _suppress(z, params):
    if not any(p.suppress_ids for p in params):
        return z
    mask = torch.zeros_like(z, dtype=torch.bool)
    for i, p in enumerate(params):
        if p.suppress_ids:
            mask[i, list(p.suppress_ids)] = True
    return z.masked_fill(mask, float("-inf"))


def _penalize(z, params, seen):
    if seen is None or all(p.repetition_penalty == 1.0 for p in params):
        return z
    pen = torch.tensor([p.repetition_penalty for p in params], device=z.device)[:, None]  # (n, 1)
    return torch.where(seen, torch.where(z > 0, z / pen, z * pen), z)


def _truncate(z, params):
    """top-k and top-p per row; rows with neither are left alone.

    Both keep a prefix of the row's tokens sorted by logit, so only the head of that order is
    needed: the largest top-k, or `NUCLEUS_HEAD` tokens for a top-p row, come from topk; a full
    sort runs only when a top-p row's mass is not reached within them (a very flat distribution)."""
    V = z.shape[-1]
    ks = [p.top_k if 0 < p.top_k < V else V for p in params]
    ps = [p.top_p for p in params]
    nucleus_only = [k == V and p < 1.0 for k, p in zip(ks, ps)]
    if all(k == V for k in ks) and not any(nucleus_only):
        return z
    head = min(V, max([k for k in ks if k < V] + [NUCLEUS_HEAD if any(nucleus_only) else 0]))
    top_p = torch.tensor(ps, device=z.device)[:, None]  # (n, 1)
    sz, si = z.topk(head, dim=-1)  # (n, head), descending
    probs = (sz - z.logsumexp(-1, keepdim=True)).exp()  # each token's probability in the whole row
    before = probs.cumsum(-1) - probs  # the mass of the tokens ranked above each one
    if head < V and any(nucleus_only):
        mass = (before[:, -1] + probs[:, -1]).tolist()  # the head's mass per row
        if any(n and m < p for n, m, p in zip(nucleus_only, mass, ps)):  # a nucleus wider than the head
            sz, si = z.sort(dim=-1, descending=True)
            probs = sz.softmax(-1)
            before = probs.cumsum(-1) - probs
    rank = torch.arange(sz.shape[-1], device=z.device)[None, :]
    drop = rank >= torch.tensor(ks, device=z.device)[:, None]  # top-k
    drop |= (before >= top_p) & (top_p < 1.0)  # the mass before this token is already enough
    out = torch.full_like(z, float("-inf")).scatter(-1, si, sz.masked_fill(drop, float("-inf")))
    untouched = [k == V and p >= 1.0 for k, p in zip(ks, ps)]
    if any(untouched):  # rows with neither keep every token (the head above may not cover them)
        out = torch.where(torch.tensor(untouched, device=z.device)[:, None], z, out)
    return out


def _gumbel_max(z, params, generators):
    """argmax_i (z_i + g_i), Gumbel noise g from each row's own generator (greedy rows: none)."""
    u = torch.full_like(z, 0.5)
    for i, (p, g) in enumerate(zip(params, generators)):
        if not p.greedy:
            u[i] = torch.rand(z.shape[-1], generator=g, device=z.device)
    g = -(-u.clamp(1e-20, 1.0 - 1e-7).log()).log()  # (n, V) standard Gumbel
    return (z + g).argmax(-1)


def sample_next(logits, params: SamplingParams, seen=None, generator=None):
    """One set of parameters for every row: logits (B, V) -> next token ids (B,)."""
    n = logits.shape[0]
    return sample(logits, [params] * n, [generator] * n, seen).tokens
