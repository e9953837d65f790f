"""Log-likelihood scoring, perplexity and bits per byte against hand computations on a tiny model."""

import json
import math
import pytest
import torch

from minimind.checkpoint import save_checkpoint
from minimind.config import ModelConfig
from minimind.eval.loglik import (Row, ScoringModel, continuation_row, load_scoring_model, score_rows,
                                  token_byte_lengths, training_length)
from minimind.eval.ppl import evaluate_ppl, windows
from minimind.model import MiniMindForCausalLM


def tiny_model(vocab_size: int, seed: int = 0, max_pos: int = 256):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=max_pos)
    return MiniMindForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def sm(tok):
    return ScoringModel(tiny_model(tok.vocab_size), tok, torch.device("cpu"), torch.float32)


def hand_logprobs(model, ids: list[int]) -> list[float]:
    """log p(ids[t] | ids[:t]) for t >= 1, from the model's ordinary forward and the softmax formula."""
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]])).logits[0].double()  # (T, V)
    out = []
    for t, y in enumerate(ids[1:]):
        z = logits[t]
        out.append(float(z[y] - math.log(sum(math.exp(v) for v in z.tolist()))))
    return out


def test_scores_equal_hand_computation(sm):
    """Rows of different lengths batched together (right padding) score as each would alone."""
    g = torch.Generator().manual_seed(1)
    rows = []
    for n in (5, 17, 9, 2, 30):
        ids = torch.randint(16, sm.tok.vocab_size, (n,), generator=g).tolist()
        scored = [False] + [bool(i % 3) for i in range(1, n)]
        scored[-1] = True
        rows.append(Row(ids, scored))
    got = score_rows(sm, rows, batch_size=3)  # 2 batches, padding in both
    for row, res in zip(rows, got):
        hand = hand_logprobs(sm.model, row.ids)
        want = [lp for lp, s in zip(hand, row.scored[1:]) if s]
        assert res.logprobs.tolist() == pytest.approx(want, abs=1e-4)
        assert res.total == pytest.approx(sum(want), abs=1e-4)
        assert -10 < res.total / len(want) < -3  # ~ log(1/800) for a random model: real numbers


def test_greedy_is_argmax_continuation(sm):
    ctx = sm.tok.encode("The capital of France is")
    ids = list(ctx)
    with torch.no_grad():
        for _ in range(3):  # extend greedily
            ids.append(int(sm.model(torch.tensor([ids])).logits[0, -1].argmax()))
    greedy_row = continuation_row(ctx, ids[len(ctx):], sm.max_positions)
    other = ids[len(ctx):-1] + [(ids[-1] + 1) % sm.tok.vocab_size]
    a, b = score_rows(sm, [greedy_row, continuation_row(ctx, other, sm.max_positions)])
    assert a.greedy and not b.greedy
    assert a.logprobs[:2].tolist() == pytest.approx(b.logprobs[:2].tolist(), abs=1e-5)
    assert a.logprobs[2] > b.logprobs[2]


def test_continuation_row_cuts_context_from_the_left():
    row = continuation_row(list(range(10)), [20, 21, 22], max_positions=8)
    assert row.ids == [4, 5, 6, 7, 8, 9, 20, 21, 22]  # 8 inputs + the last target
    assert row.scored == [False] * 6 + [True] * 3


def test_too_long_row_is_a_user_error(sm):
    from minimind.errors import UserError

    with pytest.raises(UserError, match="exceed the model's 256 positions"):
        score_rows(sm, [Row(list(range(300)), [False] + [True] * 299)])


@pytest.mark.parametrize("text", ["Hello, world!", "法国的首都是巴黎。", "emoji 🎉 and tags <think>\n</think>",
                                  "mixed 混合 text\n\n<|im_end|>"])
def test_token_bytes_sum_to_utf8_length(tok, text):
    nbytes = token_byte_lengths(tok)
    assert sum(nbytes[i] for i in tok.encode(text)) == len(text.encode("utf-8"))


@pytest.mark.parametrize("n,length,stride", [(50, 16, 16), (50, 16, 5), (10, 16, 16), (33, 8, 1)])
def test_windows_score_each_token_once_with_enough_context(n, length, stride):
    ids = list(range(100, 100 + n))
    rows = windows(ids, [False] + [True] * (n - 1), length, stride)
    targets = []
    for r in rows:
        assert len(r.ids) <= length + 1
        first = r.scored.index(True)
        # every target sees the whole window before it: at least length - stride tokens (or all there are)
        assert first >= min(length - stride + 1, r.ids[first] - 100)
        targets += [t for t, s in zip(r.ids, r.scored) if s]
    assert targets == ids[1:]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


TEXTS = ["The capital of France is Paris. Paris is a large city.",
         "法国的首都是巴黎。巴黎是一座大城市。",
         "27 + 58 = 85. " * 12]


def test_ppl_and_bits_per_byte_by_hand(sm, tmp_path):
    f = write_jsonl(tmp_path / "text.jsonl", [{"text": t} for t in TEXTS])
    res = evaluate_ppl(sm, f, seq_len=64)
    tok = sm.tok
    n_tokens = sum(len(tok.encode(t)) for t in TEXTS)
    n_bytes = sum(len(t.encode("utf-8")) for t in TEXTS)
    assert res["tokens"] == n_tokens and res["bytes"] == n_bytes and res["docs"] == 3
    # each document after end-of-text, scored in windows of 64 (the third one needs two)
    nll = 0.0
    for t in TEXTS:
        ids = [tok.eot_id] + tok.encode(t)
        for a in range(1, len(ids), 64):
            b = min(a + 64, len(ids))
            start = max(0, b - 1 - 64)
            nll -= sum(hand_logprobs(sm.model, ids[start:b])[a - 1 - start:])
    assert res["loss"] == pytest.approx(nll / n_tokens, rel=1e-5)
    assert res["ppl"] == pytest.approx(math.exp(nll / n_tokens), rel=1e-5)
    assert res["bpb"] == pytest.approx(res["loss"] * n_tokens / (n_bytes * math.log(2)), rel=1e-9)
    assert res["windows"] == 2 + math.ceil(len(tok.encode(TEXTS[2])) / 64)


def test_ppl_on_conversations_scores_assistant_tokens(sm, tmp_path):
    from minimind.tokenizer import render_chat

    convs = [[{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4."}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "你好"},
              {"role": "assistant", "content": "你好！"}]]
    f = write_jsonl(tmp_path / "chat.jsonl", [{"conversations": c} for c in convs])
    res = evaluate_ppl(sm, f, seq_len=128)
    masks = [render_chat(sm.tok, c)[1] for c in convs]
    assert res["kind"] == "chat" and res["tokens"] == sum(sum(m) for m in masks)
    # the scored bytes are the replies plus "<think>\n\n</think>\n\n" and <|im_end|> per reply
    frame = len("<think>\n\n</think>\n\n<|im_end|>")
    assert res["bytes"] == sum(len(c[-1]["content"].encode()) + frame for c in convs)


def test_ppl_limit_and_stride(sm, tmp_path):
    f = write_jsonl(tmp_path / "text.jsonl", [{"text": t} for t in TEXTS])
    one = evaluate_ppl(sm, f, seq_len=64, limit=1)
    assert one["docs"] == 1 and one["tokens"] == len(sm.tok.encode(TEXTS[0]))
    slid = evaluate_ppl(sm, f, seq_len=16, stride=4)
    assert slid["tokens"] == evaluate_ppl(sm, f, seq_len=16)["tokens"]


@pytest.fixture(scope="module")
def ckpt(tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model"
    save_checkpoint(path, tiny_model(tok.vocab_size), tok,
                    run_config={"stage": "pretrain", "argv": ["pretrain", "--max-seq-len", "96"]})
    return path


def test_training_length_from_run_json(ckpt, tmp_path, tok):
    assert training_length(ckpt) == 96
    bare = tmp_path / "bare"
    save_checkpoint(bare, tiny_model(tok.vocab_size), tok, train_state={"data": {"seq_len": 64}})
    assert training_length(bare) == 64
    save_checkpoint(bare, tiny_model(tok.vocab_size), tok)
    assert training_length(bare) is None


def test_load_scoring_model_keeps_fp32_weights(ckpt):
    sm = load_scoring_model(ckpt, "cpu", "fp32")
    assert sm.model.lm_head.weight.dtype == torch.float32 and sm.dtype == torch.float32
    assert not any(p.requires_grad for p in sm.model.parameters())


def run_cli(capsys, *argv):
    """`minimind ARGV` in this process -> (exit code, stdout, stderr)."""
    from minimind.cli import main

    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_ppl_json_and_bad_file(ckpt, tmp_path, capsys):
    f = write_jsonl(tmp_path / "text.jsonl", [{"text": t} for t in TEXTS])
    out = tmp_path / "ppl.json"
    code, stdout, err = run_cli(capsys, "eval", "ppl", ckpt, "--data", f, "--json", out, "--no-progress")
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["seq_len"] == 96 and f"ppl {res['ppl']:.3f}" in stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 5}\n')
    code, _, err = run_cli(capsys, "eval", "ppl", ckpt, "--data", bad, "--no-progress")
    assert code == 2 and "bad.jsonl:2: 'text' must be a string" in err
    dpo = write_jsonl(tmp_path / "dpo.jsonl", [{"chosen": [], "rejected": []}])
    code, _, err = run_cli(capsys, "eval", "ppl", ckpt, "--data", dpo, "--no-progress")
    assert code == 2 and "ppl reads text" in err


def test_cli_bad_flag_values(ckpt, capsys):
    with pytest.raises(SystemExit) as e:
        run_cli(capsys, "eval", "ppl", ckpt, "--data", "x.jsonl", "--seq-len", "0")
    assert e.value.code == 2 and "expected a positive integer, got 0" in capsys.readouterr().err
    code, _, err = run_cli(capsys, "eval", "ppl", ckpt, "--data", "x.jsonl", "--seq-len", "100000")
    assert code == 2 and "--seq-len 100000 exceeds the model's 256 positions" in err
