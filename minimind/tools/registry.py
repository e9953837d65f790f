"""The tool registry: schemas, argument validation, and calls run under a time and an output limit.

A tool is a Python function plus an OpenAI-style schema

    {"type": "function", "function": {"name": ..., "description": ..., "parameters": <JSON Schema>}}

`execute(call)` answers a call {"name", "arguments"} (arguments a dict or a JSON string, as OpenAI
sends them; an OpenAI tool call {"id", "type", "function": {...}} works too) with the text of the
tool message, and never raises: every failure is a result that starts with "error: ", which the
model reads and can correct. In order:

1. the call must name a known tool (and one of `offered`, when given);
2. the arguments must be a JSON object that validates against the tool's parameter schema
   (jsonschema, Draft 2020-12; an argument the schema does not name is an error unless the schema
   sets "additionalProperties" itself);
3. the function runs in a worker thread; after `time_limit` seconds the call is answered with a
   time-limit error. Python cannot kill a thread, so a tool that overran keeps running in the
   background: built-in tools bound their own work instead (the calculator refuses 9**9**9 before
   computing), and after `max_stuck` overrunning calls of one tool that tool is refused until they end;
4. the result (str; numbers, dicts and lists are formatted) is cut to `max_chars` characters with a
   marker saying how long it was.
"""

from __future__ import annotations

import contextvars
import copy
import json
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError, best_match

from ..errors import UserError
from .base import ToolError, format_number, short

DEFAULT_TIME_LIMIT = 5.0   # seconds per call
DEFAULT_MAX_CHARS = 1000   # a tool message longer than this is cut: small models have short contexts
DEFAULT_MAX_STUCK = 4      # overrunning calls of one tool before it is refused
MIN_MAX_CHARS = 64         # room for the truncation marker
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
_EXPECTED = (ValueError, ArithmeticError)  # a tool's own refusals: shown without a traceback-ish type name


@dataclass
class Tool:
    name: str
    fn: Callable[..., Any]
    schema: dict               # the full OpenAI form, as offered to a model
    validator: Draft202012Validator
    time_limit: float | None   # None: the registry's
    max_chars: int | None      # None: the registry's


def _openai_schema(name: str, schema: dict | None) -> dict:
    """The full OpenAI form from {"type": "function", "function": {...}}, the inner {"name", "description",
    "parameters"}, or the bare parameter schema {"type": "object", "properties": ...}."""
    if schema is None:
        schema = {}
    if not isinstance(schema, dict):
        raise UserError(f"tool {name!r}: the schema must be a dict, got {type(schema).__name__}")
    if "function" in schema:
        fn = schema["function"]
    elif schema.get("type") == "object":
        fn = {"parameters": schema}
    else:
        fn = schema
    if not isinstance(fn, dict):
        raise UserError(f'tool {name!r}: "function" must be a dict, got {type(fn).__name__}')
    fn = copy.deepcopy(fn)
    if fn.setdefault("name", name) != name:
        raise UserError(f"tool {name!r}: the schema names it {fn['name']!r}")
    fn.setdefault("description", "")
    params = fn.setdefault("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, dict) or params.get("type") != "object":
        raise UserError(f'tool {name!r}: "parameters" must be a JSON Schema with "type": "object"')
    try:
        Draft202012Validator.check_schema(params)
    except SchemaError as e:
        raise UserError(f'tool {name!r}: "parameters" is not a valid JSON Schema: {e.message}') from None
    return {"type": "function", "function": fn}


def _check_limits(where: str, time_limit: float | None, max_chars: int | None) -> None:
    if time_limit is not None and not time_limit > 0:
        raise UserError(f"{where}: time_limit must be a positive number of seconds (or None), got {time_limit!r}")
    if max_chars is not None and max_chars < MIN_MAX_CHARS:
        raise UserError(f"{where}: max_chars must be at least {MIN_MAX_CHARS}, got {max_chars!r}")


_A = {"string": "a string", "number": "a number", "integer": "an integer", "object": "an object",
      "array": "an array", "boolean": "a boolean"}


def _json_type(x: object) -> str:
    for t, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                    (list, "array"), (dict, "object"), (type(None), "null")):
        if isinstance(x, t):
            return name
    return type(x).__name__


def _describe(e: ValidationError, tool: Tool) -> str:
    """One readable line for a schema violation."""
    path = ".".join(str(p) for p in e.absolute_path)
    where = f"argument {path!r}" if path else "arguments"
    props = list(tool.schema["function"]["parameters"].get("properties", {}))
    if e.validator == "required":
        missing = next(p for p in e.validator_value if p not in e.instance)
        return f"missing required argument {missing!r}" if not path else f"{where} is missing {missing!r}"
    if e.validator == "additionalProperties" and isinstance(e.instance, dict):
        extra = next((k for k in e.instance if k not in e.schema.get("properties", {})), "?")
        takes = ", ".join(props) or "no arguments"
        return f"unexpected argument {short(extra)} ({tool.name} takes {takes})"
    if e.validator == "type":
        want = e.validator_value if isinstance(e.validator_value, list) else [e.validator_value]
        want = " or ".join(_A.get(t, t) for t in want)
        return f"{where} must be {want}, got {_json_type(e.instance)} {short(e.instance)}"
    if e.validator == "enum":
        return f"{where} must be one of {', '.join(map(repr, e.validator_value))}; got {short(e.instance)}"
    return f"{where}: {clip(e.message, 200)}"


def _not_json(word: str) -> None:
    raise ValueError(f"{word} is not a JSON number")  # Python's json accepts NaN and Infinity; JSON does not


def _to_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format_number(value)
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        return str(value)


def clip(text: str, limit: int) -> str:
    """text, or its first characters and a marker, in at most `limit` characters."""
    if len(text) <= limit:
        return text
    mark = f" ...[truncated: {len(text)} characters in all]"
    return text[: limit - len(mark)] + mark


class ToolRegistry:
    """Named tools with schemas; `execute` runs a model's call under the limits (see the module doc)."""

    def __init__(self, time_limit: float | None = DEFAULT_TIME_LIMIT, max_chars: int = DEFAULT_MAX_CHARS,
                 max_stuck: int = DEFAULT_MAX_STUCK):
        _check_limits("ToolRegistry", time_limit, max_chars)
        self.time_limit, self.max_chars, self.max_stuck = time_limit, max_chars, max_stuck
        self._tools: dict[str, Tool] = {}
        self._stuck: dict[str, list[threading.Thread]] = {}  # calls that overran their time limit
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ registering

    def register(self, name: str, fn: Callable[..., Any], schema: dict | None = None, *,
                 time_limit: float | None = None, max_chars: int | None = None, replace: bool = False) -> Tool:
        """Add a tool: fn(**arguments) -> str (or a number, dict, list). Bad definitions raise UserError."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise UserError(f"tool name {name!r}: use 1-64 letters, digits, '_' or '-'")
        if not callable(fn):
            raise UserError(f"tool {name!r}: {fn!r} is not callable")
        if name in self._tools and not replace:
            raise UserError(f"tool {name!r} is already registered (pass replace=True to replace it)")
        _check_limits(f"tool {name!r}", time_limit, max_chars)
        full = _openai_schema(name, schema)
        params = full["function"]["parameters"]
        validator = Draft202012Validator({"additionalProperties": False, **params})
        self._tools[name] = Tool(name, fn, full, validator, time_limit, max_chars)
        return self._tools[name]

    def tool(self, description: str = "", parameters: dict | None = None, *, name: str | None = None,
             time_limit: float | None = None, max_chars: int | None = None) -> Callable:
        """Decorator: @registry.tool("Add two numbers.", {"type": "object", "properties": {...}})."""
        def wrap(fn: Callable) -> Callable:
            params = parameters or {"type": "object", "properties": {}}
            self.register(name or fn.__name__, fn, {"description": description, "parameters": params},
                          time_limit=time_limit, max_chars=max_chars)
            return fn
        return wrap

    def unregister(self, name: str) -> None:
        self._tools.pop(name, None)

    def names(self) -> list[str]:
        return list(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def schemas(self, names: Iterable[str] | None = None) -> list[dict]:
        """OpenAI `tools` list (copies), for a system message or a request; all tools when names is None."""
        names = self.names() if names is None else list(names)
        unknown = [n for n in names if n not in self._tools]
        if unknown:
            raise UserError(f"unknown tool {unknown[0]!r}; known tools: {', '.join(self._tools)}")
        return [copy.deepcopy(self._tools[n].schema) for n in names]

    # ------------------------------------------------------------------ calling

    def _prepare(self, call: object, offered: Iterable[str] | None) -> tuple[Tool, dict]:
        """(tool, arguments) of a valid call; a ToolError saying what is wrong otherwise."""
        if hasattr(call, "model_dump"):  # an openai client object (ChatCompletionMessageToolCall)
            call = call.model_dump()
        if isinstance(call, dict) and "name" not in call and isinstance(call.get("function"), dict):
            call = call["function"]  # OpenAI form {"id", "type", "function": {"name", "arguments"}}
        if isinstance(call, dict) and "name" in call and not isinstance(call["name"], str):
            raise ToolError(f"a tool name is a string, got {_json_type(call['name'])} {short(call['name'])}")
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ToolError(f'a tool call is an object {{"name": ..., "arguments": {{...}}}}, got {short(call)}')
        name, raw = call["name"], call.get("arguments")
        tool = self._tools.get(name)
        allowed = self.names() if offered is None else [n for n in offered if n in self._tools]
        if tool is None or name not in allowed:
            raise ToolError(f"unknown tool {short(name)}; available tools: {', '.join(allowed) or 'none'}")
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raw = {}
        if isinstance(raw, (str, bytes)):
            try:
                raw = json.loads(raw, parse_constant=_not_json)
            except ValueError as e:
                raise ToolError(f"{name}: arguments are not valid JSON ({e})") from None
            except RecursionError:
                raise ToolError(f"{name}: arguments are nested too deeply") from None
        if not isinstance(raw, dict):
            raise ToolError(f"{name}: arguments must be a JSON object, got {_json_type(raw)} {short(raw)}")
        try:
            err = best_match(tool.validator.iter_errors(raw))
        except RecursionError:
            raise ToolError(f"{name}: arguments are nested too deeply") from None
        if err is not None:
            raise ToolError(f"{name}: {_describe(err, tool)}")
        return tool, raw

    def check(self, call: object, offered: Iterable[str] | None = None) -> str | None:
        """None when `call` is valid (known tool, arguments match the schema), else the error text."""
        try:
            self._prepare(call, offered)
        except ToolError as e:
            return clip(f"error: {e}", self.max_chars)
        return None

    def execute(self, call: object, offered: Iterable[str] | None = None) -> str:
        """The tool message text for a call; errors are results ("error: ..."), never raised.

        `offered`: the tool names this conversation offered; others are refused (None: any)."""
        try:
            tool, args = self._prepare(call, offered)
        except ToolError as e:
            return clip(f"error: {e}", self.max_chars)
        limit = tool.max_chars or self.max_chars
        try:
            return clip(self._run(tool, args), limit)
        except Exception as e:  # a last guard: formatting a strange result must not take the caller down
            return clip(f"error: {tool.name} failed: {type(e).__name__}: {e}", limit)

    def execute_openai(self, tool_call: object, offered: Iterable[str] | None = None) -> str:
        """`execute` for an OpenAI tool call {"id", "type": "function", "function": {"name", "arguments"}}."""
        return self.execute(tool_call, offered)

    def _run(self, tool: Tool, args: dict) -> str:
        limit = tool.time_limit if tool.time_limit is not None else self.time_limit
        if limit is None:
            try:
                return _to_text(tool.fn(**args))
            except Exception as e:
                return _error_text(tool, e)
        with self._lock:
            stuck = self._stuck[tool.name] = [t for t in self._stuck.get(tool.name, []) if t.is_alive()]
            if len(stuck) >= self.max_stuck:
                return (f"error: {tool.name} is unavailable: {len(stuck)} earlier calls are still running "
                        f"past the time limit")
        box: dict[str, Any] = {}
        done = threading.Event()

        def work() -> None:
            try:
                box["value"] = tool.fn(**args)
            except BaseException as e:  # noqa: BLE001 - a worker thread has nobody else to tell
                box["error"] = e
            finally:
                done.set()

        # the caller's context variables (e.g. the mock clock of mocks.at) hold inside the worker too
        thread = threading.Thread(target=contextvars.copy_context().run, args=(work,), name=f"tool:{tool.name}",
                                  daemon=True)
        thread.start()
        if not done.wait(limit):
            with self._lock:
                self._stuck.setdefault(tool.name, []).append(thread)
            return f"error: {tool.name}: no result within the time limit of {limit:g} s"
        if "error" in box:
            return _error_text(tool, box["error"])
        return _to_text(box["value"])

    def running_past_limit(self, name: str) -> int:
        """How many calls of a tool overran their time limit and are still running."""
        with self._lock:
            return sum(t.is_alive() for t in self._stuck.get(name, []))


def _error_text(tool: Tool, e: BaseException) -> str:
    if isinstance(e, _EXPECTED):
        return f"error: {tool.name}: {e}"
    return f"error: {tool.name} failed: {type(e).__name__}: {e}"
