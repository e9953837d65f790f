"""Perplexity against context length with RoPE and YaRN."""

import json
import math

import pytest
import torch

from minimind.checkpoint import save_checkpoint
from minimind.errors import UserError
from minimind.eval.length import curve, default_lengths, evaluate_length, token_stream
from minimind.eval.loglik import Row, ScoringModel, score_rows
from minimind.model import rope_frequencies
from tests.test_eval_loglik import run_cli, tiny_model


@pytest.fixture()
def sm(tok):
    return ScoringModel(tiny_model(tok.vocab_size, max_pos=128), tok, torch.device("cpu"), torch.float32)


def test_default_lengths():
    assert default_lengths(256) == [256, 512, 1024, 2048]
    assert default_lengths(512) == [256, 512, 1024, 2048, 4096]
    assert default_lengths(100) == [100, 200, 400, 800]


def test_token_stream_is_documents_with_end_of_text(tok, corpus):
    path = corpus / "eval" / "heldout_pretrain.jsonl"
    texts = [json.loads(line)["text"] for line in open(path, encoding="utf-8")][:2]
    stream = token_stream(tok, path, 10_000_000)
    first = tok.encode(texts[0]) + [tok.eot_id] + tok.encode(texts[1]) + [tok.eot_id]
    assert stream[:len(first)] == first
    assert len(token_stream(tok, path, 100)) == 101


def test_curve_scores_the_same_tokens_at_every_length(sm, tok, corpus):
    stream = token_stream(tok, corpus / "eval" / "heldout_pretrain.jsonl", 256)
    pts = curve(sm, stream, [32, 64, 128], train_len=48, batch_size=4, scaling=lambda L: None)
    assert [(p["length"], p["windows"], p["tokens"]) for p in pts] == [(32, 8, 256), (64, 4, 256), (128, 2, 256)]
    # by hand at L = 64: windows of 65 tokens, all 64 targets scored; "beyond" = positions 49..64
    rows = [Row(stream[w * 64:w * 64 + 65], [False] + [True] * 64) for w in range(4)]
    res = score_rows(sm, rows)
    assert pts[1]["loss"] == pytest.approx(-sum(r.total for r in res) / 256, rel=1e-6)
    beyond = -sum(float(r.logprobs[48:].sum()) for r in res) / (4 * 16)
    assert pts[1]["loss_beyond"] == pytest.approx(beyond, rel=1e-6)
    assert pts[1]["ppl_beyond"] == pytest.approx(math.exp(beyond), rel=1e-6)
    assert "loss_beyond" not in pts[0] and "position_loss" in pts[2] and "position_loss" not in pts[0]
    assert len(pts[2]["position_loss"]) == 32 and pts[2]["position_loss"][-1]["end"] == 128


def test_yarn_changes_long_windows_and_is_undone_afterwards(sm, corpus):
    cos_before = sm.model.model.rope_cos.clone()
    res = evaluate_length(sm, corpus / "eval" / "heldout_pretrain.jsonl", [32, 256], train_len=32,
                          n_tokens=512, batch_size=4)
    assert res["yarn"] == {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32}
    rope, yarn, dyn = (res["curves"][k] for k in ("rope", "yarn", "yarn_dynamic"))
    assert torch.equal(sm.model.model.rope_cos, cos_before) and sm.model.config.rope_scaling is None
    # by hand: the same windows under each table
    stream = token_stream(sm.tok, corpus / "eval" / "heldout_pretrain.jsonl", 512)
    for L, setting, pts in ((256, None, rope), (256, res["yarn"], yarn), (32, res["yarn"], yarn),
                            (256, res["yarn"], dyn), (32, None, dyn)):
        rows = [Row(stream[w * L:w * L + L + 1], [False] + [True] * L) for w in range(512 // L)]
        sm.model.model.set_rope_scaling(setting, max_positions=256)
        i = [32, 256].index(L)
        assert pts[i]["loss"] == pytest.approx(-sum(r.total for r in score_rows(sm, rows)) / 512, rel=1e-9)
    assert [p["yarn_factor"] for p in dyn] == [1.0, 8.0] and [p["yarn_factor"] for p in yarn] == [8.0, 8.0]
    assert rope[1]["loss"] != yarn[1]["loss"] and dyn[0]["loss"] == rope[0]["loss"]
    # the tables YaRN used: low-frequency pairs interpolated by the factor, the fastest pair kept
    inv, _ = rope_frequencies(sm.model.config.head_dim, sm.model.config.rope_theta, None)
    inv_y, mscale = rope_frequencies(sm.model.config.head_dim, sm.model.config.rope_theta, res["yarn"])
    assert inv_y[0] == inv[0] and inv_y[-1] == pytest.approx(inv[-1] / 8) and mscale == pytest.approx(1 + 0.1 * math.log(8))


def test_too_little_text(sm, tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"text": "short"}\n')
    with pytest.raises(UserError, match=r"only \d+ tokens of text, fewer than the longest length 64"):
        evaluate_length(sm, f, [32, 64], train_len=32)


def test_cli_writes_json_and_png(tok, corpus, tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "ckpt", tiny_model(tok.vocab_size, max_pos=128), tok,
                           train_state={"data": {"seq_len": 32}})
    out = tmp_path / "len"
    data = corpus / "eval" / "heldout_pretrain.jsonl"
    code, stdout, err = run_cli(capsys, "eval", "length", ckpt, "--data", data, "--lengths", "32,64,256",
                                "--tokens", "512", "--out", out, "--no-progress")
    assert code == 0, err
    res = json.loads((out / "length.json").read_text())
    assert res["train_length"] == 32 and res["lengths"] == [32, 64, 256] and res["yarn"]["factor"] == 8
    assert (out / "length.png").read_bytes()[:4] == b"\x89PNG"
    assert "YaRN dynamic" in stdout and "perplexity past position 32" in stdout
    bare = save_checkpoint(tmp_path / "bare", tiny_model(tok.vocab_size), tok)
    code, _, err = run_cli(capsys, "eval", "length", bare, "--data", data)
    assert code == 2 and "pass --train-length" in err
    with pytest.raises(SystemExit) as e:
        run_cli(capsys, "eval", "length", bare, "--data", data, "--lengths", "32,x")
    assert e.value.code == 2 and "expected a positive integer, got 'x'" in capsys.readouterr().err
