"""Text generation: KV-cached, batched, streaming, with the usual sampling controls.

For each step, given logits z (B, V) of the next token:

    repetition penalty (Keskar et al. 2019, CTRL): for every token already in the sequence,
        z_i <- z_i / p if z_i > 0 else z_i * p
    temperature t:   z <- z / t   (t = 0 means greedy: argmax)
    top-k:           keep the k largest z, the rest -> -inf
    top-p (nucleus, Holtzman et al. 2019): keep the smallest set of most likely tokens whose
        probability mass reaches p
    sample y ~ softmax(z) with a seeded torch.Generator (same seed, same output)

Prompts of different lengths are left-padded into one batch; a boolean mask hides the padding and
each row gets its own RoPE positions, so a row's tokens are exactly what it would produce alone.
Rows that finish (stop token, stop string or max_new_tokens) are dropped from the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..errors import UserError
from ..model import KVCache, padded_mask
from ..runtime import inference_dtype, pick_device


@dataclass
class SamplingParams:
    temperature: float = 0.7
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)  # stop strings (not included in the output)
    seed: int | None = None
    suppress_ids: tuple[int, ...] = ()  # never sampled, e.g. <think> and </think> with thinking off

    def validate(self) -> "SamplingParams":
        def bad(name, msg):
            raise UserError(f"{name}: {msg}", param=name)

        for name in ("temperature", "top_p", "repetition_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(name, f"must be a number, got {v!r}")
        for name in ("top_k", "max_new_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                bad(name, f"must be an integer, got {v!r}")
        if self.temperature < 0:
            bad("temperature", f"must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            bad("top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            bad("top_k", f"must be >= 0 (0 = off), got {self.top_k}")
        if self.repetition_penalty <= 0:
            bad("repetition_penalty", f"must be > 0 (1 = off), got {self.repetition_penalty}")
        if self.max_new_tokens < 0:
            bad("max_new_tokens", f"must be >= 0, got {self.max_new_tokens}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop):
            bad("stop", f"must be a non-empty string or a list of them, got {self.stop!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            bad("seed", f"must be an integer, got {self.seed!r}")
        return self


def sample_next(logits, params: SamplingParams, seen=None, generator=None):
    """logits (B, V) float -> next token ids (B,). `seen` (B, V) bool marks tokens already present."""
    z = logits.float()
    if params.suppress_ids:
        z = z.index_fill(-1, torch.tensor(params.suppress_ids, device=z.device), float("-inf"))
    if seen is not None and params.repetition_penalty != 1.0:
        p = params.repetition_penalty
        z = torch.where(seen, torch.where(z > 0, z / p, z * p), z)
    if params.temperature == 0:
        return z.argmax(-1)
    z = z / params.temperature
    if params.top_k and params.top_k < z.shape[-1]:
        kth = z.topk(params.top_k, dim=-1).values[:, -1:]  # (B, 1)
        z = z.masked_fill(z < kth, float("-inf"))
    if params.top_p < 1.0:
        sz, si = z.sort(dim=-1, descending=True)
        probs = sz.softmax(-1)
        drop = probs.cumsum(-1) - probs >= params.top_p  # mass before this token already enough
        sz = sz.masked_fill(drop, float("-inf"))
        z = torch.full_like(z, float("-inf")).scatter(-1, si, sz)
    return torch.multinomial(z.softmax(-1), 1, generator=generator).squeeze(-1)


def think_suppression(tok, think: bool) -> tuple[int, ...]:
    """The think tags' ids when thinking is off: the prompt already closed an empty think block,
    so the adaptive-thinking switch guarantees no think text by never sampling the tags."""
    if think:
        return ()
    return tuple(i for i in (tok.think_id, tok.end_think_id) if i is not None)


class Generator:
    """Generation over a loaded model: `generate` (batched) and `stream` (one prompt, text deltas)."""

    def __init__(self, model, tokenizer):
        self.model = model.eval()
        self.tok = tokenizer
        self.stop_ids = {tokenizer.eos_id, tokenizer.eot_id}
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype

    # ------------------------------------------------------------------ core loop
    @torch.inference_mode()
    def generate_tokens(self, prompts: list[list[int]], params: SamplingParams) -> Iterator[tuple[int, int]]:
        """Yield (row, token_id) as tokens are produced, for a batch of prompts (ids).

        A row stops after a stop token (which is yielded, so callers can tell why it ended) or
        after max_new_tokens. Stop strings are the caller's business (they need text).
        """
        params.validate()
        if not prompts or any(len(p) == 0 for p in prompts):
            raise UserError("prompt must contain at least one token", param="messages")
        B, lens = len(prompts), [len(p) for p in prompts]
        S = max(lens)
        limit = self.model.config.max_position_embeddings
        if S + params.max_new_tokens > limit:
            raise UserError(f"prompt ({S} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds the "
                            f"model's context of {limit} tokens", param="max_tokens")
        if params.max_new_tokens == 0:
            return
        dev = self.device
        ids = torch.full((B, S), self.tok.pad_id, dtype=torch.long, device=dev)
        valid = torch.zeros((B, S), dtype=torch.bool, device=dev)
        for b, p in enumerate(prompts):  # left padding
            ids[b, S - len(p):] = torch.tensor(p, device=dev)
            valid[b, S - len(p):] = True
        padded = min(lens) != S
        pos = (valid.long().cumsum(-1) - 1).clamp(min=0)  # (B, S) per-row RoPE positions
        gen = None
        if params.seed is not None:
            gen = torch.Generator(device=dev).manual_seed(params.seed)
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros((B, self.model.config.vocab_size), dtype=torch.bool, device=dev)
            seen.scatter_(1, ids, valid)
        cache = KVCache(self.model.config, B, S + params.max_new_tokens, dev, self.dtype)
        rows = list(range(B))  # original row index of each live batch row
        mask = padded_mask(valid, S) if padded else None
        logits = self.model(ids, position_ids=pos if padded else None, mask=mask, cache=cache,
                            logits_to_keep=1).logits[:, -1]
        next_pos = pos[:, -1] + 1
        for step in range(params.max_new_tokens):
            nxt = sample_next(logits, params, seen, gen)  # (b,)
            toks = nxt.tolist()
            done = []
            for i, t in enumerate(toks):
                yield rows[i], t
                if t in self.stop_ids or step == params.max_new_tokens - 1:
                    done.append(i)
            if len(done) == len(rows):
                return
            if done:  # drop finished rows from the batch
                keep = [i for i in range(len(rows)) if i not in done]
                rows = [rows[i] for i in keep]
                k = torch.tensor(keep, device=dev)
                cache.select(k)
                nxt, next_pos, valid = nxt[k], next_pos[k], valid[k]
                seen = seen[k] if seen is not None else None
            if seen is not None:
                seen[torch.arange(len(rows), device=dev), nxt] = True
            if padded:
                valid = torch.cat([valid, valid.new_ones((len(rows), 1))], dim=1)
                out = self.model(nxt[:, None], position_ids=next_pos[:, None], mask=padded_mask(valid, 1),
                                 cache=cache)
            else:
                out = self.model(nxt[:, None], cache=cache)
            logits = out.logits[:, -1]
            next_pos = next_pos + 1

    # ------------------------------------------------------------------ text level
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[dict]:
        """Batched generation -> per prompt {"ids", "text", "finish_reason"} ("stop" | "length")."""
        outs = [{"ids": [], "text": "", "finish_reason": "length"} for _ in prompts]
        done = [False] * len(prompts)
        for row, t in self.generate_tokens(prompts, params):
            if done[row]:  # ended by a stop string; the batch carries it until its own stop
                continue
            o = outs[row]
            if t in self.stop_ids:
                o["finish_reason"], done[row] = "stop", True
                continue
            o["ids"].append(t)
            if params.stop and _find_stop(self.tok.decode(o["ids"]), params.stop) is not None:
                o["finish_reason"], done[row] = "stop", True
        for o in outs:
            o["text"] = self.tok.decode(o["ids"])
            cut = _find_stop(o["text"], params.stop) if params.stop else None
            if cut is not None:
                o["text"] = o["text"][:cut]
        return outs

    def stream(self, prompt: list[int], params: SamplingParams) -> Iterator[str]:
        """Yield text deltas for one prompt; ends at a stop token, stop string or max_new_tokens.

        After the iterator ends, `self.last_finish_reason` and `self.last_num_tokens` describe it.
        """
        ids: list[int] = []
        sent = ""
        hold = max((len(s) for s in params.stop), default=1) - 1  # text that may start a stop string
        self.last_finish_reason, self.last_num_tokens = "length", 0
        for _, t in self.generate_tokens([prompt], params):
            if t in self.stop_ids:
                self.last_finish_reason = "stop"
                break
            ids.append(t)
            self.last_num_tokens = len(ids)
            text = self.tok.decode(ids)
            cut = _find_stop(text, params.stop) if params.stop else None
            if cut is not None:
                text = text[:cut]
                self.last_finish_reason = "stop"
                if len(text) > len(sent):
                    yield text[len(sent):]
                return
            if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its next byte
                continue
            ready = len(text) - hold if params.stop else len(text)
            if ready > len(sent):
                yield text[len(sent):ready]
                sent = text[:ready]
        text = self.tok.decode(ids)
        if params.stop:
            cut = _find_stop(text, params.stop)
            text = text[:cut] if cut is not None else text
        if len(text) > len(sent):
            yield text[len(sent):]


def _find_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def load_for_inference(checkpoint, device: str = "auto", dtype: str = "auto", quantize: str = "none"):
    """(model, tokenizer) on the best device, in bf16 where that is fast (else fp32).

    quantize="int8" stores the linear layers' weights in int8 (CPU; see infer/quant.py).
    """
    from ..checkpoint import load_checkpoint
    dev = pick_device(device)
    if dtype == "auto":
        dt = inference_dtype(dev)
    else:
        table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
        if dtype not in table:
            raise UserError(f"--dtype {dtype!r}: choose auto, bf16, fp16 or fp32", param="dtype")
        dt = table[dtype]
        if dt == torch.float16 and dev.type == "cpu":
            raise UserError("--dtype fp16 on CPU is ~100x slower than bf16; use bf16 or fp32", param="dtype")
    from .quant import apply_quantization

    model, tok = load_checkpoint(checkpoint, device=dev, dtype=dt)
    return apply_quantization(model, quantize), tok
