"""Read and validate the JSONL record formats of the public MiniMind datasets.

One JSON object per line, in one of these shapes:

    pretrain         {"text": "..."}
    sft / lora /     {"conversations": [{"role": "user", "content": "..."},
      reasoning                         {"role": "assistant", "content": "...",
                                         "reasoning_content": "..."}]}
    dpo              {"chosen": [messages], "rejected": [messages]}
    rl (RLAIF,       {"conversations": [messages], "gt": ...}   ("gt" optional)
      agent RL)

A message has a "role" (system, user, assistant or tool) and a string "content";
optional fields are "reasoning_content" (assistant), "tools" (system message: a JSON
string with the tool list) and "tool_calls" (assistant message: a JSON string with the
calls). Optional fields may be null, as the published files store them.

`iter_records` streams a file line by line (a multi-GB dataset is never loaded) and
checks every record against its kind. A bad record either stops everything with a
`UserError` naming `file:line` (the default: silent data loss is worse than a stop), or,
with on_bad_record="skip", is counted in a `RecordStats` that the caller reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import UserError

KINDS = ("pretrain", "sft", "dpo", "rl")
ROLES = ("system", "user", "assistant", "tool")
MAX_REASONS = 5  # how many skip reasons RecordStats keeps for the report


class BadRecord(ValueError):
    """A record that does not match its format (the message says what is wrong)."""


@dataclass
class RecordStats:
    """Counts of a pass over a file: good records, skipped ones, and why the first were skipped."""

    good: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)  # "path:line: what", first MAX_REASONS
    bytes_read: int = 0  # bytes consumed so far (drives progress bars)

    def skip(self, where: str, what: str) -> None:
        self.skipped += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(f"{where}: {what}")

    def summary(self) -> str:
        """One line for the user, e.g. 'skipped 2 bad records of 100 (first: f:3: ...)'."""
        total = self.good + self.skipped
        if not self.skipped:
            return f"{self.good} records, none skipped"
        return f"skipped {self.skipped} bad records of {total} (first: {'; '.join(self.reasons)})"


# ----------------------------------------------------------------------------- checks

def _json_value(value: Any, name: str, where: str) -> Any:
    """tools / tool_calls are stored as JSON strings (already-parsed values are accepted too)."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise BadRecord(f"{where}.{name} is not valid JSON ({e.msg} at column {e.colno})") from None


def _check_tools(value: Any, where: str) -> None:
    """A list of tool descriptions (objects)."""
    tools = _json_value(value, "tools", where)
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise BadRecord(f"{where}.tools must be a list of tool objects")


def _check_tool_calls(value: Any, where: str) -> None:
    """One call or a list; each {"name", "arguments"} or OpenAI's {"function": {...}}."""
    calls = _json_value(value, "tool_calls", where)
    calls = [calls] if isinstance(calls, dict) else calls
    if not isinstance(calls, list):
        raise BadRecord(f"{where}.tool_calls must be a list of calls, got {type(calls).__name__}")
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        if not isinstance(call, dict):
            raise BadRecord(f"{at} must be an object with 'name' and 'arguments'")
        if isinstance(call.get("function"), dict):
            call = call["function"]
        if not isinstance(call.get("name"), str) or not call["name"]:
            raise BadRecord(f"{at} has no function 'name'")
        args = call.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError as e:
                raise BadRecord(f"{at}.arguments is not valid JSON ({e.msg})") from None
        if args is not None and not isinstance(args, dict):
            raise BadRecord(f"{at}.arguments must be a JSON object")


def check_message(msg: Any, where: str) -> None:
    """Check one chat message in place; `where` is e.g. 'conversations[2]'."""
    if not isinstance(msg, dict):
        raise BadRecord(f"{where} must be an object with 'role' and 'content', got {type(msg).__name__}")
    role = msg.get("role")
    if not isinstance(role, str):
        raise BadRecord(f"{where} has no 'role'")
    if role not in ROLES:
        raise BadRecord(f"{where}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
    tool_calls = msg.get("tool_calls")
    content = msg.get("content")
    if content is None and tool_calls:
        msg["content"] = ""  # an assistant turn that only calls tools has no text
    elif not isinstance(content, str):
        what = "has no 'content'" if content is None else f"'content' must be a string, got {type(content).__name__}"
        raise BadRecord(f"{where} {what}")
    reasoning = msg.get("reasoning_content")
    if reasoning is not None and not isinstance(reasoning, str):
        raise BadRecord(f"{where}.reasoning_content must be a string")
    if msg.get("tools") is not None:
        if role != "system":
            raise BadRecord(f"{where}: 'tools' belongs on the system message, not on a {role} message")
        _check_tools(msg["tools"], where)
    if tool_calls is not None:
        if role != "assistant":
            raise BadRecord(f"{where}: 'tool_calls' belongs on an assistant message, not on a {role} message")
        _check_tool_calls(tool_calls, where)


def check_messages(msgs: Any, name: str, need: str | None) -> None:
    """Check a message list; `need` is a role that must occur at least once (or None)."""
    if msgs is None:
        raise BadRecord(f"missing field '{name}'")
    if not isinstance(msgs, list):
        raise BadRecord(f"'{name}' must be a list of messages, got {type(msgs).__name__}")
    if not msgs:
        raise BadRecord(f"'{name}' is empty")
    for i, msg in enumerate(msgs):
        check_message(msg, f"{name}[{i}]")
        if i > 0 and msg.get("tools") is not None:  # the chat template would silently drop them
            raise BadRecord(f"{name}[{i}]: 'tools' is only read from the first message; move the system message first")
    if need and not any(m["role"] == need for m in msgs):
        raise BadRecord(f"'{name}' has no {need} turn")


def check_record(record: Any, kind: str) -> None:
    """Raise BadRecord if `record` does not have the shape of `kind`."""
    if not isinstance(record, dict):
        raise BadRecord(f"expected a JSON object, got {type(record).__name__}")
    if kind == "pretrain":
        if "text" not in record:
            raise BadRecord("missing field 'text'")
        if not isinstance(record["text"], str):
            raise BadRecord(f"'text' must be a string, got {type(record['text']).__name__}")
    elif kind == "sft":
        check_messages(record.get("conversations"), "conversations", need="assistant")
    elif kind == "dpo":
        check_messages(record.get("chosen"), "chosen", need="assistant")
        check_messages(record.get("rejected"), "rejected", need="assistant")
    elif kind == "rl":
        # an RL record is a prompt: the (often empty) last assistant turn is generated later
        check_messages(record.get("conversations"), "conversations", need="user")
    else:
        raise UserError(f"unknown record kind {kind!r} (expected one of {', '.join(KINDS)})")


# ----------------------------------------------------------------------------- reading

def _decode(raw: bytes, lineno: int) -> Any:
    """bytes of one line -> parsed JSON, or BadRecord saying why not."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRecord(f"not valid UTF-8 (bad byte 0x{raw[e.start]:02x} at byte {e.start})") from None
    if lineno == 1:
        text = text.lstrip("\ufeff")  # a byte-order mark some editors write
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadRecord(f"broken JSON ({e.msg} at column {e.colno})") from None


def _open(path: str | Path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a .jsonl file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None


def iter_records(
    path: str | Path,
    kind: str,
    on_bad_record: str = "error",
    stats: RecordStats | None = None,
) -> Iterator[tuple[int, dict]]:
    """Stream (line number, record) for every good record of a JSONL file.

    on_bad_record="error": the first bad record raises UserError("path:line: what; ...").
    on_bad_record="skip": bad records are counted in `stats` (pass one to report them).
    Empty lines are ignored. The file is read line by line, never loaded whole.
    """
    if kind not in KINDS:
        raise UserError(f"unknown record kind {kind!r} (expected one of {', '.join(KINDS)})")
    if on_bad_record not in ("error", "skip"):
        raise UserError(f"on_bad_record must be 'error' or 'skip', got {on_bad_record!r}")
    stats = stats if stats is not None else RecordStats()
    with _open(path) as f:
        for lineno, raw in enumerate(f, 1):
            stats.bytes_read += len(raw)
            if not raw.strip():
                continue
            try:
                record = _decode(raw, lineno)
                check_record(record, kind)
            except BadRecord as e:
                if on_bad_record == "error":
                    raise UserError(f"{path}:{lineno}: {e}; fix the line or pass --on-bad-record skip") from None
                stats.skip(f"{path}:{lineno}", str(e))
                continue
            stats.good += 1
            yield lineno, record


def kind_of(record: Any) -> str | None:
    """Guess the kind of one parsed record, or None if it fits no format."""
    if not isinstance(record, dict):
        return None
    if "text" in record:
        return "pretrain"
    if "chosen" in record and "rejected" in record:
        return "dpo"
    conv = record.get("conversations")
    if not isinstance(conv, list):
        return None
    if "gt" in record:
        return "rl"
    # RLAIF prompts end with an empty assistant turn (or have none): nothing to imitate
    last = conv[-1] if conv else None
    if not isinstance(last, dict) or last.get("role") != "assistant":
        return "rl"
    if not last.get("content") and not last.get("tool_calls"):
        return "rl"
    return "sft"


def detect_kind(path: str | Path) -> str:
    """Guess a file's kind ("pretrain", "sft", "dpo" or "rl") from its first record."""
    with _open(path) as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = _decode(raw, lineno)
            except BadRecord as e:
                raise UserError(f"{path}:{lineno}: {e}; cannot tell the dataset kind") from None
            kind = kind_of(record)
            if kind is None:
                raise UserError(
                    f"{path}:{lineno}: record has none of the fields 'text', 'conversations' or "
                    f"'chosen'/'rejected'; not a MiniMind dataset (or pass the kind explicitly)"
                )
            return kind
    raise UserError(f"{path}: file is empty; nothing to read")
