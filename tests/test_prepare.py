"""prepare -> load_prepared gives exactly the tokens of direct tokenization; re-runs are
no-ops; failures leave nothing behind; damaged directories are refused."""

import json
import random

import numpy as np
import pytest

import minimind.data.prepare as prep
from minimind.data.prepare import load_prepared, prepare
from minimind.errors import UserError
from minimind.tokenizer import render_chat_batch, train_tokenizer

WORDS = ("the cat sat on a mat while planets orbit the sun and water boils at one hundred degrees "
         "paris is the capital of france seven times eight is fifty six a story begins here").split()


def _text(rng, lo, hi):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _convs(rng, n):
    out = []
    for i in range(n):
        msgs = [{"role": "system", "content": "you are small"}] if i % 3 == 0 else []
        for _ in range(rng.randint(1, 2)):
            msgs += [{"role": "user", "content": _text(rng, 1, 12)},
                     {"role": "assistant", "content": _text(rng, 1, 25)}]
        out.append(msgs)
    return out


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    rng = random.Random(0)
    corpus = _write_jsonl(d / "corpus.jsonl", [{"text": _text(rng, 5, 40)} for _ in range(200)])
    return train_tokenizer([corpus], d / "tokenizer", vocab_size=400)


@pytest.fixture
def texts():
    rng = random.Random(1)
    return [_text(rng, 0, 60) for _ in range(57)]


def _files(d):
    return {p.relative_to(d): p.stat().st_mtime_ns for p in d.rglob("*") if p.is_file()}


def test_pretrain_tokens_are_direct_encoding_plus_eot(tmp_path, tok, texts):
    src = _write_jsonl(tmp_path / "pre.jsonl", [{"text": t} for t in texts])
    info = prepare(src, tok, tmp_path / "out", progress=False)
    assert (info.kind, info.n_records, info.skipped, info.up_to_date) == ("pretrain", 57, 0, False)
    data = load_prepared(tmp_path / "out", tokenizer=tok)
    expected = [tok.encode(t) + [tok.eot_id] for t in texts]
    assert data.docs.tokens.dtype == np.uint16  # vocab 400 < 65536
    assert [data.docs.ids(i).tolist() for i in range(57)] == expected
    assert data.docs.tokens.tolist() == sum(expected, [])
    assert info.n_tokens == data.meta["n_tokens"] == sum(map(len, expected))
    assert data.docs.mask is None
    assert (tmp_path / "out" / "tokens.bin").stat().st_size == 2 * info.n_tokens


def test_sft_ids_and_mask_equal_chat_rendering(tmp_path, tok):
    convs = _convs(random.Random(2), 40)
    src = _write_jsonl(tmp_path / "sft.jsonl", [{"conversations": c} for c in convs])
    info = prepare(src, tok, tmp_path / "out", progress=False)  # kind detected from the first record
    assert info.kind == "sft"
    data = load_prepared(tmp_path / "out")
    for i, (ids, mask) in enumerate(render_chat_batch(tok, convs)):
        assert data.docs.ids(i).tolist() == list(ids)
        assert data.docs.loss_mask(i).tolist() == list(mask)
    assert 0 < data.docs.mask.sum() < len(data.docs.mask)  # some tokens trained, prompts not


def test_tools_and_reasoning_records_prepare_like_the_chat_template(tmp_path, tok):
    conv = [
        {"role": "system", "content": "use tools", "tools": json.dumps([{"name": "calc", "parameters": {}}])},
        {"role": "user", "content": "what is 6 times 7"},
        {"role": "assistant", "content": None, "reasoning_content": "use the calculator",
         "tool_calls": json.dumps([{"name": "calc", "arguments": {"expr": "6*7"}}])},
        {"role": "tool", "content": "42"},
        {"role": "assistant", "content": "it is 42"},
    ]
    src = _write_jsonl(tmp_path / "tools.jsonl", [{"conversations": conv}])
    prepare(src, tok, tmp_path / "out", kind="sft", progress=False)
    data = load_prepared(tmp_path / "out")
    [(ids, mask)] = render_chat_batch(tok, [json.loads(src.read_text())["conversations"]])
    assert data.docs.ids(0).tolist() == list(ids) and data.docs.loss_mask(0).tolist() == list(mask)
    trained = tok.decode([t for t, m in zip(ids, mask) if m])
    assert "use the calculator" in trained and "it is 42" in trained and "6 times 7" not in trained


def test_a_record_the_template_refuses_is_reported_with_its_line(tmp_path, tok, monkeypatch):
    """Safety net: should rendering refuse a record that validation let through, the error
    still names file:line (and no output is left)."""
    convs = _convs(random.Random(5), 6)
    convs[4][-1]["content"] = "REFUSED"
    src = _write_jsonl(tmp_path / "sft.jsonl", [{"conversations": c} for c in convs])

    def picky(tok_, conversations, **kw):
        if any(m["content"] == "REFUSED" for c in conversations for m in c):
            raise UserError("messages[1]: not acceptable")
        return render_chat_batch(tok_, conversations, **kw)

    monkeypatch.setattr(prep, "render_chat_batch", picky)
    with pytest.raises(UserError, match=r"sft\.jsonl:5: messages\[1\]: not acceptable"):
        prepare(src, tok, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_dpo_chosen_and_rejected_are_aligned(tmp_path, tok):
    rng = random.Random(3)
    pairs = []
    for i in range(25):
        q = {"role": "user", "content": f"question {i} " + _text(rng, 1, 8)}
        pairs.append({"chosen": [q, {"role": "assistant", "content": _text(rng, 1, 20)}],
                      "rejected": [q, {"role": "assistant", "content": _text(rng, 1, 5)}]})
    src = _write_jsonl(tmp_path / "dpo.jsonl", pairs)
    info = prepare(src, tok, tmp_path / "out", kind="dpo", progress=False)
    data = load_prepared(tmp_path / "out")
    assert len(data.chosen) == len(data.rejected) == info.n_records == 25
    for side in ("chosen", "rejected"):
        for i, (ids, mask) in enumerate(render_chat_batch(tok, [p[side] for p in pairs])):
            assert data.parts[side].ids(i).tolist() == list(ids)
            assert data.parts[side].loss_mask(i).tolist() == list(mask)
    assert info.n_tokens == len(data.chosen.tokens) + len(data.rejected.tokens)


def test_rerun_is_a_noop_and_a_changed_input_reprepares(tmp_path, tok, texts):
    src = _write_jsonl(tmp_path / "pre.jsonl", [{"text": t} for t in texts])
    out = tmp_path / "out"
    prepare(src, tok, out, progress=False)
    before = _files(out)
    again = prepare(src, tok, out, progress=False)
    assert again.up_to_date and again.n_records == 57
    assert _files(out) == before  # not a single file rewritten

    (out / "tokens.bin").write_bytes((out / "tokens.bin").read_bytes()[:-2])  # damaged: rebuilt
    assert not prepare(src, tok, out, progress=False).up_to_date
    assert load_prepared(out).docs.tokens.tolist() == sum((tok.encode(t) + [tok.eot_id] for t in texts), [])

    with open(src, "a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "one more document"}) + "\n")
    changed = prepare(src, tok, out, progress=False)
    assert not changed.up_to_date and changed.n_records == 58
    assert load_prepared(out).docs.ids(57).tolist() == tok.encode("one more document") + [tok.eot_id]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "pre.jsonl"]  # no temp or old dirs left


def test_other_options_reprepare(tmp_path, tok):
    convs = _convs(random.Random(4), 30)
    src = _write_jsonl(tmp_path / "sft.jsonl", [{"conversations": c} for c in convs])
    out = tmp_path / "out"
    full = prepare(src, tok, out, progress=False)
    cut = prepare(src, tok, out, max_seq_len=20, progress=False)
    assert not cut.up_to_date and cut.meta["max_seq_len"] == 20
    lengths = load_prepared(out).docs.lengths()
    assert lengths.max() == 21
    assert cut.meta["truncated"] == sum(len(ids) > 21 for ids, _ in render_chat_batch(tok, convs)) > 0
    assert cut.n_tokens < full.n_tokens
    longest = max(len(ids) for ids, _ in render_chat_batch(tok, convs))
    assert cut.meta["longest"] == full.meta["longest"] == longest > 21
    whole = prepare(src, tok, out, max_seq_len=longest - 1, progress=False)  # what the note advises
    assert whole.meta["truncated"] == 0 and whole.n_tokens == full.n_tokens


def test_bad_record_in_error_mode_leaves_nothing(tmp_path, tok, texts):
    lines = [json.dumps({"text": t}) for t in texts]
    lines.insert(40, '{"text": broken')
    src = tmp_path / "pre.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"pre\.jsonl:41: broken JSON"):
        prepare(src, tok, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pre.jsonl"]


def test_failed_rerun_keeps_the_previous_output(tmp_path, tok, texts):
    src = _write_jsonl(tmp_path / "pre.jsonl", [{"text": t} for t in texts])
    out = tmp_path / "out"
    prepare(src, tok, out, progress=False)
    with open(src, "a", encoding="utf-8") as f:
        f.write('{"txt": "wrong field"}\n')
    with pytest.raises(UserError, match=r"pre\.jsonl:58: missing field 'text'"):
        prepare(src, tok, out, progress=False)
    assert len(load_prepared(out)) == 57


def test_skip_mode_counts_and_records_it(tmp_path, tok, texts):
    lines = [json.dumps({"text": t}) for t in texts[:10]]
    lines[3] = '{"text": 5}'
    lines[7] = "not json"
    src = tmp_path / "pre.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    info = prepare(src, tok, tmp_path / "out", on_bad_record="skip", progress=False)
    assert (info.n_records, info.skipped) == (8, 2)
    assert info.meta["skipped_examples"][0].endswith("pre.jsonl:4: 'text' must be a string, got int")
    kept = [t for i, t in enumerate(texts[:10]) if i not in (3, 7)]
    assert load_prepared(tmp_path / "out").docs.tokens.tolist() == sum((tok.encode(t) + [tok.eot_id] for t in kept), [])


def test_chunks_stream_with_one_batch_call_each(tmp_path, tok, texts, monkeypatch):
    """Small chunks give the same bytes as one big chunk, and each chunk is one encode_batch call."""
    src = _write_jsonl(tmp_path / "pre.jsonl", [{"text": t} for t in texts])
    prepare(src, tok, tmp_path / "big", progress=False)

    class Counting:
        def __init__(self, inner):
            self.inner, self.calls = inner, []

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def encode_batch(self, batch):
            self.calls.append(len(batch))
            return self.inner.encode_batch(batch)

    counting = Counting(tok)
    monkeypatch.setattr(prep, "CHUNK_LINES", 10)
    prepare(src, counting, tmp_path / "small", progress=False)
    assert counting.calls == [10, 10, 10, 10, 10, 7]
    for name in ("tokens.bin", "offsets.npy"):
        assert (tmp_path / "small" / name).read_bytes() == (tmp_path / "big" / name).read_bytes()


def test_large_vocab_uses_uint32(tmp_path, tok, texts):
    class BigVocab:
        vocab_size = 70000

        def __getattr__(self, name):
            return getattr(tok, name)

    src = _write_jsonl(tmp_path / "pre.jsonl", [{"text": t} for t in texts])
    info = prepare(src, BigVocab(), tmp_path / "out", progress=False)
    data = load_prepared(tmp_path / "out")
    assert info.meta["dtype"] == "uint32" and data.docs.tokens.dtype == np.uint32
    assert (tmp_path / "out" / "tokens.bin").stat().st_size == 4 * info.n_tokens
    assert data.docs.tokens.tolist() == sum((tok.encode(t) + [tok.eot_id] for t in texts), [])


def test_damaged_or_foreign_directories_are_refused(tmp_path, tok, texts):
    src = _write_jsonl(tmp_path / "pre.jsonl", [{"text": t} for t in texts])
    out = tmp_path / "out"
    prepare(src, tok, out, progress=False)

    other = train_tokenizer([src], tmp_path / "tok2", vocab_size=300)
    with pytest.raises(UserError, match="prepared with a different tokenizer"):
        load_prepared(out, tokenizer=other)

    tokens = (out / "tokens.bin").read_bytes()
    (out / "tokens.bin").write_bytes(tokens[:-2])
    with pytest.raises(UserError, match=r"tokens\.bin has the wrong size"):
        load_prepared(out)
    (out / "tokens.bin").unlink()
    with pytest.raises(UserError, match=r"missing tokens\.bin"):
        load_prepared(out)
    (out / "meta.json").write_text("{not json")
    with pytest.raises(UserError, match=r"meta\.json is corrupt"):
        load_prepared(out)
    with pytest.raises(UserError, match="no prepared dataset here"):
        load_prepared(tmp_path / "nowhere")

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty and holds no prepared dataset"):
        prepare(src, tok, mine, progress=False)
    assert (mine / "notes.txt").read_text() == "keep me"


def test_rl_prompts_are_not_prepared(tmp_path, tok):
    src = _write_jsonl(tmp_path / "rl.jsonl", [{"conversations": [{"role": "user", "content": "1+1"}], "gt": "2"}])
    with pytest.raises(UserError, match="cannot prepare kind 'rl'"):
        prepare(src, tok, tmp_path / "out", progress=False)


def test_rows_with_no_target_left_after_the_cut_are_dropped_and_counted(tmp_path, tok, capsys):
    """A long prompt pushes the whole answer past max_seq_len: nothing to learn, a NaN waiting to
    happen (a batch of such rows has zero targets). Such rows are dropped, counted and reported."""
    rng = random.Random(5)
    long_q = {"role": "user", "content": _text(rng, 80, 80)}
    short = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": _text(rng, 2, 6)}]
             for i in range(6)]
    doomed = [[long_q, {"role": "assistant", "content": f"answer {i}"}] for i in range(3)]
    convs = short[:3] + doomed + short[3:]
    src = _write_jsonl(tmp_path / "sft.jsonl", [{"conversations": c} for c in convs])
    limit = 40
    assert all(len(ids) > limit + 1 and not any(m[1:limit + 1]) for ids, m in render_chat_batch(tok, doomed))
    info = prepare(src, tok, tmp_path / "out", kind="sft", max_seq_len=limit, progress=False)
    err = capsys.readouterr().err
    assert info.n_records == 6 and info.meta["dropped_no_target"] == 3 and info.meta["truncated"] == 3
    assert "3 cut to max_seq_len=40" in err and "3 dropped: no assistant token left" in err
    longest = max(len(ids) for ids, _ in render_chat_batch(tok, convs))
    assert f"(the longest has {longest} tokens: --max-seq-len {longest - 1} keeps every record whole)" in err
    data = load_prepared(tmp_path / "out")
    for i, (ids, mask) in enumerate(render_chat_batch(tok, short)):  # the kept rows, in order, unchanged
        assert data.docs.ids(i).tolist() == list(ids)[:limit + 1]
    assert all(data.docs.loss_mask(i)[1:].any() for i in range(len(data)))
    # a DPO pair goes when either side has nothing left; the two sides stay aligned
    pairs = [{"chosen": c, "rejected": c[:1] + [{"role": "assistant", "content": "no"}]} for c in convs]
    info = prepare(_write_jsonl(tmp_path / "dpo.jsonl", pairs), tok, tmp_path / "dpo", kind="dpo",
                   max_seq_len=limit, progress=False)
    dpo = load_prepared(tmp_path / "dpo")
    assert info.n_records == len(dpo.chosen) == len(dpo.rejected) == 6 and info.meta["dropped_no_target"] == 3
    with pytest.raises(UserError, match="no record has an assistant token within max_seq_len=40"):
        prepare(_write_jsonl(tmp_path / "bad.jsonl", [{"conversations": c} for c in doomed]), tok,
                tmp_path / "bad", kind="sft", max_seq_len=limit, progress=False)
