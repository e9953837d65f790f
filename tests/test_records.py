"""Record validation: every kind of bad line names file:line; skip mode counts exactly."""

import json

import pytest

from minimind.data.records import RecordStats, detect_kind, iter_records
from minimind.errors import UserError


def _write(path, lines):
    """lines: dicts (dumped as JSON), str (written as is) or bytes (written raw)."""
    with open(path, "wb") as f:
        for line in lines:
            if isinstance(line, dict):
                line = json.dumps(line, ensure_ascii=False)
            if isinstance(line, str):
                line = line.encode("utf-8")
            f.write(line + b"\n")
    return path


def _conv(*turns):
    roles = ["user", "assistant"] * len(turns)
    return {"conversations": [{"role": r, "content": c} for r, c in zip(roles, turns)]}


GOOD_SFT = _conv("hi", "hello!")
TOOL_SFT = {
    "conversations": [
        {"role": "system", "content": "you can call tools", "tools": json.dumps([{"name": "calc"}])},
        {"role": "user", "content": "2+3?"},
        {"role": "assistant", "content": None, "tool_calls": json.dumps([{"name": "calc", "arguments": {"e": "2+3"}}])},
        {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "5", "reasoning_content": "the tool said 5"},
    ]
}

# (bad line, words the error must contain)
BAD_SFT = [
    ('{"conversations": [{"role": "user", "content": "x"}', "broken JSON"),
    ({"messages": GOOD_SFT["conversations"]}, "missing field 'conversations'"),
    ({"conversations": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}, "unknown role 'bot'"),
    ({"conversations": []}, "'conversations' is empty"),
    (b'{"conversations": [{"role": "user", "content": "\xff\xfe"}]}', "not valid UTF-8"),
    ({"conversations": [{"role": "user", "content": "q"},
                        {"role": "assistant", "content": "", "tool_calls": "[{\"name\": "}]}, "tool_calls is not valid JSON"),
    ({"conversations": [{"role": "user", "content": "q"}]}, "no assistant turn"),
    ({"conversations": [{"role": "user", "content": 5}, {"role": "assistant", "content": "a"}]}, "'content' must be a string"),
    ({"conversations": [{"role": "system", "content": "s", "tools": "not json"},
                        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "tools is not valid JSON"),
    ('["a", "list"]', "expected a JSON object"),
    ({"conversations": [{"role": "user", "content": "q"},
                        {"role": "assistant", "content": "", "tool_calls": '[{"arguments": {}}]'}]}, "has no function 'name'"),
    ({"conversations": [{"role": "user", "content": "q"},
                        {"role": "assistant", "content": "", "tool_calls": '{"name": "f", "arguments": "[1]"}'}]},
     "arguments must be a JSON object"),
    ({"conversations": [{"role": "system", "content": "s", "tools": '{"name": "f"}'},
                        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "must be a list of tool objects"),
    ({"conversations": [{"role": "user", "content": "q"}, {"role": "system", "content": "s", "tools": "[]"},
                        {"role": "assistant", "content": "a"}]}, "'tools' is only read from the first message"),
    ({"conversations": [{"role": "user", "content": "q", "tool_calls": "[]"},
                        {"role": "assistant", "content": "a"}]}, "'tool_calls' belongs on an assistant message"),
]


@pytest.mark.parametrize("bad,words", BAD_SFT)
def test_each_bad_record_names_file_and_line(tmp_path, bad, words):
    path = _write(tmp_path / "sft.jsonl", [GOOD_SFT, "", GOOD_SFT, bad, GOOD_SFT])
    it = iter_records(path, "sft")
    assert next(it)[0] == 1
    assert next(it)[0] == 3  # the empty line 2 is ignored
    with pytest.raises(UserError) as e:
        next(it)
    msg = str(e.value)
    assert msg.startswith(f"{path}:4: ")
    assert words in msg
    assert "--on-bad-record skip" in msg


def test_skip_mode_counts_exactly_and_yields_the_good(tmp_path):
    lines = []
    for i, (bad, _) in enumerate(BAD_SFT):
        lines.append(_conv(f"question {i}", f"answer {i}"))
        lines.append(bad)
    lines.append(TOOL_SFT)
    path = _write(tmp_path / "mixed.jsonl", lines)
    stats = RecordStats()
    got = list(iter_records(path, "sft", on_bad_record="skip", stats=stats))
    assert [ln for ln, _ in got] == list(range(1, 2 * len(BAD_SFT), 2)) + [2 * len(BAD_SFT) + 1]
    assert [r["conversations"][0]["content"] for _, r in got[:-1]] == [f"question {i}" for i in range(len(BAD_SFT))]
    assert stats.good == len(BAD_SFT) + 1
    assert stats.skipped == len(BAD_SFT)
    assert len(stats.reasons) == 5 and stats.reasons[0].startswith(f"{path}:2: broken JSON")
    assert f"skipped {len(BAD_SFT)} bad records of {2 * len(BAD_SFT) + 1}" in stats.summary()
    assert stats.bytes_read == path.stat().st_size


def test_tool_call_record_is_valid_and_null_content_becomes_empty(tmp_path):
    path = _write(tmp_path / "tools.jsonl", [TOOL_SFT])
    [(_, rec)] = list(iter_records(path, "sft"))
    assert rec["conversations"][2]["content"] == ""
    assert json.loads(rec["conversations"][2]["tool_calls"])[0]["name"] == "calc"


def test_pretrain_dpo_rl_shapes(tmp_path):
    pre = _write(tmp_path / "p.jsonl", [{"text": "a"}, {"text": 3}, {"txt": "b"}])
    stats = RecordStats()
    assert [r["text"] for _, r in iter_records(pre, "pretrain", "skip", stats)] == ["a"]
    assert stats.skipped == 2 and "'text' must be a string" in stats.reasons[0]
    assert "missing field 'text'" in stats.reasons[1]

    good_pair = {"chosen": GOOD_SFT["conversations"], "rejected": _conv("hi", "go away")["conversations"]}
    no_rejected = {"chosen": GOOD_SFT["conversations"]}
    dpo = _write(tmp_path / "d.jsonl", [good_pair, no_rejected])
    with pytest.raises(UserError, match=r"d\.jsonl:2: missing field 'rejected'"):
        list(iter_records(dpo, "dpo"))

    prompt = {"conversations": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": ""}], "gt": "2"}
    rl = _write(tmp_path / "r.jsonl", [prompt, {"conversations": [{"role": "assistant", "content": "x"}]}])
    with pytest.raises(UserError, match=r"r\.jsonl:2: 'conversations' has no user turn"):
        list(iter_records(rl, "rl"))


def test_detect_kind(tmp_path):
    cases = {
        "pretrain": {"text": "hello"},
        "sft": GOOD_SFT,
        "dpo": {"chosen": GOOD_SFT["conversations"], "rejected": GOOD_SFT["conversations"]},
        "rl": {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
    }
    for kind, rec in cases.items():
        assert detect_kind(_write(tmp_path / f"{kind}.jsonl", ["", rec])) == kind
    assert detect_kind(_write(tmp_path / "agent_rl.jsonl", [dict(GOOD_SFT, gt="42")])) == "rl"
    with pytest.raises(UserError, match=r"odd\.jsonl:1: record has none of the fields"):
        detect_kind(_write(tmp_path / "odd.jsonl", [{"foo": 1}]))
    with pytest.raises(UserError, match="file is empty"):
        detect_kind(_write(tmp_path / "empty.jsonl", []))
    with pytest.raises(UserError, match="no such file"):
        detect_kind(tmp_path / "missing.jsonl")


def test_stream_is_lazy(tmp_path):
    """Reading the first record must not parse the rest (a multi-GB file stays on disk)."""
    path = _write(tmp_path / "lazy.jsonl", [GOOD_SFT, "{ broken"])
    it = iter_records(path, "sft")
    assert next(it)[0] == 1  # line 2 is broken but not reached yet
