"""The generation engine: everything that samples from a model (chat, generate, eval, the server,
RL rollouts) runs here.

Python API::

    from minimind.infer.engine import Engine, SamplingParams
    engine = Engine(model, tok)                        # or load_engine(checkpoint) (generate.py)
    results = engine.generate(prompts, SamplingParams(temperature=1.0, max_new_tokens=64))
    # prompts: list[list[int]]; params: one SamplingParams for all, or a list, one per prompt
    r = results[0]
    r.tokens          # sampled ids, including the stop token that ended the row (if one did)
    r.logprobs        # log-prob of each token under the distribution it was sampled from
                      # (after temperature, top-k, top-p, penalties; greedy rows: at temperature 1)
    r.finish_reason   # "stop" (stop token or stop string), "length", "error" (then r.error says why)
    r.text            # decoded text, without the stop token, cut before a stop string
    r.model_logprobs  # with SamplingParams(logprobs=True): the plain model's log-probs (temperature
    r.top_logprobs    # 1, full vocabulary) of each token, and the top-k (id, log-prob) per step
    engine.score([ids, ...])   # plain-model log p(x_t | x_<t) of given sequences (likelihoods)
    for delta in engine.stream(prompt, params): ...  # text deltas of one prompt as they come

Continuous batching (Orca, Yu et al. 2022): requests join and leave the running batch at every
step, so a short request never waits for a long one and concurrent requests share each forward
pass. One step:

    1. admit waiting requests (first come, first served) while a row and KV blocks for
       prompt + max_new_tokens are free; prefill each prompt alone, exactly as it would run alone,
       unless a running row has the same prompt (an RL group: G samples of one prompt): then its
       keys and values are copied into the new row's blocks and its last logits reused
    2. one decode forward for all running rows: each row feeds its last token at its own position
       and reads its own KV blocks (kvcache.py), through the decode step of decode.py
    3. sample every row with its own parameters and random stream (sampling.py), record the token
       and its log-prob, check stop tokens / stop strings / max_new_tokens
    4. retire finished rows (their KV blocks go back to the pool) before telling their callers

Failure isolation: a row whose logits are not finite, or whose bookkeeping raises, ends with
finish_reason "error"; the other rows go on. A forward pass that raises fails the rows it was
computing (a prefill: that one request). The engine itself keeps serving.

Batch invariance: a request's greedy output does not depend on what else is running. The math
guarantees it, and the kernels are kept from breaking it: prompts are prefilled one at a time (a
padded batch would take other kernels) or copied from a running row's prefill of the same prompt
(the same numbers), a decode row attends over whole blocks of 64 key columns
with the rest masked, so its keys sit in the same kernel blocks whatever the longest row, and the
compiled step runs a lone row through its batch-1 graph only where that graph was checked to compute
bitwise what the batched one does, else as a batch of two (decode.py).

Threads: `generate` and `stream` drive the engine from the caller's thread. `start()` runs it in a
background thread instead (the server); then any thread may `submit` and wait. Only the thread
that steps touches the model.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from ..errors import UserError
from ..model import fuse_projections
from .decode import EagerStep, activation_dtype, choose_decode_weights, decode_model, make_step
from .kvcache import PagedKVCache
from .sampling import SamplingParams, make_generator, sample, think_suppression  # noqa: F401 (re-export)

log = logging.getLogger("minimind.engine")
DEFAULT_KV_MEMORY_MB = 512
BLOCK_SIZE = 64


class EngineBusy(Exception):
    """The waiting queue is full (the server answers 429)."""


# ============================================================================ text and results

def find_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


class TextTracker:
    """Token ids -> text deltas that are safe to hand out, and the stop-string check.

    Decoding is incremental: byte-level BPE text is the concatenation of its tokens' bytes, so
    once the text so far ends on a whole character only the new tokens need decoding. Holds
    back an incomplete UTF-8 character (a token can end mid-character) and the last
    len(longest stop)-1 characters, which might be the start of a stop string.
    """

    def __init__(self, tok, stops: list[str]):
        self.tok, self.stops = tok, stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.text = ""  # decoded text of all tokens but `tail`
        self.tail: list[int] = []  # tokens that end inside a character so far
        self.sent = 0  # characters already handed out

    def add(self, token: int) -> tuple[str, bool]:
        """Append a token; return (new text, whether a stop string was reached)."""
        self.tail.append(token)
        piece = self.tok.decode(self.tail)
        if piece.endswith("\ufffd"):  # wait for the rest of the character
            return "", False
        self.text, self.tail = self.text + piece, []
        cut = find_stop(self.text, self.stops) if self.stops else None
        if cut is not None:
            self.text = self.text[:cut]
            return self._take(self.text), True
        return self._take(self.text[:len(self.text) - self.hold]), False

    def rest(self) -> str:
        """Everything not yet handed out, once the sequence has ended."""
        text = self.text + (self.tok.decode(self.tail) if self.tail else "")
        cut = find_stop(text, self.stops) if self.stops else None
        self.text, self.tail = (text if cut is None else text[:cut]), []
        return self._take(self.text)

    def _take(self, upto: str) -> str:
        if len(upto) <= self.sent:
            return ""
        delta, self.sent = upto[self.sent:], len(upto)
        return delta


@dataclass
class Result:
    tokens: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" | "length" | "error" | "cancelled"
    text: str | None = None
    prompt_tokens: int = 0
    model_logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None
    error: str | None = None


@dataclass(eq=False)
class Request:
    """One sequence inside the engine; `submit` returns it as a handle (wait(), cancel(), result)."""

    prompt: list[int]
    params: SamplingParams
    on_event: Callable[[tuple], None] | None
    generator: torch.Generator
    tracker: TextTracker | None
    seen: torch.Tensor | None = None  # (V,) bool: tokens in the sequence, for the repetition penalty
    blocks: list[int] = field(default_factory=list)
    length: int = 0  # positions stored in the KV cache
    prompt_logits: torch.Tensor | None = None  # (1, V) after the prompt: a later request with this prompt reuses it
    next_token: int = -1  # sampled, not yet fed to the model
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    model_logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop generating (the client has gone); a no-op once finished."""
        self.cancelled = True

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    @property
    def result(self) -> Result:
        p = self.params
        return Result(list(self.tokens), list(self.logprobs), self.finish_reason or "cancelled",
                      self.tracker.text if self.tracker else None, len(self.prompt),
                      list(self.model_logprobs) if p.logprobs else None,
                      list(self.top_logprobs) if p.top_logprobs else None, self.error)

    def emit(self, event: tuple) -> None:
        if self.on_event is not None:
            self.on_event(event)


# ============================================================================ the engine

class Engine:
    """Continuous-batching generation over one model (see the module docstring).

    decode_weights: "model" (decode with the model's own weights), "auto" (the fastest lossless
    format on this machine), "fp32", "bf16" or "int8" (decode.py). compile: "off", "on", "auto".
    frozen_weights: the model's weights will not change while the engine lives, so a compiled
    step may snapshot them (faster) and the engine may fuse the model's projections in place
    (model.fuse_projections); leave it False when the model is being trained (RL). A
    decode copy in another format is a snapshot of the weights when the engine was made. The
    engine does not switch the model's mode: pass it in eval mode.
    kv_memory_mb bounds the KV cache; max_queue bounds the waiting requests (None: unbounded).
    """

    def __init__(self, model, tok=None, *, decode_weights: str = "model", compile: str = "off",
                 frozen_weights: bool = False, max_batch: int = 16, kv_memory_mb: float | None = None,
                 block_size: int = BLOCK_SIZE, max_queue: int | None = None, prefill_tokens: int = 4096):
        if max_batch < 1:
            raise UserError(f"max_batch must be >= 1, got {max_batch}", param="max_batch")
        self.model, self.tok = model, tok  # run as it is: the caller's train/eval mode is theirs
        self.config = model.config
        self.device = next(model.parameters()).device
        self.limit = self.config.max_position_embeddings
        self.max_batch, self.max_queue, self.prefill_tokens = max_batch, max_queue, prefill_tokens
        self.decode_weights = choose_decode_weights(model, decode_weights)
        self.decode_model = decode_model(model, self.decode_weights)
        if frozen_weights and self.decode_model is model:
            fuse_projections(model)
        self.kv_dtype = activation_dtype(self.decode_model)
        budget = (DEFAULT_KV_MEMORY_MB if kv_memory_mb is None else kv_memory_mb) * 2**20
        self.cache = PagedKVCache.for_budget(self.config, int(budget), block_size, self.device, self.kv_dtype)
        frozen = frozen_weights or self.decode_model is not model  # a private copy never changes
        self.step_fn = make_step(self.decode_model, self.cache, compile, frozen)
        self.stop_ids = {tok.eos_id, tok.eot_id} if tok is not None else set()
        self.inbox: queue.Queue[Request] = queue.Queue()
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.counters = dict(steps=0, prefills=0, shared_prefills=0, tokens=0, finished=0, cancelled=0, failed=0)
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ Python API
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                 on_result: Callable[[int, Result], None] | None = None) -> list[Result]:
        """Generate for every prompt (batched as the budget allows); one Result per prompt, in order.
        `on_result(i, result)` is called as each prompt finishes (progress, streaming rollouts)."""
        plist = params if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise UserError(f"got {len(prompts)} prompts but {len(plist)} SamplingParams", param="params")

        def report(i):
            return lambda event: on_result(i, event[1]) if event[0] == "done" else None

        reqs = [self._request(p, sp, report(i) if on_result else None)  # all checked before any work
                for i, (p, sp) in enumerate(zip(prompts, plist))]
        for r in reqs:
            self.inbox.put(r)
        self._drive(lambda: all(r.done.is_set() for r in reqs), reqs)
        return [r.result for r in reqs]

    def stream(self, prompt: list[int], params: SamplingParams,
               on_result: Callable[[Result], None] | None = None) -> Iterator[str]:
        """Text deltas of one prompt as they are generated (needs a tokenizer); `on_result` gets
        the finished Result (its tokens and finish reason) after the last delta."""
        events: queue.Queue = queue.Queue()
        req = self.submit(prompt, params, on_event=events.put, bounded=False)
        try:
            while True:
                if not self._background() and not req.done.is_set():
                    self.step()
                try:
                    kind, value = events.get() if self._background() else events.get_nowait()
                except queue.Empty:
                    continue
                if kind == "text":
                    yield value
                elif kind == "done":
                    if on_result is not None:
                        on_result(value)
                    return
        finally:
            req.cancel()

    def score(self, sequences: list[list[int]]) -> list[list[float]]:
        """Plain-model log p(x_t | x_<t) for t >= 1 of each sequence (temperature 1, full vocabulary)."""
        if any(not 2 <= len(seq) <= self.limit for seq in sequences):
            raise UserError(f"each sequence to score needs 2..{self.limit} tokens (the model's context)", param="sequences")
        out = []
        with self._lock, torch.inference_mode():
            for seq in sequences:
                ids = torch.tensor([seq], device=self.device)  # (1, T)
                logp = self.model(ids).logits[0, :-1].float().log_softmax(-1)  # (T-1, V)
                out.append(logp.gather(-1, ids[0, 1:, None])[:, 0].tolist())
        return out

    def submit(self, prompt: list[int], params: SamplingParams, on_event=None, bounded: bool = True) -> Request:
        """Queue a request from any thread; `on_event` receives ("text", delta), ("logprob", entry)
        and finally ("done", Result), on the engine's thread. Raises UserError for a request that
        can never run, EngineBusy when the queue is full (bounded=True and max_queue set)."""
        req = self._request(prompt, params, on_event)
        if bounded and self.max_queue is not None and self.queued() >= self.max_queue:
            raise EngineBusy(f"{self.queued()} requests are waiting; try again later")
        self.inbox.put(req)
        return req

    def queued(self) -> int:
        return len(self.waiting) + self.inbox.qsize()

    def stats(self) -> dict:
        c = self.cache
        return {"active": len(self.running), "waiting": self.queued(), "max_batch": self.max_batch,
                "kv_blocks_used": c.capacity_blocks - c.free_blocks, "kv_blocks": c.capacity_blocks,
                "kv_block_size": c.block_size, "decode": self.step_fn.name, "decode_weights": self.decode_weights,
                **self.counters}

    # ------------------------------------------------------------------ background thread
    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="minimind-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._thread = None

    def _background(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self.running and not self.waiting:
                try:  # idle: sleep until a request arrives
                    self.waiting.append(self.inbox.get(timeout=0.1))
                except queue.Empty:
                    continue
            try:
                self.step()
            except Exception:  # a bug, not a request's fault: fail what is running, keep serving
                log.exception("engine step failed")
                for r in list(self.running):
                    self._fail(r, "internal error in the generation engine")
                self._retire()

    def _drive(self, finished: Callable[[], bool], reqs: list[Request]) -> None:
        """Step in this thread until `finished()` (or wait, when a background thread steps)."""
        if self._background():
            for r in reqs:
                r.done.wait()
            return
        while not finished():
            self.step()

    def warmup(self) -> None:
        """Run (and so compile) the decode step for batch 1 and 2 before the first request."""
        with self._lock, torch.inference_mode():
            for n in (1, 2):  # token 0 at position 0 of the scratch block
                ids, positions = (torch.zeros(n, dtype=torch.long, device=self.device) for _ in range(2))
                self._decode_logits(ids, positions, torch.zeros(n, 2, dtype=torch.long, device=self.device))

    # ------------------------------------------------------------------ one step
    def step(self) -> None:
        with self._lock, torch.inference_mode():
            self._collect()
            self._drop_cancelled()
            self._admit()
            if self.running:
                self._decode()

    def _request(self, prompt, params: SamplingParams, on_event=None) -> Request:
        params.validate()
        V = self.config.vocab_size
        if not isinstance(prompt, (list, tuple)) or not prompt:
            raise UserError("prompt must be a non-empty list of token ids", param="prompt")
        if not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < V for t in prompt):
            raise UserError(f"prompt token ids must be integers in [0, {V})", param="prompt")
        total = len(prompt) + params.max_new_tokens
        if total > self.limit:
            raise UserError(f"prompt ({len(prompt)} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds "
                            f"the model's context of {self.limit} tokens", param="max_tokens")
        need = self.cache.blocks_for(total)
        if need > self.cache.capacity_blocks:
            most = self.cache.capacity_blocks * self.cache.block_size
            raise UserError(f"prompt + max_new_tokens = {total} tokens do not fit the KV cache "
                            f"({most} tokens); lower max_tokens or raise the KV memory budget", param="max_tokens")
        tracker = TextTracker(self.tok, params.stop) if self.tok is not None else None
        req = Request(list(prompt), params, on_event, make_generator(params.seed, self.device), tracker)
        if params.repetition_penalty != 1.0:
            req.seen = torch.zeros(V, dtype=torch.bool, device=self.device)
            req.seen[torch.tensor(prompt, device=self.device)] = True
        return req

    def _collect(self) -> None:
        try:
            while True:
                self.waiting.append(self.inbox.get_nowait())
        except queue.Empty:
            pass

    def _drop_cancelled(self) -> None:
        for r in [*self.waiting, *self.running]:
            if r.cancelled:
                self._finish(r, "cancelled")
        self._retire()

    def _admit(self) -> None:
        """Prefill waiting requests in arrival order while a row and their KV blocks are free,
        up to a prompt-token budget per step (at least one), so running rows are not stalled.
        A request whose prompt a running row already has (an RL group: G samples of one prompt)
        costs no prefill: that row's keys and values are copied."""
        budget = self.prefill_tokens
        while self.waiting and len(self.running) < self.max_batch and budget > 0:
            req = self.waiting[0]
            if req.params.max_new_tokens == 0:  # nothing to generate
                self._finish(req, "length")
                self._retire()
                continue
            blocks = self.cache.allocate(self.cache.blocks_for(len(req.prompt) + req.params.max_new_tokens))
            if blocks is None:  # the KV budget is in use: wait for running rows to finish
                break
            self.waiting.popleft()
            req.blocks = blocks
            donor = next((r for r in self.running if r.prompt_logits is not None and r.prompt == req.prompt), None)
            if donor is None:
                budget -= len(req.prompt)
            self.running.append(req)
            self._prefill(req, donor)

    def _prefill(self, req: Request, donor: Request | None = None) -> None:
        """Run the prompt alone (batch invariance) and sample the first token. With a running
        `donor` that has the same prompt, copy its prompt's keys and values and reuse its last
        logits instead: bit for bit what the prefill would compute (positions < len(prompt) of a
        running row are never written again)."""
        T = len(req.prompt)
        try:
            if donor is None:
                ids = torch.tensor([req.prompt], device=self.device)  # (1, T)
                view = self.cache.prefill_view(req.blocks, T)
                logits = self.model(ids, cache=view, logits_to_keep=1).logits[:, -1]  # (1, V)
                self.counters["prefills"] += 1
            else:
                self.cache.copy_prefix(donor.blocks, req.blocks, T)
                logits = donor.prompt_logits
                self.counters["shared_prefills"] += 1
        except Exception as e:
            return self._fail_rows([req], "prefill", e)
        req.length, req.prompt_logits = T, logits
        self._sample([req], logits)

    def _decode(self) -> None:
        rows = list(self.running)
        dev = self.device
        # at least 2 blocks: a compiled step would specialize a separate graph for 1 (decode.py)
        nb = max(2, *(self.cache.blocks_for(r.length + 1) for r in rows))
        table = torch.tensor([r.blocks[:nb] + [0] * (nb - len(r.blocks[:nb])) for r in rows], device=dev)
        ids = torch.tensor([r.next_token for r in rows], device=dev)
        positions = torch.tensor([r.length for r in rows], device=dev)
        try:
            logits = self._decode_logits(ids, positions, table)  # (n, V)
        except Exception as e:
            return self._fail_rows(rows, "decode step", e)
        for r in rows:
            r.length += 1
        self.counters["steps"] += 1
        self._sample(rows, logits)

    def _decode_logits(self, ids, positions, table):
        try:
            return self.step_fn(ids, positions, table)
        except Exception:
            if type(self.step_fn) is EagerStep:
                raise
            log.exception("the %s decode step failed; falling back to eager", self.step_fn.name)
            self.step_fn = EagerStep(self.decode_model, self.cache)
            return self.step_fn(ids, positions, table)

    def _sample(self, rows: list[Request], logits) -> None:
        """Sample a token for every row and record it; rows that fail end alone."""
        seen = None
        if any(r.seen is not None for r in rows):
            seen = torch.stack([r.seen if r.seen is not None else torch.zeros_like(logits[0], dtype=torch.bool)
                                for r in rows])
        try:
            draw = sample(logits, [r.params for r in rows], [r.generator for r in rows], seen)
        except Exception as e:
            return self._fail_rows(rows, "sampling", e)
        tokens, lps, ok = draw.tokens.tolist(), draw.logprobs.tolist(), draw.ok.tolist()
        model_lps = draw.model_logprobs.tolist() if draw.model_logprobs is not None else None
        top = [list(zip(*pair)) for pair in zip(draw.top[0].tolist(), draw.top[1].tolist())] if draw.top else None
        for i, r in enumerate(rows):
            try:
                if not ok[i]:
                    raise FloatingPointError("the model's logits are not finite (NaN or inf)")
                entry = None
                if r.params.logprobs:
                    entry = (model_lps[i], top[i][:r.params.top_logprobs] if top else [])
                self._accept(r, tokens[i], lps[i], entry)
            except Exception as e:
                log.warning("request failed while sampling: %s", e)
                self._fail(r, f"sampling failed: {e}")
        self._retire()

    def _accept(self, r: Request, token: int, logprob: float, entry) -> None:
        """Record a sampled token: stream its text, or finish the row."""
        r.tokens.append(token)
        r.logprobs.append(logprob)
        self.counters["tokens"] += 1
        if entry is not None:
            r.model_logprobs.append(entry[0])
            r.top_logprobs.append(entry[1])
            r.emit(("logprob", (token, entry[0], entry[1])))
        if r.seen is not None:
            r.seen[token] = True
        if token in self.stop_ids:
            return self._finish(r, "stop")
        hit_stop = False
        if r.tracker is not None:
            delta, hit_stop = r.tracker.add(token)
            if delta:
                r.emit(("text", delta))
        if hit_stop:
            self._finish(r, "stop")
        elif len(r.tokens) >= r.params.max_new_tokens:
            self._finish(r, "length")
        else:
            r.next_token = token

    def _finish(self, r: Request, reason: str) -> None:
        """Mark a row finished; `_retire` frees it and then tells the caller."""
        if r.finish_reason is None:
            r.finish_reason = reason

    def _fail_rows(self, rows: list[Request], what: str, e: Exception) -> None:
        """A computation shared by `rows` raised: they end with an error, the engine goes on."""
        log.exception("%s failed", what)
        for r in rows:
            self._fail(r, f"{what} failed: {e}")
        self._retire()

    def _fail(self, r: Request, message: str) -> None:
        r.error = r.error or message
        self._finish(r, "error")

    def _retire(self) -> None:
        """Free finished rows (rows and KV blocks) first, then deliver their results: when a
        caller hears that its request is done, the engine has already let go of it."""
        done = [r for r in self.running if r.finish_reason is not None]
        done += [r for r in self.waiting if r.finish_reason is not None]
        for r in done:
            if r in self.running:
                self.running.remove(r)
            if r in self.waiting:
                self.waiting.remove(r)
            self.cache.release(r.blocks)
            r.blocks, r.prompt_logits = [], None  # no longer a donor
            key = {"cancelled": "cancelled", "error": "failed"}.get(r.finish_reason, "finished")
            self.counters[key] += 1
        for r in done:
            self._deliver(r)

    def _deliver(self, r: Request) -> None:
        try:
            if r.tracker is not None and r.finish_reason != "error":
                rest = r.tracker.rest()
                if rest:
                    r.emit(("text", rest))
            r.emit(("done", r.result))
        except Exception:  # a consumer that raises must not take the engine down
            log.exception("delivering a result failed")
        finally:
            r.done.set()
