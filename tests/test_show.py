"""`minimind data show` and `minimind tokenizer show`: what they mark is what training uses."""

import json
import re

import numpy as np
import pytest

from minimind.cli import main
from minimind.data.loader import SFTLoader
from minimind.data.prepare import load_prepared, prepare
from minimind.data.show import mask_runs, readable_piece, record_views, token_bytes, tokenize_rows
from minimind.train.pretrain import IGNORE

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "The capital of France is Paris."}],
    [{"role": "system", "content": "You are MiniMind."},
     {"role": "user", "content": "你是谁？"},
     {"role": "assistant", "content": "我是MiniMind。", "reasoning_content": "用户问我的身份。"},
     {"role": "user", "content": "What is 12 + 30?"},
     {"role": "assistant", "content": "12 + 30 = 42."}],
    [{"role": "system", "content": "You can call tools.",
      "tools": json.dumps([{"type": "function", "function": {"name": "calculator", "parameters": {}}}])},
     {"role": "user", "content": "What is 17 times 23?"},
     {"role": "assistant", "content": "",
      "tool_calls": json.dumps([{"name": "calculator", "arguments": {"expression": "17*23"}}])},
     {"role": "tool", "content": "391"},
     {"role": "assistant", "content": "17 × 23 = 391."}],
]


@pytest.fixture
def sft_file(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"conversations": c}, ensure_ascii=False) + "\n" for c in CONVERSATIONS),
                    encoding="utf-8")
    return path


def _brackets(text: str) -> list[str]:
    body = text.split("\n", 1)[1]  # the first line is the legend, which names the brackets
    return re.findall(r"\[\[(.*?)\]\]", body, re.S)


def test_data_show_masks_equal_the_prepared_sft_masks(sft_file, tok, tokenizer_dir, tmp_path, capsys):
    prepared = tmp_path / "prepared"
    prepare(sft_file, tok, prepared, kind="sft", progress=False)
    data = load_prepared(prepared, tok)
    for line, conv in enumerate(CONVERSATIONS, 1):
        shown = main(["data", "show", str(sft_file), "--line", str(line), "--tokenizer", str(tokenizer_dir),
                      "--color", "never"])
        assert shown == 0
        out = capsys.readouterr().out
        (view,) = record_views({"conversations": conv}, tok, "test")
        ids, mask = data.docs.ids(line - 1).tolist(), data.docs.loss_mask(line - 1).tolist()
        assert (view.ids, view.mask) == (ids, mask)  # the very ids and mask SFT trains on
        # the bracketed text is the assistant's turns (with <|im_end|>), nothing the user wrote
        marked = _brackets(out)
        assistants = [m for m in conv if m["role"] == "assistant"]
        assert len(marked) == len(assistants)
        for m, text in zip(assistants, marked):
            assert text.endswith("<|im_end|>") and m["content"] in text
        user_text = " ".join(m["content"] for m in conv if m["role"] in ("user", "system"))
        assert not any(u in "".join(marked) for u in user_text.split("?") if len(u) > 3)
        assert f"{len(ids)} tokens, {sum(mask)} trained" in out
        # the same record read back from the prepared directory
        assert main(["data", "show", str(prepared), "--line", str(line), "--tokenizer", str(tokenizer_dir),
                     "--color", "never"]) == 0
        assert _brackets(capsys.readouterr().out) == marked


def test_marked_tokens_are_the_sft_loader_labels(sft_file, tok, tmp_path):
    prepared = tmp_path / "prepared"
    prepare(sft_file, tok, prepared, kind="sft", progress=False)
    data = load_prepared(prepared, tok)
    loader = SFTLoader(data, batch_size=1, max_seq_len=512, seed=0, pack=False)
    labelled = set()
    for _ in range(len(loader)):
        for labels in next(loader)["labels"]:  # (T,) per row
            labelled.add(tuple(labels[labels != IGNORE].tolist()))
    assert len(labelled) == len(CONVERSATIONS)
    for line, conv in enumerate(CONVERSATIONS, 1):
        (view,) = record_views({"conversations": conv}, tok, "test")
        trained = tuple(t for t, m in zip(view.ids, view.mask) if m)
        assert trained in labelled


def test_data_show_cut_colour_and_token_table(sft_file, tok, tokenizer_dir, capsys):
    tok_arg = ["--tokenizer", str(tokenizer_dir)]
    (view,) = record_views({"conversations": CONVERSATIONS[0]}, tok, "x")
    first = view.mask.index(1)
    limit = first + 2  # keeps max_seq_len + 1 tokens: the first three trained ones
    assert main(["data", "show", str(sft_file), "--line", "1", "--color", "always", "--max-seq-len", str(limit)]
                + tok_arg) == 0
    out = capsys.readouterr().out
    assert "\033[32;1m" in out and "[[" not in out  # colour instead of brackets
    assert f"cut to {limit + 1}: 3 trained tokens remain" in out
    assert f"--- cut: the {len(view.ids) - limit - 1} tokens below" in out
    assert main(["data", "show", str(sft_file), "--line", "1", "--tokens", "--color", "never"] + tok_arg) == 0
    rows = [ln.split() for ln in capsys.readouterr().out.splitlines() if re.match(r"\s+\d+\s+\d+\s", ln)]
    assert rows[0][2:] == ["-", "<|im_start|>"]  # the template's header is not trained,
    assert rows[-2][2:] == ["yes", "<|im_end|>"]  # the assistant's closing token is,
    assert rows[-1][2:] == ["-", "\\n"]  # the newline after it is not


def test_data_show_pretrain_dpo_and_rl_records(tok):
    (pre,) = record_views({"text": "Paris is the capital of France."}, tok, "x")
    assert all(pre.mask) and pre.ids[-1] == tok.eot_id
    chosen, rejected = record_views({"chosen": CONVERSATIONS[0], "rejected": [
        CONVERSATIONS[0][0], {"role": "assistant", "content": "Rome."}]}, tok, "x")
    assert (chosen.title, rejected.title) == ("chosen", "rejected") and sum(chosen.mask) > sum(rejected.mask)
    (rl,) = record_views({"conversations": [CONVERSATIONS[0][0]], "gt": "Paris"}, tok, "x")
    assert not any(rl.mask) and tok.decode(rl.ids).endswith("</think>\n\n")
    assert mask_runs([5, 6, 7, 8], [0, 1, 1, 0]) == [(False, [5]), (True, [6, 7]), (False, [8])]


@pytest.mark.parametrize("argv, message", [
    (["--line", "9"], "has only 3 lines"),
    (["--line", "0"], "numbered from 1"),
    (["--tokenizer", "/nonexistent"], "no tokenizer.json"),
])
def test_data_show_bad_input_is_one_line(sft_file, tokenizer_dir, capsys, argv, message):
    args = ["data", "show", str(sft_file), "--tokenizer", str(tokenizer_dir)] + argv
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_data_show_broken_line_names_file_and_line(tmp_path, tokenizer_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"conversations": [{"role": "bot", "content": "x"}]}\n')
    assert main(["data", "show", str(bad), "--line", "2", "--tokenizer", str(tokenizer_dir)]) == 2
    assert f"{bad}:2" in capsys.readouterr().err


def test_tokenizer_show_chinese_and_byte_pieces(tok, tokenizer_dir, capsys):
    text = "The capital of 法国 is Paris. 首都是巴黎 ☃"
    rows = tokenize_rows(tok, text)
    assert [r["id"] for r in rows] == tok.encode(text)
    # every token's bytes, joined, are the UTF-8 text: nothing garbled, nothing lost
    assert b"".join(bytes.fromhex(r["bytes"]) for r in rows) == text.encode("utf-8")
    whole = [r["text"] for r in rows if r["whole"]]
    assert any(re.search(r"[\u4e00-\u9fff]", t) for t in whole)  # Chinese readable, not mojibake
    assert not any(c in "".join(whole) for c in "ĠæĪ")
    parts = [r for r in rows if not r["whole"]]  # a character split over byte tokens (the snowman)
    assert [r["of"] for r in parts if r["of"] == "☃"] == ["☃"] * 3
    for r in parts:  # each part names the one character whose bytes it holds
        assert len(r["of"]) == 1 and bytes.fromhex(r["bytes"]) in r["of"].encode("utf-8")
    assert main(["tokenizer", "show", text, "--tokenizer", str(tokenizer_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{len(text)} characters, {len(text.encode())} bytes -> {len(rows)} tokens" in out
    assert "of the 3 bytes of '☃'" in out
    assert any(r["whole"] and r["text"].startswith(" ") for r in rows) and "␣" in out  # spaces visible


def test_token_bytes_of_special_and_byte_tokens(tok):
    assert token_bytes(tok, tok.im_start_id) == b"<|im_start|>"
    space = tok.encode(" ")[0]
    assert token_bytes(tok, space) == b" " and readable_piece(tok, space) == "␣"
    all_bytes = {token_bytes(tok, i) for i in range(16, tok.vocab_size)}
    assert all(bytes([b]) in all_bytes for b in range(256))  # the byte alphabet maps all 256 bytes
    assert np.all([len(token_bytes(tok, i)) >= 1 for i in range(tok.vocab_size)])
