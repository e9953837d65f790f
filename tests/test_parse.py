"""Parsing generated assistant text: reasoning, tool calls, malformed input, and streaming."""

import json
import random

import pytest

from minimind.infer.parse import StreamParser, parse_assistant
from minimind.tokenizer import render_chat_text

TAGS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<|im_end|>", "<|endoftext|>"]
CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expr": "6*7"}}\n</tool_call>'


def test_think_block_is_split_off():
    out = parse_assistant("<think>\nThe user greets me.\n</think>\n\nHello! 你好")
    assert out == {"content": "Hello! 你好", "reasoning_content": "The user greets me.", "tool_calls": []}


def test_tail_of_an_opened_think_block():
    text = "Six times seven.\n</think>\n\n42"
    assert parse_assistant(text) == {"content": "42", "reasoning_content": "Six times seven.", "tool_calls": []}
    assert parse_assistant(text, open_thinking=True) == parse_assistant(text)
    # Told that the prompt did not open thinking, a stray </think> is just text.
    assert parse_assistant(text, open_thinking=False)["content"] == text


def test_no_or_empty_reasoning():
    assert parse_assistant("Just an answer.") == {"content": "Just an answer.", "reasoning_content": None,
                                                  "tool_calls": []}
    assert parse_assistant("<think>\n\n</think>\n\nHi")["reasoning_content"] is None
    assert parse_assistant("<think>\n\n</think>\n\nHi")["content"] == "Hi"


def test_cut_off_while_thinking():
    assert parse_assistant("<think>\nstill going") == {"content": "", "reasoning_content": "still going",
                                                       "tool_calls": []}
    assert parse_assistant("still going", open_thinking=True)["reasoning_content"] == "still going"


def test_generation_stops_at_end_marker():
    assert parse_assistant("Hi there.<|im_end|>\n<|im_start|>user\nmore")["content"] == "Hi there."
    assert parse_assistant("Hi<|endoftext|>junk")["content"] == "Hi"


def test_tool_calls_are_lifted_out_of_the_content():
    text = ("<think>\nNeed the calculator.\n</think>\n\nLet me compute.\n" + CALL + "\n"
            '<tool_call>\n{"type": "function", "function": {"name": "get_time", "arguments": "{\\"tz\\": \\"UTC\\"}"}}'
            "\n</tool_call>")
    out = parse_assistant(text)
    assert out["reasoning_content"] == "Need the calculator."
    assert out["content"] == "Let me compute."
    assert out["tool_calls"] == [{"name": "calculator", "arguments": {"expr": "6*7"}},
                                 {"name": "get_time", "arguments": {"tz": "UTC"}}]


def test_call_without_arguments_and_without_content():
    out = parse_assistant('<tool_call>\n{"name": "get_time"}\n</tool_call>')
    assert out == {"content": "", "reasoning_content": None, "tool_calls": [{"name": "get_time", "arguments": {}}]}


@pytest.mark.parametrize("bad", [
    '<tool_call>\n{"name": "calc", "arguments": {"expr": }\n</tool_call>',  # bad JSON
    '<tool_call>\n{"arguments": {"expr": "1"}}\n</tool_call>',  # no name
    '<tool_call>\n{"name": 7, "arguments": {}}\n</tool_call>',  # name not a string
    '<tool_call>\n{"name": "calc", "arguments": [1, 2]}\n</tool_call>',  # arguments not an object
    '<tool_call>\n{"name": "calc", "arguments": "{not json"}\n</tool_call>',  # arguments string not JSON
    '<tool_call>\n["calc"]\n</tool_call>',  # not an object
    '<tool_call>\n{"name": "calc", "arguments": {}}',  # never closed
    '<tool_call>\n' + '[' * 5000 + '\n</tool_call>',  # absurdly deep
])
def test_malformed_tool_calls_stay_in_the_content(bad):
    text = "Trying.\n" + bad
    assert parse_assistant(text) == {"content": text, "reasoning_content": None, "tool_calls": []}


def test_a_bad_call_does_not_hide_a_good_one():
    text = "x<tool_call>oops\n" + CALL
    out = parse_assistant(text)
    assert out["content"] == "x<tool_call>oops"
    assert out["tool_calls"] == [{"name": "calculator", "arguments": {"expr": "6*7"}}]


def test_parse_inverts_the_chat_template():
    """Render an assistant turn with the template, parse what the model would emit, get it back."""
    calls = [{"name": "calculator", "arguments": {"expr": "6*7", "note": "中文 😀"}},
             {"name": "get_time", "arguments": {}}]
    for message in [{"role": "assistant", "content": "Let me check.\n", "reasoning_content": "Two tools.",
                     "tool_calls": calls},
                    {"role": "assistant", "content": "", "tool_calls": calls[:1]},
                    {"role": "assistant", "content": "Plain answer.", "reasoning_content": "line 1\n\nline 2"}]:
        text, spans = render_chat_text([{"role": "user", "content": "q"}, message])
        (start, end), = spans
        generated = text[start:end]  # what the model produces, ending with <|im_end|>
        out = parse_assistant(generated)
        assert out["content"] == message["content"]
        assert out["reasoning_content"] == message.get("reasoning_content")
        assert out["tool_calls"] == message.get("tool_calls", [])
        # the same with a prompt that opened <think>: the model only writes the tail
        tail = generated[len("<think>\n"):]
        assert parse_assistant(tail, open_thinking=True) == out
        assert parse_assistant(tail) == out


def test_never_raises_on_garbage():
    rng = random.Random(0)
    pieces = TAGS + ["{", "}", '"name"', ":", "\n", "a", "中", '{"name": "f"}', "<", "</", "\\"]
    for _ in range(500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        for mode in (None, True, False):
            out = parse_assistant(text, open_thinking=mode)
            assert set(out) == {"content", "reasoning_content", "tool_calls"}
            assert isinstance(out["content"], str)


# ---------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------

STREAM_SAMPLES = [
    ("<think>\nI need the calculator.\n\n</think>\n\nLet me compute 😀.\n" + CALL + "\n" + CALL + "<|im_end|>", False),
    ("The sum is 2.\n\nDone <not a tag> </thinking <tool_callx>", False),
    ("Short thought\n</think>\n\n答案是 42。\n<tool_call>\n{broken json}\n</tool_call>\nafter", True),
    ("<think>\n\n</think>\n\n" + CALL, False),
    ("Still thinking <tool_call> inside reasoning\n\n", True),
    ("x\n<tool_call>\n{\"name\": \"f\"}\n</tool_call>\n\ntrailing\n", False),
    ("ends with a partial tag <tool_ca", False),
]


def run_stream(chunks, open_thinking):
    parser = StreamParser(open_thinking=open_thinking)
    fed = [parser.feed(chunk) for chunk in chunks]
    return parser, fed, parser.flush()


def collect(events, kind):
    return [value for k, value in events if k == kind]


def check_stream(text, chunks, open_thinking):
    parser, fed, tail = run_stream(chunks, open_thinking)
    events = [e for batch in fed for e in batch] + tail
    final = parser.finish()
    assert final == parse_assistant(text, open_thinking=open_thinking)
    assert "".join(collect(events, "content")) == final["content"]
    assert "".join(collect(events, "reasoning")) == (final["reasoning_content"] or "")
    assert collect(events, "tool_call") == final["tool_calls"]
    # No partial tag is ever emitted: a tag that became structure (</think>, a valid call) cannot
    # have leaked into a delta, or the deltas would not add up to the final message (checked
    # above); and a tag that stays text is never split between two deltas (checked here).
    for kind in ("content", "reasoning"):
        deltas = collect(events, kind)
        joined, cuts, pos = "".join(deltas), set(), 0
        for d in deltas[:-1]:
            pos += len(d)
            cuts.add(pos)
        for tag in TAGS:
            start = joined.find(tag)
            while start >= 0:
                assert not any(start < c < start + len(tag) for c in cuts)
                start = joined.find(tag, start + 1)
    return final


@pytest.mark.parametrize("text,open_thinking", STREAM_SAMPLES)
def test_stream_split_at_every_position(text, open_thinking):
    expected = parse_assistant(text, open_thinking=open_thinking)
    for i in range(len(text) + 1):
        assert check_stream(text, [text[:i], text[i:]], open_thinking) == expected
    assert check_stream(text, list(text), open_thinking) == expected  # one character at a time


def test_stream_random_chunkings_of_random_texts():
    rng = random.Random(1)
    pieces = TAGS + ["\n", "\n\n", "a", "中", "😀", "<", "</", "<thi", "<tool_c", "<|im_", " ",
                     '{"name": "f", "arguments": {"x": 1}}', '{"name": 1}', "{bad"]
    for _ in range(1500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        chunks, i = [], 0
        while i < len(text):
            j = i + rng.randint(1, 6)
            chunks.append(text[i:j])
            i = j
        check_stream(text, chunks, open_thinking=rng.random() < 0.5)


def test_stream_emits_early_and_in_order():
    parser = StreamParser(open_thinking=True)
    assert parser.feed("Let me think") == [("reasoning", "Let me think")]
    assert parser.feed(" more\n</thi") == [("reasoning", " more")]  # newline and partial tag held
    assert parser.feed("nk>\n\nThe answer") == [("content", "The answer")]
    assert parser.feed(" is 42.\n<tool_call>\n{\"name\": \"f\"") == [("content", " is 42.")]
    assert parser.feed("}\n</tool_call>") == [("tool_call", {"name": "f", "arguments": {}})]
    assert parser.feed("<|im_end|>ignored") == []
    assert parser.flush() == []
    assert parser.finish() == {"content": "The answer is 42.", "reasoning_content": "Let me think more",
                               "tool_calls": [{"name": "f", "arguments": {}}]}


def test_stream_releases_held_text_at_the_end():
    parser = StreamParser()
    assert parser.feed("a <tool_call> b") == [("content", "a ")]
    assert parser.flush() == [("content", "<tool_call> b")]
    assert json.dumps(parser.finish()) == json.dumps({"content": "a <tool_call> b", "reasoning_content": None,
                                                      "tool_calls": []})
