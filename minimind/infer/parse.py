"""Turn what the model generated into a structured assistant message.

The chat template (minimind.tokenizer) makes an assistant turn look like::

    <think>\\n{reasoning}\\n</think>\\n\\n{content}\\n<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>

`parse_assistant` inverts that: it splits off the reasoning, lifts every well-formed tool
call out of the content, and returns an OpenAI-style message
`{"content", "reasoning_content", "tool_calls"}`. It never raises: a tool call with bad JSON,
no name, or no closing tag simply stays in the content as text, so the user sees what the
model wrote.

Where does the reasoning start? If the generation prompt ended with `<think>\\n`
(open_thinking), the output starts *inside* the think block and only its tail `...</think>`
appears; otherwise the output is the answer, unless the model itself opens with `<think>`.
Pass `open_thinking=True/False` when you know which prompt was used; the default `None`
guesses from the text (any `</think>` ends a reasoning prefix).

`StreamParser` does the same incrementally for streaming (terminal chat, HTTP server): feed it
text deltas, get back `("reasoning", text)`, `("content", text)` and `("tool_call", call)`
events. It holds back any text that might still turn into a tag (`<thi...`), a newline that
might belong to a following `<tool_call>`, and a whole tool call until it is closed, so it
never emits a partial tag and never has to take back what it emitted: the concatenated deltas
always equal the final message.

How: after every delta the buffer is parsed with `final=False`, which returns only the part
of the message that no continuation can change; the events are the growth since last time.
"""

from __future__ import annotations

import json
import re

THINK, END_THINK = "<think>", "</think>"
TOOL_CALL, END_TOOL_CALL = "<tool_call>", "</tool_call>"
END_MARKERS = ("<|im_end|>", "<|endoftext|>")  # generation stops at either; nothing after counts
TAGS = (THINK, END_THINK, TOOL_CALL, END_TOOL_CALL, *END_MARKERS)

# A tool-call block: an optional newline (the template puts one before each call that follows
# text), the tags, and a body that does not contain another opening tag.
_CALL_RE = re.compile(r"\n?<tool_call>((?:(?!<tool_call>).)*?)</tool_call>", re.DOTALL)


def _tool_call(body: str) -> dict | None:
    """The call inside a <tool_call> block, or None if it is not a valid call."""
    try:
        call = json.loads(body)
    except (ValueError, RecursionError):  # bad JSON is text the model wrote, not an error
        return None
    if isinstance(call, dict) and isinstance(call.get("function"), dict):
        call = call["function"]  # tolerate the OpenAI wrapping
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        return None
    args = call.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            return None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None
    return {"name": call["name"], "arguments": args}


def _split_tool_calls(content: str) -> tuple[str, list[dict]]:
    """Remove the valid tool-call blocks from the content; invalid ones stay as text."""
    calls, pieces, last = [], [], 0
    for match in _CALL_RE.finditer(content):
        call = _tool_call(match.group(1))
        if call is None:
            continue
        pieces.append(content[last:match.start()])
        calls.append(call)
        last = match.end()
    pieces.append(content[last:])
    return "".join(pieces), calls


def _partial_tag_len(text: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some tag."""
    for n in range(min(len(text), max(map(len, TAGS)) - 1), 0, -1):
        tail = text[-n:]
        if any(tag.startswith(tail) and tag != tail for tag in TAGS):
            return n
    return 0


def _hold_back(content: str) -> str:
    """Cut the content where more text could still change it (streaming only)."""
    opening = content.rfind(TOOL_CALL)
    if opening >= 0 and END_TOOL_CALL not in content[opening:]:
        content = content[:opening]  # an unclosed call: wait for its end
        if content.endswith("\n"):
            content = content[:-1]  # this newline goes away if the call turns out valid
    elif content.endswith("\n"):
        content = content[:-1]  # may be the newline before a coming <tool_call>
    return content


def _parse(text: str, open_thinking: bool | None, final: bool) -> tuple[str | None, str]:
    """Split text into (reasoning or None, content with tool calls still in it).

    With final=False the text may still grow, and only what no continuation can change is
    returned: partial tags, trailing newlines and unclosed tool calls are held back.
    """
    ends = [i for i in (text.find(m) for m in END_MARKERS) if i >= 0]
    if ends:  # generation stopped here, so everything before is final
        text, final = text[: min(ends)], True
    elif not final:
        text = text[: len(text) - _partial_tag_len(text)]
    if text.startswith(THINK):
        body = text[len(THINK):]
    elif open_thinking or (open_thinking is None and END_THINK in text):
        body = text  # the prompt opened <think>: the text starts inside the block
    else:
        return None, text if final else _hold_back(text)
    if END_THINK not in body:  # still thinking (or cut off while thinking)
        return body.strip("\n"), ""
    reasoning, content = body.split(END_THINK, 1)
    content = content.lstrip("\n")
    return reasoning.strip("\n"), content if final else _hold_back(content)


def parse_assistant(text: str, open_thinking: bool | None = None) -> dict:
    """Parse generated text into {"content", "reasoning_content", "tool_calls"}; never raises.

    open_thinking: True if the generation prompt ended with "<think>\\n", False if not,
    None (default) to guess: a "</think>" anywhere then ends a reasoning prefix.
    """
    reasoning, content = _parse(text, open_thinking, final=True)
    content, calls = _split_tool_calls(content)
    return {"content": content, "reasoning_content": reasoning or None, "tool_calls": calls}


Event = tuple[str, object]  # ("reasoning", str) | ("content", str) | ("tool_call", {"name", "arguments"})


class StreamParser:
    """Incremental `parse_assistant` for streamed generation.

    feed(delta) -> events for the text that became certain; flush() -> events for what was
    held back, once the text is complete; finish() -> the whole message, which equals the
    concatenated events and `parse_assistant(all text, open_thinking)`.

    Each feed re-parses the whole reply (linear in its length): simple, and cheap for replies
    of a few thousand characters.
    """

    def __init__(self, open_thinking: bool = False):
        # A definite mode: guessing (None) would need the end of the text before emitting anything.
        self.open_thinking = bool(open_thinking)
        self.text = ""
        self._reasoning = ""  # what was emitted so far
        self._content = ""
        self._calls = 0

    def _events(self, final: bool) -> list[Event]:
        reasoning, content = _parse(self.text, self.open_thinking, final)
        content, calls = _split_tool_calls(content)
        events: list[Event] = []
        if reasoning and len(reasoning) > len(self._reasoning):
            events.append(("reasoning", reasoning[len(self._reasoning):]))
            self._reasoning = reasoning
        if len(content) > len(self._content):
            events.append(("content", content[len(self._content):]))
            self._content = content
        events.extend(("tool_call", call) for call in calls[self._calls:])
        self._calls = len(calls)
        return events

    def feed(self, delta: str) -> list[Event]:
        self.text += delta
        return self._events(final=False)

    def flush(self) -> list[Event]:
        return self._events(final=True)

    def finish(self) -> dict:
        return parse_assistant(self.text, self.open_thinking)
