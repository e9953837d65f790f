"""`minimind serve`: an OpenAI-compatible chat server with continuous batching, and a web chat page.

Architecture::

    HTTP clients ─► FastAPI handlers (asyncio event loop)
                      validate the request -> render the chat template -> prompt ids + SamplingParams
                      Engine.submit() ──► inbox (queue.Queue)
                                              │
                    engine thread (the only code that touches the model):
                      loop: drop cancelled sequences
                            admit waiting requests into free slots (prefill each prompt)
                            ONE batched decode step for every active sequence
                            sample each row with its own params / seeded generator, check stops
                            push text deltas to each request's asyncio.Queue (call_soon_threadsafe)
                                              │
    handlers read their queue ◄───────────────┘
      -> one chat.completion, or SSE chat.completion.chunk events (StreamParser splits
         reasoning / content / tool calls as the text arrives)

Continuous batching (Orca, Yu et al. 2022): sequences join and leave the running batch at every
decode step, so a short request never waits for a long one and concurrent clients share each
forward pass instead of queueing behind each other.

KV cache (`SlotCache`): one pre-allocated tensor per layer with a row ("slot") per sequence,
each sequence stored from column 0 up to its own length. Active sequences always occupy rows
[0, n): when one finishes, the last row is copied into its place, so a decode step reads the
plain slice [:n, :, :S] with no gather. Each row writes its new key at its own column, attends
through a per-row mask `column <= length`, and gets its own RoPE position. Columns grow by
doubling as sequences get longer and shrink back when the server is idle.

Batch invariance: a request's greedy output must not depend on what else is running. The math
above guarantees that, but kernels may round differently for different shapes (bf16 makes
that visible). So a new prompt is prefilled on its own, exactly as it would run alone (a
padded batch of prompts would take other attention and matmul kernels), and a decode step
attends over a key span rounded up to a multiple of SPAN_ROUND columns, so a row's keys sit in
the same kernel blocks whatever the longest sequence in the batch is; the extra columns are
masked. With this, greedy replies alone and in a batch of 16 were identical in fp32 and bf16 on
CPU in our checks; a GPU's matmul kernels may still differ by batch size.

Request parameters: temperature, top_p, top_k (extension), repetition_penalty (extension,
CTRL-style multiplicative), max_tokens / max_completion_tokens (a hard limit), stop, seed, n=1.
frequency_penalty and presence_penalty are validated and ignored: OpenAI's additive penalties
have no exact counterpart here; use repetition_penalty. Omitted temperature / top_p default
to 0.7 / 0.9 (the terminal chat's defaults; a small model rambles at OpenAI's 1.0).
usage.completion_tokens counts every generated token, including the end-of-turn token.
"""

import asyncio
import hmac
import json
import logging
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import UserError
from ..model import KVCache
from .generate import SamplingParams, _find_stop, sample_next, think_suppression
from .parse import END_TOOL_CALL, TOOL_CALL, StreamParser, parse_assistant

log = logging.getLogger("minimind.serve")
STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_TEMPERATURE, DEFAULT_TOP_P = 0.7, 0.9
SPAN_ROUND = 64  # decode attends over a multiple of this many key columns (batch invariance)
DISCONNECT_POLL_S = 0.5  # how often a waiting handler checks whether its client is still there


# ============================================================================ KV cache slots

class SlotCache:
    """Per-sequence KV rows of a fixed number of slots, speaking the model's cache protocol.

    k[layer], v[layer]: (slots, g, capacity, hd). Row i holds positions [0, length_i) of the
    i-th active sequence. During a decode step (`begin_decode`), `update` writes the new key
    of row i at column lens[i] and returns the slice [:n, :, :span] for attention.
    """

    def __init__(self, config, slots: int, device, dtype, capacity: int = 256):
        self.config, self.slots, self.device, self.dtype = config, slots, device, dtype
        self.limit = config.max_position_embeddings
        self.initial = min(capacity, self.limit)
        self.k, self.v = self._alloc(self.initial), self._alloc(self.initial)
        self.pos = 0  # the model reads/writes this; positions are always passed explicitly here
        self._lens, self._span = None, 0  # set for each decode step by begin_decode

    def _alloc(self, capacity: int) -> list[torch.Tensor]:
        c = self.config
        shape = (self.slots, c.num_key_value_heads, capacity, c.head_dim)
        return [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(c.num_hidden_layers)]

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    def reserve(self, length: int, rows: int) -> None:
        """Make room for `length` columns, keeping the first `rows` rows' contents."""
        if length <= self.capacity:
            return
        cap = self.capacity
        while cap < length:
            cap *= 2
        cap = min(cap, self.limit)
        k, v = self._alloc(cap), self._alloc(cap)
        for new, old in zip(k + v, self.k + self.v):
            new[:rows, :, :old.shape[2]] = old[:rows]
        self.k, self.v = k, v

    def shrink(self) -> None:
        """Give back the memory of long sequences once nothing is running."""
        if self.capacity > self.initial:
            self.k, self.v = self._alloc(self.initial), self._alloc(self.initial)

    def write(self, row: int, src: KVCache, src_row: int, start: int, length: int) -> None:
        """Copy `length` positions of a prefill cache row (from column `start`) into slot `row`."""
        for dst, s in zip(self.k + self.v, src.k + src.v):
            dst[row, :, :length] = s[src_row, :, start:start + length]

    def move(self, src: int, dst: int, length: int) -> None:
        for t in self.k + self.v:
            t[dst, :, :length] = t[src, :, :length]

    def begin_decode(self, lens: torch.Tensor, span: int) -> None:
        """The next `update`s write row i at column lens[i] and return the first `span` columns."""
        self._lens, self._span = lens, span

    def update(self, layer: int, k, v):
        """k, v: (n, g, 1, hd) -> write row i at column lens[i]; return (n, g, S, hd) views."""
        n = k.shape[0]
        rows = torch.arange(n, device=k.device)
        self.k[layer][rows, :, self._lens] = k[:, :, 0]
        self.v[layer][rows, :, self._lens] = v[:, :, 0]
        return self.k[layer][:n, :, :self._span], self.v[layer][:n, :, :self._span]


# ============================================================================ sequences

class TextTracker:
    """Token ids -> text deltas that are safe to send.

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
        cut = _find_stop(self.text, self.stops) if self.stops else None
        if cut is not None:
            return self._take(self.text[:cut]), True
        return self._take(self.text[:len(self.text) - self.hold]), False

    def rest(self) -> str:
        """Everything not yet sent, once the sequence has ended."""
        text = self.text + (self.tok.decode(self.tail) if self.tail else "")
        cut = _find_stop(text, self.stops) if self.stops else None
        return self._take(text if cut is None else text[:cut])

    def _take(self, upto: str) -> str:
        if len(upto) <= self.sent:
            return ""
        delta, self.sent = upto[self.sent:], len(upto)
        return delta


@dataclass
class Sequence:
    """One request inside the engine. `emit` delivers events to the waiting HTTP handler."""

    prompt: list[int]
    params: SamplingParams
    emit: Callable[[tuple], None]
    text: TextTracker
    generator: torch.Generator
    seen: torch.Tensor | None = None  # (1, V) tokens seen, for the repetition penalty
    length: int = 0  # positions stored in the KV cache
    next_token: int = -1  # sampled, not yet fed to the model
    n_generated: int = 0
    done: bool = False
    cancelled: bool = False
    events: asyncio.Queue | None = field(default=None, repr=False)


# ============================================================================ the engine

class Engine:
    """Owns the model in a background thread and runs continuous batching over all requests."""

    def __init__(self, model, tok, max_batch: int = 16, prefill_tokens: int = 4096):
        self.model, self.tok = model.eval(), tok
        self.max_batch, self.prefill_tokens = max_batch, prefill_tokens
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.config = model.config
        self.limit = self.config.max_position_embeddings
        self.stop_ids = {tok.eos_id, tok.eot_id}
        self.cache = SlotCache(self.config, max_batch, self.device, self.dtype)
        self.inbox: queue.Queue[Sequence] = queue.Queue()
        self.waiting: deque[Sequence] = deque()
        self.active: list[Sequence] = []
        self.counters = dict(steps=0, prefills=0, tokens=0, finished=0, cancelled=0)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ public, any thread
    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="minimind-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, prompt: list[int], params: SamplingParams) -> Sequence:
        """Queue a request (call from the event loop); its events arrive on `seq.events`."""
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(event):
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop is gone (server shutting down)
                pass

        seq = Sequence(prompt, params, emit, TextTracker(self.tok, params.stop), self._generator(params.seed),
                       events=events)
        if params.repetition_penalty != 1.0:
            seq.seen = torch.zeros((1, self.config.vocab_size), dtype=torch.bool, device=self.device)
            seq.seen[0, torch.tensor(prompt, device=self.device)] = True
        self.inbox.put(seq)
        return seq

    def cancel(self, seq: Sequence) -> None:
        """Stop generating for a request (client gone); a no-op once it has finished."""
        if not seq.done:
            seq.cancelled = True

    def stats(self) -> dict:
        return {"active": len(self.active), "waiting": len(self.waiting) + self.inbox.qsize(),
                "max_batch": self.max_batch, "kv_capacity": self.cache.capacity, **self.counters}

    def _generator(self, seed: int | None) -> torch.Generator:
        g = torch.Generator(device=self.device)
        if seed is None:
            g.seed()  # non-deterministic, but private to this request
        else:
            g.manual_seed(seed)
        return g

    # ------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stopping.is_set():
                self._collect(block=not self.active and not self.waiting)
                try:
                    self._step()
                except Exception as e:  # keep serving: fail the batch that hit the error
                    log.exception("engine step failed")
                    self._fail_all(f"generation failed: {e}")

    def _collect(self, block: bool) -> None:
        """Move newly submitted requests to `waiting`; sleep briefly when there is nothing to do."""
        try:
            if block:
                self.waiting.append(self.inbox.get(timeout=0.1))
            while True:
                self.waiting.append(self.inbox.get_nowait())
        except queue.Empty:
            pass

    def _step(self) -> None:
        self._drop_cancelled()
        self._admit()
        if self.active:
            self._decode()
        elif not self.waiting:
            self.cache.shrink()

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self.waiting if s.cancelled]:
            self.waiting.remove(seq)
            self.counters["cancelled"] += 1
        self._retire()

    def _admit(self) -> None:
        """Take waiting requests into free slots, up to a prompt-token budget per iteration
        (at least one request), so that running streams are not stalled by a burst of prompts."""
        budget = self.prefill_tokens
        while self.waiting and len(self.active) < self.max_batch and budget > 0:
            seq = self.waiting.popleft()
            budget -= len(seq.prompt)
            self.active.append(seq)  # from here on, an error fails it with the rest of the batch
            self._prefill(seq, row=len(self.active) - 1)

    def _prefill(self, seq: Sequence, row: int) -> None:
        """Run one prompt exactly as it would run alone, then copy its keys/values into slot `row`."""
        T = len(seq.prompt)
        tmp = KVCache(self.config, 1, T, self.device, self.dtype)
        ids = torch.tensor([seq.prompt], device=self.device)  # (1, T)
        logits = self.model(ids, cache=tmp, logits_to_keep=1).logits[:, -1]  # (1, V)
        self.cache.reserve(T, row)
        self.cache.write(row, tmp, 0, 0, T)
        seq.length = T
        self.counters["prefills"] += 1
        self._advance([seq], logits)

    def _decode(self) -> None:
        """One token for every active sequence, in one forward pass."""
        n, dev = len(self.active), self.device
        lens_list = [s.length for s in self.active]
        span = min(-(-(max(lens_list) + 1) // SPAN_ROUND) * SPAN_ROUND, self.limit)  # see module doc
        self.cache.reserve(span, n)
        lens = torch.tensor(lens_list, device=dev)  # (n,) = position of the token fed now
        ids = torch.tensor([s.next_token for s in self.active], device=dev)[:, None]  # (n, 1)
        mask = (torch.arange(span, device=dev)[None, :] <= lens[:, None])[:, None, None, :]  # (n, 1, 1, S)
        self.cache.begin_decode(lens, span)
        logits = self.model(ids, position_ids=lens[:, None], mask=mask, cache=self.cache).logits[:, -1]
        for s in self.active:
            s.length += 1
        self.counters["steps"] += 1
        self._advance(list(self.active), logits)

    def _advance(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        for seq, token in zip(seqs, self._sample(seqs, logits)):
            self._accept(seq, token)
        self._retire()

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
        """Greedy rows share one argmax; every other row samples with its own params and generator."""
        greedy = [s.params.temperature == 0 and s.params.repetition_penalty == 1.0 for s in seqs]
        rows = [i for i, g in enumerate(greedy) if g]
        out = dict(zip(rows, logits[rows].float().argmax(-1).tolist())) if rows else {}
        for i, s in enumerate(seqs):
            if not greedy[i]:  # one generator per request: its samples do not depend on the batch
                out[i] = int(sample_next(logits[i:i + 1], s.params, s.seen, s.generator)[0])
        return [out[i] for i in range(len(seqs))]

    def _accept(self, seq: Sequence, token: int) -> None:
        """Record a sampled token: stream its text, or finish the sequence."""
        seq.n_generated += 1
        self.counters["tokens"] += 1
        if seq.seen is not None:
            seq.seen[0, token] = True
        if token in self.stop_ids:
            return self._finish(seq, "stop")
        delta, hit_stop = seq.text.add(token)
        if delta:
            seq.emit(("text", delta))
        if hit_stop:
            self._finish(seq, "stop")
        elif seq.n_generated >= seq.params.max_new_tokens:
            self._finish(seq, "length")
        else:
            seq.next_token = token

    def _finish(self, seq: Sequence, reason: str) -> None:
        rest = seq.text.rest()
        if rest:
            seq.emit(("text", rest))
        seq.emit(("done", {"finish_reason": reason, "prompt_tokens": len(seq.prompt),
                           "completion_tokens": seq.n_generated}))
        seq.done = True
        self.counters["finished"] += 1

    def _retire(self) -> None:
        """Free the slots of finished / cancelled sequences, keeping active rows contiguous."""
        for i in reversed(range(len(self.active))):
            seq = self.active[i]
            if not (seq.done or seq.cancelled):
                continue
            if seq.cancelled and not seq.done:
                self.counters["cancelled"] += 1
            last = len(self.active) - 1
            if i != last:  # rows above i were already checked: the last one is alive
                self.cache.move(last, i, self.active[last].length)
                self.active[i] = self.active[last]
            self.active.pop()

    def _fail_all(self, message: str) -> None:
        for seq in self.active:
            seq.emit(("error", message))
            seq.done = True
        self.active.clear()
        self.cache.shrink()


# ============================================================================ request validation

class ApiError(Exception):
    """An HTTP error with an OpenAI-style body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


ROLES = {"system", "user", "assistant", "tool", "developer"}


@dataclass
class ChatRequest:
    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool
    open_thinking: bool
    tools_enabled: bool  # tool_choice != "none": tool calls in the reply are lifted out


def _bad(param: str, message: str, code: str | None = None) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code=code)


def _content_text(content, where: str) -> str:
    """String content, None, or OpenAI content parts [{"type": "text", "text": ...}] -> a string."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise _bad(where, f"expected a string or a list of text parts, got {type(content).__name__}")
    texts = []
    for j, part in enumerate(content):
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            raise _bad(f"{where}[{j}]", 'only {"type": "text", "text": "..."} parts are supported')
        texts.append(part["text"])
    return "\n".join(texts)


def _message(m, i: int) -> dict:
    """Validate one message and keep what the chat template reads."""
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise _bad(where, f"expected an object with 'role' and 'content', got {type(m).__name__}")
    role = m.get("role")
    if role not in ROLES:
        raise _bad(f"{where}.role", f"unknown role {role!r} (expected system, user, assistant or tool)")
    out = {"role": "system" if role == "developer" else role,
           "content": _content_text(m.get("content"), f"{where}.content")}
    if role == "assistant":
        reasoning = m.get("reasoning_content")
        if reasoning is not None and not isinstance(reasoning, str):
            raise _bad(f"{where}.reasoning_content", "expected a string")
        out.update(reasoning_content=reasoning, tool_calls=m.get("tool_calls"))
    if role == "tool" and m.get("tool_call_id") is not None and not isinstance(m["tool_call_id"], str):
        raise _bad(f"{where}.tool_call_id", "expected a string")
    return out


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if messages is None:
        raise _bad("messages", "missing; send a list of {role, content} messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "expected a non-empty list of messages")
    return [_message(m, i) for i, m in enumerate(messages)]


def _flag(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(name, f"expected true or false, got {value!r}")
    return value


def _thinking(body: dict) -> bool:
    """Top-level `open_thinking` wins over chat_template_kwargs.enable_thinking; default off."""
    if body.get("open_thinking") is not None:
        return _flag(body, "open_thinking")
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise _bad("chat_template_kwargs", "expected an object")
    return _flag(kwargs, "enable_thinking")


def _tools(body: dict) -> tuple[list | None, bool]:
    """-> (tools to render, whether tool calls are allowed)."""
    tools, choice = body.get("tools"), body.get("tool_choice", "auto")
    if tools is not None and not isinstance(tools, list):
        raise _bad("tools", "expected a list of tools")
    if choice is None:
        choice = "auto"
    if choice not in ("auto", "none"):
        raise _bad("tool_choice", f"only 'auto' and 'none' are supported, got {choice!r}")
    return (tools or None) if choice == "auto" else None, choice == "auto"


def _check_number(body: dict, name: str, lo: float, hi: float) -> None:
    value = body.get(name)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise _bad(name, f"expected a number in [{lo}, {hi}], got {value!r}")


def _max_tokens(body: dict) -> tuple[str, int | None]:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise _bad(name, f"expected a positive integer, got {value!r}")
    return name, value


def _sampling(body: dict, prompt_len: int, limit: int) -> SamplingParams:
    """Sampling parameters, checked against the context window."""
    if prompt_len >= limit:
        raise _bad("messages", f"the prompt has {prompt_len} tokens; the model's context is {limit}",
                   "context_length_exceeded")
    name, max_new = _max_tokens(body)
    if max_new is not None and prompt_len + max_new > limit:
        raise _bad(name, f"prompt ({prompt_len} tokens) + {name} ({max_new}) exceeds the model's "
                         f"context of {limit} tokens", "context_length_exceeded")
    n = body.get("n", 1)
    if n is not None and n != 1:
        raise _bad("n", f"only n=1 is supported, got {n!r}")
    for penalty in ("frequency_penalty", "presence_penalty"):  # accepted, ignored (see module doc)
        _check_number(body, penalty, -2.0, 2.0)
    stop = body.get("stop")
    params = SamplingParams(
        temperature=_get(body, "temperature", DEFAULT_TEMPERATURE), top_p=_get(body, "top_p", DEFAULT_TOP_P),
        top_k=_get(body, "top_k", 0), repetition_penalty=_get(body, "repetition_penalty", 1.0),
        max_new_tokens=max_new if max_new is not None else limit - prompt_len,
        stop=[] if stop is None else stop, seed=body.get("seed"))
    try:
        return params.validate()
    except UserError as e:
        param = name if e.param == "max_new_tokens" else e.param
        raise ApiError(400, str(e), param=param) from None


def _get(body: dict, name: str, default):
    value = body.get(name)
    return default if value is None else value


def parse_chat_request(body, tok, limit: int) -> ChatRequest:
    """Validate an OpenAI chat request and render its prompt; raises ApiError (400)."""
    from ..tokenizer import render_chat

    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    messages = _messages(body)
    tools, tools_enabled = _tools(body)
    think = _thinking(body)
    try:
        ids, _ = render_chat(tok, messages, tools=tools, add_generation_prompt=True, open_thinking=think)
    except UserError as e:
        raise ApiError(400, str(e), param=e.param or "messages") from None
    stream = _flag(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options", "expected an object")
    params = _sampling(body, len(ids), limit)
    params.suppress_ids = think_suppression(tok, think)
    return ChatRequest(ids, params, stream, _flag(options, "include_usage"), think, tools_enabled)


# ============================================================================ response building

def _new_id(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:24]}"


def openai_tool_call(call: dict) -> dict:
    """{"name", "arguments": dict} -> OpenAI's tool call with a JSON-string `arguments`."""
    return {"id": _new_id("call_"), "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}


def _call_as_text(call: dict) -> str:
    """A tool call written back as the text the model produced (when tool_choice is "none")."""
    return f"{TOOL_CALL}\n{json.dumps(call, ensure_ascii=False)}\n{END_TOOL_CALL}"


def build_message(text: str, open_thinking: bool, tools_enabled: bool = True) -> dict:
    """Generated text -> an assistant message (content, reasoning_content, tool_calls)."""
    parsed = parse_assistant(text, open_thinking=open_thinking)
    content, calls = parsed["content"], parsed["tool_calls"]
    if not tools_enabled:  # tool_choice "none": a call the model wrote anyway stays text
        content = "\n".join(part for part in [content, *map(_call_as_text, calls)] if part)
        calls = []
    message = {"role": "assistant", "content": content or (None if calls else ""),
               "reasoning_content": parsed["reasoning_content"]}
    if calls:
        message["tool_calls"] = [openai_tool_call(c) for c in calls]
    return message


def build_completion(text: str, finish_reason: str, usage: dict, model: str, open_thinking: bool = False,
                     tools_enabled: bool = True) -> dict:
    """A whole `chat.completion` object; finish_reason becomes "tool_calls" when the model called tools."""
    message = build_message(text, open_thinking, tools_enabled)
    if message.get("tool_calls"):
        finish_reason = "tool_calls"
    return {"id": _new_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
            "usage": usage}


class ChunkBuilder:
    """Text deltas -> `chat.completion.chunk` objects (role first, then reasoning / content / tool calls)."""

    def __init__(self, model: str, open_thinking: bool, tools_enabled: bool = True):
        self.id, self.created, self.model = _new_id("chatcmpl-"), int(time.time()), model
        self.parser = StreamParser(open_thinking)
        self.tools_enabled = tools_enabled
        self.n_calls = 0
        self.has_content = False

    def chunk(self, delta: dict | None, finish_reason: str | None = None, **extra) -> dict:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                                             "logprobs": None}]
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def start(self) -> dict:
        return self.chunk({"role": "assistant", "content": ""})

    def feed(self, text: str) -> list[dict]:
        return [self.chunk(d) for d in self._deltas(self.parser.feed(text))]

    def finish(self, finish_reason: str) -> list[dict]:
        chunks = [self.chunk(d) for d in self._deltas(self.parser.flush())]
        return chunks + [self.chunk({}, "tool_calls" if self.n_calls else finish_reason)]

    def usage(self, usage: dict) -> dict:
        return self.chunk(None, usage=usage)

    def _deltas(self, events) -> list[dict]:
        out = []
        for kind, value in events:
            if kind == "reasoning":
                out.append({"reasoning_content": value})
            elif kind == "content" or not self.tools_enabled:  # tool_choice "none": calls stay text
                text = value if kind == "content" else "\n" * self.has_content + _call_as_text(value)
                out.append({"content": text})
                self.has_content = True
            else:
                out.append({"tool_calls": [{"index": self.n_calls, **openai_tool_call(value)}]})
                self.n_calls += 1
        return out


def _usage(info: dict) -> dict:
    p, c = info["prompt_tokens"], info["completion_tokens"]
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


# ============================================================================ the app

def create_app(model, tok, model_name: str = "minimind", api_key: str | None = None, max_batch: int = 16):
    """The FastAPI app; its engine thread starts and stops with the app (lifespan)."""
    from contextlib import asynccontextmanager

    from fastapi import APIRouter, Depends, FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    engine = Engine(model, tok, max_batch=max_batch)

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="minimind", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")

    def error(e: ApiError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return error(e)

    @app.exception_handler(RequestValidationError)  # FastAPI's 422 -> OpenAI's 400
    async def validation_error(request, e):
        return error(ApiError(400, _first_error(e)))

    @app.exception_handler(HTTPException)  # 404, 405 ... in the same error shape
    async def http_error(request, e):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error(ApiError(e.status_code, str(e.detail), type=kind))

    # A dependency, not an HTTP middleware: Starlette's middleware wrapper would hide disconnects.
    def require_key(request: Request):
        if api_key and not _key_ok(request, api_key):
            raise ApiError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name}

    @app.get("/stats")
    async def stats():
        return engine.stats()

    @v1.get("/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "minimind", "max_model_len": engine.limit}]}

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        req = parse_chat_request(await _json_body(request), tok, engine.limit)
        seq = engine.submit(req.prompt_ids, req.params)
        if req.stream:
            return StreamingResponse(_sse(engine, seq, req, request, model_name), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return JSONResponse(await _complete(engine, seq, req, request, model_name))

    app.include_router(v1)
    return app


def _key_ok(request, api_key: str) -> bool:
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    return hmac.compare_digest(given.strip().encode(), api_key.encode())


def _first_error(e) -> str:
    errors = e.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    return f"{'.'.join(str(x) for x in first.get('loc', ()))}: {first.get('msg', 'invalid')}"


async def _json_body(request):
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, "the request body is not valid JSON") from None


async def _events(engine: Engine, seq: Sequence, request):
    """The engine's events for one request; ends when it is done or the client has gone.

    Text that piled up while this handler was busy is merged into one event, so a slow
    client gets fewer, larger deltas instead of falling further behind.
    """
    loop, getter = asyncio.get_running_loop(), None
    next_check = loop.time() + DISCONNECT_POLL_S
    try:
        while True:
            getter = getter or asyncio.ensure_future(seq.events.get())
            done, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL_S)
            if loop.time() >= next_check:  # on a clock: events may never pause long enough
                if await request.is_disconnected():
                    return
                next_check = loop.time() + DISCONNECT_POLL_S
            if not done:
                continue
            events, getter = _merge_text([getter.result()], seq.events), None
            for kind, value in events:
                yield kind, value
            if events[-1][0] in ("done", "error"):
                return
    finally:
        if getter is not None:
            getter.cancel()
        engine.cancel(seq)  # no-op when finished; frees the slot when the client left early


def _merge_text(events: list, pending: asyncio.Queue) -> list:
    """Append the events already waiting in `pending`, joining consecutive text events."""
    while not pending.empty():
        event = pending.get_nowait()
        if event[0] == "text" and events[-1][0] == "text":
            events[-1] = ("text", events[-1][1] + event[1])
        else:
            events.append(event)
    return events


async def _complete(engine, seq, req: ChatRequest, request, model_name: str) -> dict:
    text, info = [], None
    async for kind, value in _events(engine, seq, request):
        if kind == "text":
            text.append(value)
        elif kind == "error":
            raise ApiError(500, value, type="server_error")
        else:
            info = value
    if info is None:  # the client disconnected; nobody reads this
        raise ApiError(499, "client closed the request")
    return build_completion("".join(text), info["finish_reason"], _usage(info), model_name, req.open_thinking,
                            req.tools_enabled)


async def _sse(engine, seq, req: ChatRequest, request, model_name: str):
    """Server-sent events: `data: {chunk}` per delta, then `data: [DONE]`."""
    builder = ChunkBuilder(model_name, req.open_thinking, req.tools_enabled)

    def line(obj) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    yield line(builder.start())
    async for kind, value in _events(engine, seq, request):
        if kind == "text":
            for chunk in builder.feed(value):
                yield line(chunk)
        elif kind == "error":
            yield line(ApiError(500, value, type="server_error").body())
        else:
            for chunk in builder.finish(value["finish_reason"]):
                yield line(chunk)
            if req.include_usage:
                yield line(builder.usage(_usage(value)))
    yield "data: [DONE]\n\n"


# ============================================================================ command line

def _apply_lora(model, adapter: str):
    """Load a LoRA adapter and fold it into the weights (serving then costs nothing extra)."""
    try:
        from .. import lora
    except ImportError:
        lora = None
    if not hasattr(lora, "load_adapter"):
        raise UserError(f"--lora {adapter}: LoRA adapters are not available in this installation "
                        "(no minimind.lora.load_adapter)")
    model = lora.load_adapter(model, adapter) or model
    merge = getattr(lora, "merge_lora", None)
    return merge(model).eval() if merge else model


def build_server(args):
    """Load the checkpoint and return a configured (not yet running) uvicorn.Server."""
    try:
        import uvicorn
    except ImportError:
        raise UserError("serve needs fastapi and uvicorn: pip install 'minimind[serve]'") from None
    from .generate import load_for_inference

    if args.max_batch < 1:
        raise UserError(f"--max-batch must be >= 1, got {args.max_batch}")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    from .quant import apply_quantization

    model, tok = load_for_inference(args.checkpoint, args.device, args.dtype)
    if args.lora:
        model = _apply_lora(model, args.lora)
    model = apply_quantization(model, getattr(args, "quantize", "none"))  # after merging the adapter
    app = create_app(model, tok, model_name=args.model_name, api_key=args.api_key, max_batch=args.max_batch)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=getattr(args, "log_level", "info"))
    return uvicorn.Server(config)


def serve(args) -> None:
    """`minimind serve CKPT`: run until Ctrl-C."""
    server = build_server(args)
    print(f"minimind: serving {args.checkpoint} as {args.model_name!r} on http://{args.host}:{args.port}/ "
          f"(OpenAI API at /v1, web chat at /)")
    server.run()
