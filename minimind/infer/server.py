"""`minimind serve`: an OpenAI-compatible chat API and a web chat page, over the generation engine.

Architecture::

    HTTP clients ─► FastAPI handlers (asyncio event loop): check the key, the content type and
                    the body size; parse JSON, validate, render the chat template and tokenize
                    in a worker thread (never on the event loop); Engine.submit()
                          │
                    the engine thread (infer/engine.py, the only code that touches the model):
                    continuous batching, sampling, stop strings; pushes ("text", delta),
                    ("logprob", entry) and ("done", Result) events into the request's
                    asyncio.Queue (call_soon_threadsafe)
                          │
    handlers read their queue ◄┘ -> one chat.completion, or SSE chat.completion.chunk events
                    (StreamParser splits reasoning / content / tool calls as the text arrives)

This module is the API layer only: request validation and response shapes. Generation, its
batching and its limits (KV memory, batch size) live in the engine.

Request parameters: temperature (< 1e-5 is greedy), top_p, top_k (extension), repetition_penalty
(extension, CTRL-style multiplicative, 0.01..100), max_tokens / max_completion_tokens, stop (at
most 4 strings of at most 256 characters), seed (-2**63 .. 2**64-1), logprobs / top_logprobs
(0..20; the plain model's log-probabilities, OpenAI semantics), n (1..MAX_N = 8 choices; below).
response_format {"type": "text"} only: JSON mode is rejected with 400 (this server cannot constrain
the output), as is a non-empty logit_bias. frequency_penalty and presence_penalty are validated and
ignored: OpenAI's additive penalties have no exact counterpart here; use repetition_penalty.
Omitted temperature / top_p default to 0.7 / 0.9 (the terminal chat's defaults; a small model
rambles at OpenAI's 1.0). usage.completion_tokens counts every generated token, including the
end-of-turn token.

n choices: each choice is its own engine request with the same prompt and parameters (the engine
shares their prefill), choice i with seed + i (mod 2**64) when a seed is given, so the choices
differ and the response is reproducible. max_tokens applies to each choice; usage counts the prompt
once and every choice's tokens. Streamed chunks carry their choice's `index` (choices interleave),
each choice ends with its own finish_reason chunk, then the usage chunk (if asked) and one [DONE].

Limits (flags of `minimind serve`): request bodies over --max-body-mb are refused with 413 before
they are read in full; a request without max_tokens gets at most --default-max-tokens; the KV cache
is bounded by --kv-memory-mb and a request waits in a queue until its prompt + max_tokens fit; more
than --max-queue waiting requests get 429. A request with n choices is n engine requests to these
limits: it gets 429 unless the queue takes all n (those already queued are cancelled), each choice
waits for its own KV blocks, and a client that leaves cancels all n. Every endpoint but GET /health
needs the --api-key when one is set (Bearer, X-API-Key, or HTTP Basic with the key as password: a
browser asks for it when it opens the web page); /health then says only {"status": "ok"}. POST
bodies must be application/json (415 otherwise), so a web page elsewhere cannot post a "simple"
form request to a local server. Internal errors are logged and answered with a generic message and
the request id, never with the exception's text.
"""

import asyncio
import base64
import dataclasses
import hmac
import ipaddress
import json
import logging
import sys
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .engine import Engine, EngineBusy, Request, Result
from .parse import END_TOOL_CALL, TOOL_CALL, StreamParser, parse_assistant
from .sampling import SEED_RANGE, SamplingParams, think_suppression

log = logging.getLogger("minimind.serve")
STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_TEMPERATURE, DEFAULT_TOP_P = 0.7, 0.9
DISCONNECT_POLL_S = 0.5  # how often a waiting handler checks whether its client is still there
MAX_N = 8  # choices per request (OpenAI's `n`)


@dataclass
class Limits:
    """What one request may ask of the server (flags of `minimind serve`)."""

    max_body_bytes: int = 4 * 2**20
    default_max_tokens: int = 512
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
    n: int = 1  # choices: n engine requests with the same prompt

    def choice_params(self, i: int) -> SamplingParams:
        """Choice i's parameters: seed + i when a seed is given (the generator reads it mod 2**64)."""
        if i == 0 or self.params.seed is None:
            return self.params
        seed = self.params.seed + i
        if seed > SEED_RANGE[1]:
            seed -= 2**64
        return dataclasses.replace(self.params, seed=seed)


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


def _response_format(body: dict) -> None:
    """Only plain text: this server cannot constrain its output to JSON, so it says so (400)."""
    fmt = body.get("response_format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind != "text":
        raise _bad("response_format", f"only {{'type': 'text'}} is supported, got {fmt!r:.80}; this server cannot "
                                      "constrain replies to JSON (ask for JSON in the prompt and parse the reply)")


def _sampling(body: dict) -> tuple[SamplingParams, str, bool]:
    """Sampling parameters (checked before the prompt is rendered) -> (params, the name of the
    max-tokens field, whether max_tokens was given)."""
    name, max_new = _max_tokens(body)
    for penalty in ("frequency_penalty", "presence_penalty"):  # accepted, ignored (see module doc)
        _check_number(body, penalty, -2.0, 2.0)
    if body.get("logit_bias"):
        raise _bad("logit_bias", "not supported")
    _response_format(body)
    stop = body.get("stop")
    params = SamplingParams(
        temperature=_get(body, "temperature", DEFAULT_TEMPERATURE), top_p=_get(body, "top_p", DEFAULT_TOP_P),
        top_k=_get(body, "top_k", 0), repetition_penalty=_get(body, "repetition_penalty", 1.0),
        max_new_tokens=max_new or 1, stop=[] if stop is None else stop, seed=body.get("seed"),
        logprobs=_flag(body, "logprobs"), top_logprobs=_get(body, "top_logprobs", 0))
    try:
        params.validate()
    except UserError as e:
        raise ApiError(400, str(e), param=name if e.param == "max_new_tokens" else e.param) from None
    return params, name, max_new is not None


def _choice_count(body: dict) -> int:
    n = body.get("n")
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise _bad("n", f"expected an integer from 1 to {MAX_N} (choices per request), got {n!r}")
    return n


def _fit_context(params: SamplingParams, name: str, given: bool, prompt_len: int, limit: int,
                 default_max: int) -> None:
    """max_tokens against the context window; a missing max_tokens becomes the bounded default."""
    if prompt_len >= limit:
        raise _bad("messages", f"the prompt has {prompt_len} tokens; the model's context is {limit}",
                   "context_length_exceeded")
    if not given:
        params.max_new_tokens = min(default_max, limit - prompt_len)
    elif prompt_len + params.max_new_tokens > limit:
        raise _bad(name, f"prompt ({prompt_len} tokens) + {name} ({params.max_new_tokens}) exceeds the model's "
                         f"context of {limit} tokens", "context_length_exceeded")


def _get(body: dict, name: str, default):
    value = body.get(name)
    return default if value is None else value


def parse_chat_request(body, tok, limit: int, limits: Limits | None = None) -> ChatRequest:
    """Validate an OpenAI chat request and render its prompt; raises ApiError (400).

    Runs in a worker thread: tokenizing a big prompt must not stall the event loop."""
    from ..tokenizer import render_chat

    limits = limits or Limits()
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    messages = _messages(body)
    tools, tools_enabled = _tools(body)
    think = _thinking(body)
    stream = _flag(body, "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options", "expected an object")
    params, name, given = _sampling(body)
    n = _choice_count(body)
    try:  # message text is encoded as text: it can never become a control token (tokenizer.py)
        ids, _ = render_chat(tok, messages, tools=tools, add_generation_prompt=True, open_thinking=think)
    except UserError as e:
        raise ApiError(400, str(e), param=e.param or "messages") from None
    _fit_context(params, name, given, len(ids), limit, limits.default_max_tokens)
    params.suppress_ids = think_suppression(tok, think)
    return ChatRequest(ids, params, stream, _flag(options, "include_usage"), think, tools_enabled, n)


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


def build_choice(index: int, text: str, finish_reason: str, open_thinking: bool = False, tools_enabled: bool = True,
                 logprobs: list[dict] | None = None) -> dict:
    """One choice of a `chat.completion`; finish_reason becomes "tool_calls" when the model called tools."""
    message = build_message(text, open_thinking, tools_enabled)
    if message.get("tool_calls"):
        finish_reason = "tool_calls"
    return {"index": index, "message": message, "finish_reason": finish_reason,
            "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None}}


def completion_object(choices: list[dict], usage: dict, model: str, id: str | None = None) -> dict:
    """A whole `chat.completion` object around its choices."""
    return {"id": id or _new_id("chatcmpl-"), "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage}


def build_completion(text: str, finish_reason: str, usage: dict, model: str, open_thinking: bool = False,
                     tools_enabled: bool = True, logprobs: list[dict] | None = None, id: str | None = None) -> dict:
    """A whole `chat.completion` object with one choice."""
    choice = build_choice(0, text, finish_reason, open_thinking, tools_enabled, logprobs)
    return completion_object([choice], usage, model, id)


class ChunkBuilder:
    """Text deltas -> `chat.completion.chunk` objects (role first, then reasoning / content / tool calls).

    Log-prob entries wait in `logprobs` until the next chunk with a delta carries them. One builder
    per choice: `index` is the choice's, and the choices of one response share `id` and `created`."""

    def __init__(self, model: str, open_thinking: bool, tools_enabled: bool = True, id: str | None = None,
                 with_logprobs: bool = False, index: int = 0, created: int | None = None):
        self.id, self.model = id or _new_id("chatcmpl-"), model
        self.created = int(time.time()) if created is None else created
        self.index = index
        self.parser = StreamParser(open_thinking)
        self.tools_enabled = tools_enabled
        self.n_calls = 0
        self.has_content = False
        self.with_logprobs, self.logprobs = with_logprobs, []

    def chunk(self, delta: dict | None, finish_reason: str | None = None, **extra) -> dict:
        choices = []
        if delta is not None:
            lp = None
            if self.with_logprobs and (self.logprobs or finish_reason):
                lp, self.logprobs = {"content": self.logprobs, "refusal": None}, []
            choices = [{"index": self.index, "delta": delta, "finish_reason": finish_reason, "logprobs": lp}]
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


def _usage(results: list[Result]) -> dict:
    """The prompt once, the tokens of every choice."""
    p, c = results[0].prompt_tokens, sum(len(r.tokens) for r in results)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level BPE alphabet: byte b -> the printable character that stands for it."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    table, extra = {b: chr(b) for b in keep}, 0
    for b in range(256):
        if b not in table:
            table[b], extra = chr(256 + extra), extra + 1
    return table


class TokenText:
    """A token id -> (text, its UTF-8 bytes) for OpenAI's logprobs entries. A byte-level token may
    hold part of a character; its text then shows U+FFFD and its bytes say exactly what it is."""

    def __init__(self, tok):
        self.tok, self.byte_of = tok, {c: b for b, c in _bytes_to_unicode().items()}
        self.memo: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token: int) -> tuple[str, list[int]]:
        if token not in self.memo:
            piece = self.tok.id_to_token(token) or ""
            if all(c in self.byte_of for c in piece):
                raw = bytes(self.byte_of[c] for c in piece)
            else:  # an added token (<|im_end|>, <think>, ...): its text is itself
                raw = piece.encode()
            self.memo[token] = (raw.decode("utf-8", errors="replace"), list(raw))
        return self.memo[token]

    def entry(self, token: int, logprob: float, top: list[tuple[int, float]]) -> dict:
        text, raw = self(token)
        return {"token": text, "logprob": logprob, "bytes": raw,
                "top_logprobs": [dict(zip(("token", "bytes"), self(t)), logprob=lp) for t, lp in top]}


# ============================================================================ the app

def create_app(engine: Engine, model_name: str = "minimind", api_key: str | None = None,
               limits: Limits | None = None):
    """The FastAPI app over a (not yet started) engine; the engine thread starts and stops with it."""
    from contextlib import asynccontextmanager

    from fastapi import APIRouter, Depends, FastAPI, Request as HttpRequest
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    limits = limits or Limits()
    tok = engine.tok
    token_text = TokenText(tok)

    @asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(title="minimind", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")

    def error(e: ApiError, ask_browser: bool = False) -> JSONResponse:
        # a browser opening the page is asked for the key; API calls (the page's fetches too) are not
        headers = {"WWW-Authenticate": 'Basic realm="minimind"'} if e.status == 401 and ask_browser else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request, e: ApiError):
        return error(e, ask_browser=request.url.path == "/")

    @app.exception_handler(RequestValidationError)  # FastAPI's 422 -> OpenAI's 400
    async def validation_error(request, e):
        return error(ApiError(400, _first_error(e)))

    @app.exception_handler(HTTPException)  # 404, 405 ... in the same error shape
    async def http_error(request, e):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return error(ApiError(e.status_code, str(e.detail), type=kind))

    @app.exception_handler(Exception)  # a bug: log it, tell the client nothing about internals
    async def internal_error(request, e):
        rid = _new_id("req-")
        log.error("internal error (request id %s)", rid, exc_info=e)
        return error(_internal(rid))

    # A dependency, not an HTTP middleware: Starlette's middleware wrapper would hide disconnects.
    def require_key(request: HttpRequest):
        if api_key and not _key_ok(request, api_key):
            raise ApiError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'", code="invalid_api_key")

    guarded = APIRouter(dependencies=[Depends(require_key)])

    @app.get("/health")  # a bare liveness check: open, and says nothing else when a key is set
    async def health():
        return {"status": "ok"} if api_key else {"status": "ok", "model": model_name}

    @guarded.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @guarded.get("/stats")
    async def stats():
        return engine.stats()

    @guarded.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": int(time.time()),
                                            "owned_by": "minimind", "max_model_len": engine.limit}]}

    @guarded.post("/v1/chat/completions")
    async def chat_completions(request: HttpRequest):
        body = await _json_body(request, limits.max_body_bytes)
        req = await asyncio.to_thread(parse_chat_request, body, tok, engine.limit, limits)
        rid = _new_id("chatcmpl-")
        choices = _submit(engine, req)
        if req.stream:
            return StreamingResponse(_sse(engine, choices, req, request, model_name, rid, token_text),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return JSONResponse(await _complete(engine, choices, req, request, model_name, rid, token_text))

    app.include_router(guarded)
    return app


def _internal(rid: str) -> ApiError:
    return ApiError(500, f"internal server error (request id {rid}); the server log has the details",
                    type="server_error")


def _key_ok(request, api_key: str) -> bool:
    """Bearer KEY, X-API-Key: KEY, or HTTP Basic with KEY as the password (what a browser sends)."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    given = request.headers.get("x-api-key", "")
    if scheme.lower() == "bearer":
        given = value
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except ValueError:
            given = ""
    return hmac.compare_digest(given.strip().encode(), api_key.encode())


def _first_error(e) -> str:
    errors = e.errors()
    if not errors:
        return "invalid request"
    first = errors[0]
    return f"{'.'.join(str(x) for x in first.get('loc', ()))}: {first.get('msg', 'invalid')}"


async def _json_body(request, max_bytes: int):
    """The JSON body, refused with 415 unless it says application/json and with 413 as soon as it
    passes max_bytes (never read whole first); parsed in a worker thread."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, got {ctype or 'none'!r}",
                       code="unsupported_media_type")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > max_bytes):
        raise ApiError(413, f"the request body is larger than {max_bytes} bytes (--max-body-mb)", code="body_too_large")
    from starlette.requests import ClientDisconnect

    raw, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise ApiError(413, f"the request body is larger than {max_bytes} bytes (--max-body-mb)",
                               code="body_too_large")
            raw.append(chunk)
    except ClientDisconnect:
        raise ApiError(499, "client closed the request") from None
    return await asyncio.to_thread(_parse_json, b"".join(raw))


def _parse_json(raw: bytes):
    try:
        body = json.loads(raw)
        json.dumps(body, ensure_ascii=False).encode()  # a lone surrogate ("\\ud800") is not text
    except UnicodeEncodeError:
        raise ApiError(400, "the request body contains a lone UTF-16 surrogate (\\uD800-\\uDFFF): not valid text") from None
    except (ValueError, RecursionError):
        raise ApiError(400, "the request body is not valid JSON") from None
    return body


def _submit(engine: Engine, req: ChatRequest) -> tuple[list[Request], asyncio.Queue]:
    """Hand a request's n choices to the engine -> (their handles, the asyncio.Queue their events
    arrive on, as (choice index, kind, value)). All or nothing: when one cannot be queued, those
    already queued are cancelled before the error (429 when the queue is full) goes out."""
    loop, events = asyncio.get_running_loop(), asyncio.Queue()

    def emitter(index: int):
        def emit(event):
            try:
                loop.call_soon_threadsafe(events.put_nowait, (index, *event))
            except RuntimeError:  # the event loop is gone (server shutting down)
                pass
        return emit

    handles = []
    try:
        for i in range(req.n):
            handles.append(_submit_one(engine, req.prompt_ids, req.choice_params(i), emitter(i)))
    except ApiError:
        for handle in handles:
            handle.cancel()
        raise
    return handles, events


def _submit_one(engine: Engine, prompt: list[int], params: SamplingParams, emit) -> Request:
    try:
        return engine.submit(prompt, params, on_event=emit)
    except EngineBusy as e:
        raise ApiError(429, f"the server is busy: {e}", type="rate_limit_error", code="queue_full") from None
    except UserError as e:
        raise ApiError(400, str(e), param=e.param) from None


async def _events(choices: tuple[list[Request], asyncio.Queue], request):
    """The engine's (choice index, kind, value) events for a request's choices; ends when all are
    done or the client has gone, and cancels whatever still runs when it ends (close it early to
    give up on the rest).

    Text that piled up while this handler was busy is merged into one event, so a slow
    client gets fewer, larger deltas instead of falling further behind.
    """
    handles, queue = choices
    running = len(handles)
    loop, getter = asyncio.get_running_loop(), None
    next_check = loop.time() + DISCONNECT_POLL_S
    try:
        while True:
            getter = getter or asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL_S)
            if loop.time() >= next_check:  # on a clock: events may never pause long enough
                if await request.is_disconnected():
                    return
                next_check = loop.time() + DISCONNECT_POLL_S
            if not done:
                continue
            events, getter = _merge_text([getter.result()], queue), None
            for index, kind, value in events:
                if kind == "done":  # each choice's last event
                    running -= 1
                yield index, kind, value
            if not running:
                return
    finally:
        if getter is not None:
            getter.cancel()
        for handle in handles:
            handle.cancel()  # no-op when finished; frees the row when the client left early


def _merge_text(events: list, pending: asyncio.Queue) -> list:
    """Append the events already waiting in `pending`, joining consecutive text events of one choice."""
    while not pending.empty():
        event, last = pending.get_nowait(), events[-1]
        if event[1] == "text" and last[1] == "text" and event[0] == last[0]:
            events[-1] = (last[0], "text", last[2] + event[2])
        else:
            events.append(event)
    return events


def _logprob_entry(engine: Engine, token_text: TokenText, value) -> dict | None:
    token, logprob, top = value
    if token in engine.stop_ids:  # the end-of-turn token is not part of the reply's text
        return None
    return token_text.entry(token, logprob, top)


def _failed(result: Result, rid: str) -> ApiError:
    log.error("request %s failed: %s", rid, result.error)
    return _internal(rid)


async def _complete(engine, choices, req: ChatRequest, request, model_name: str, rid: str, token_text) -> dict:
    texts, entries = [[] for _ in range(req.n)], [[] for _ in range(req.n)]
    results: list[Result | None] = [None] * req.n
    async with aclosing(_events(choices, request)) as events:
        async for i, kind, value in events:
            if kind == "text":
                texts[i].append(value)
            elif kind == "logprob":
                entries[i].append(_logprob_entry(engine, token_text, value))
            elif value.finish_reason == "error":  # the request fails; closing the events cancels the rest
                raise _failed(value, rid)
            else:
                results[i] = value
    if None in results:  # the client disconnected; nobody reads this
        raise ApiError(499, "client closed the request")
    built = [build_choice(i, "".join(texts[i]), results[i].finish_reason, req.open_thinking, req.tools_enabled,
                          [e for e in entries[i] if e is not None] if req.params.logprobs else None)
             for i in range(req.n)]
    return completion_object(built, _usage(results), model_name, rid)


async def _sse(engine, choices, req: ChatRequest, request, model_name: str, rid: str, token_text):
    """Server-sent events: `data: {chunk}` per delta of each choice, then `data: [DONE]`."""
    created = int(time.time())
    builders = [ChunkBuilder(model_name, req.open_thinking, req.tools_enabled, rid, req.params.logprobs, i, created)
                for i in range(req.n)]
    results: list[Result | None] = [None] * req.n

    def line(obj) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    for builder in builders:
        yield line(builder.start())
    async with aclosing(_events(choices, request)) as events:
        async for i, kind, value in events:
            builder = builders[i]
            if kind == "text":
                for chunk in builder.feed(value):
                    yield line(chunk)
            elif kind == "logprob":
                entry = _logprob_entry(engine, token_text, value)
                if entry is not None:
                    builder.logprobs.append(entry)
            elif value.finish_reason == "error":  # the request fails; closing the events cancels the rest
                yield line(_failed(value, rid).body())
                break
            else:
                results[i] = value
                for chunk in builder.finish(value.finish_reason):
                    yield line(chunk)
    if req.include_usage and None not in results:
        yield line(builders[0].usage(_usage(results)))
    yield "data: [DONE]\n\n"


# ============================================================================ command line

def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_args(args) -> None:
    checks = [("--max-batch", args.max_batch >= 1, ">= 1"), ("--port", 0 <= args.port <= 65535, "in 0..65535"),
              ("--max-body-mb", args.max_body_mb > 0, "> 0"), ("--default-max-tokens", args.default_max_tokens >= 1, ">= 1"),
              ("--kv-memory-mb", args.kv_memory_mb > 0, "> 0"), ("--max-queue", args.max_queue >= 0, ">= 0")]
    for flag, ok, want in checks:
        if not ok:
            raise UserError(f"{flag} must be {want}, got {getattr(args, flag[2:].replace('-', '_'))}")


def build_server(args):
    """Load the checkpoint and return a configured (not yet running) uvicorn.Server."""
    try:
        import uvicorn
    except ImportError:
        raise UserError("serve needs fastapi and uvicorn: pip install 'minimind[serve]'") from None
    from .generate import load_engine

    _check_args(args)
    if not args.api_key and not is_loopback(args.host):
        print(f"minimind: warning: serving on {args.host} without --api-key: anyone who can reach this "
              "address can use the model", file=sys.stderr)
    engine = load_engine(args.checkpoint, args.device, args.dtype, getattr(args, "quantize", "none"),
                         compile=args.compile, lora=args.lora, max_batch=args.max_batch,
                         kv_memory_mb=args.kv_memory_mb, max_queue=args.max_queue)
    if engine.step_fn.name != "eager":
        print(f"minimind: compiling the decode step ({engine.step_fn.name}) ...", file=sys.stderr, flush=True)
        engine.warmup()
    limits = Limits(int(args.max_body_mb * 2**20), args.default_max_tokens)
    app = create_app(engine, model_name=args.model_name, api_key=args.api_key, limits=limits)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=getattr(args, "log_level", "info"))
    return uvicorn.Server(config)


def serve(args) -> None:
    """`minimind serve CKPT`: run until Ctrl-C."""
    server = build_server(args)
    print(f"minimind: serving {args.checkpoint} as {args.model_name!r} on http://{args.host}:{args.port}/ "
          f"(OpenAI API at /v1, web chat at /)")
    server.run()
