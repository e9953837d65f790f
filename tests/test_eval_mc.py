"""Multiple choice: prompts, lm-eval's tokenization split, acc vs acc_norm, k-shot, aggregation, the CLI."""

import json
import math

import pytest
import torch

from minimind.errors import UserError
from minimind.eval.loglik import ScoringModel, continuation_row, score_rows
from minimind.eval.mc import _judge, aggregate, encode_pair, evaluate_mc, fewshot_context, make_prompt
from minimind.eval.readers import Benchmark, Item, load_benchmark
from tests.test_eval_loglik import run_cli, tiny_model


@pytest.fixture(scope="module")
def sm(tok):
    return ScoringModel(tiny_model(tok.vocab_size, seed=2), tok, torch.device("cpu"), torch.float32)


def item(q="What is the capital of France?", options=("Berlin", "Paris", "Rome", "Madrid"), gold=1,
         subject="capital", where="f:1"):
    return Item(q, list(options), gold, subject, where)


def test_prompts_as_lm_eval_writes_them():
    it = item()
    assert make_prompt(it, "arc", "cloze").query == "Question: What is the capital of France?\nAnswer:"
    assert make_prompt(it, "openbookqa", "cloze").query == "What is the capital of France?"
    p = make_prompt(item(q=" 水的化学式是？ ", options=["H2O", "CO2", "O2", "NaCl"], gold=0), "ceval", "letters")
    assert p.query == "水的化学式是？\nA. H2O\nB. CO2\nC. O2\nD. NaCl\n答案：" and p.choices == list("ABCD")
    assert make_prompt(it, "mcq", "letters").query.endswith("D. Madrid\nAnswer:")
    shots = [make_prompt(item(q="Capital of Italy?", options=["Rome", "Oslo"], gold=0), "arc", "cloze")]
    assert fewshot_context(shots, "Question: Q\nAnswer:") == "Question: Capital of Italy?\nAnswer: Rome\n\nQuestion: Q\nAnswer:"


def test_encode_pair_moves_trailing_space_and_splits_the_whole(tok):
    ctx, cont = encode_pair(tok, "Question: 2 + 2 =\nAnswer: ", "4")
    assert ctx == tok.encode("Question: 2 + 2 =\nAnswer:")
    whole = tok.encode("Question: 2 + 2 =\nAnswer: 4")
    assert cont == whole[len(ctx):] and tok.decode(cont) == " 4"


def test_acc_vs_acc_norm_by_hand():
    """acc takes the raw sum (short choices win); acc_norm divides by characters, acc_bytes by bytes."""
    p = make_prompt(item(options=["no", "a much longer answer", "长答案在这里"], gold=1), "mcq", "cloze")
    # log-likelihoods: -4.0 (2 chars), -10.0 (20 chars), -5.5 (6 chars = 18 bytes)
    r = _judge("s", item(), p, [-4.0, -10.0, -5.5], 0)
    assert r["pred"] == 0 and r["acc"] == 0.0  # -4 is the largest sum
    assert r["acc_norm"] == 1.0  # per char: -2.0, -0.5, -0.917
    assert r["acc_bytes"] == 0.0  # per byte: -2.0, -0.5, -0.306: the Chinese choice wins
    assert r["chance"] == pytest.approx(1 / 3)


def test_aggregate_is_size_weighted_with_stderr():
    items = [{"subject": "a", "acc": 1.0, "acc_norm": 1.0, "acc_bytes": 1.0, "chance": 0.25}] * 3 + \
            [{"subject": "b", "acc": 0.0, "acc_norm": 1.0, "acc_bytes": 0.0, "chance": 0.5}]
    res = aggregate(items)
    o = res["overall"]
    assert o["acc"] == 0.75 and o["macro_acc"] == 0.5 and o["chance"] == pytest.approx(0.3125)
    assert o["acc_stderr"] == pytest.approx(math.sqrt(0.75 * 0.25 / 3))
    assert res["subjects"]["a"]["n"] == 3 and res["subjects"]["b"]["acc_norm"] == 1.0


def test_evaluate_mc_scores_every_choice(sm):
    """Each question's log-likelihoods are the scorer's, and the prediction is their argmax."""
    qs = [item(where="f:1"), item(q="2 + 2 =", options=["3", "4", "22"], gold=1, subject="add", where="f:2")]
    bench = Benchmark("mcq", {"capital": [qs[0]], "add": [qs[1]]})
    res = evaluate_mc(sm, bench, batch_size=3)
    for q, got in zip(qs, sorted(res["items"], key=lambda r: r["where"])):
        ctx = make_prompt(q, "mcq", "cloze").query
        rows = [continuation_row(*encode_pair(sm.tok, ctx, " " + o), sm.max_positions) for o in q.options]
        want = [s.total for s in score_rows(sm, rows)]
        assert got["loglik"] == pytest.approx(want, abs=1e-5)
        assert got["pred"] == max(range(len(want)), key=want.__getitem__)
    assert res["overall"]["n"] == 2 and set(res["subjects"]) == {"capital", "add"}
    assert res["overall"]["chance"] == pytest.approx((1 / 4 + 1 / 3) / 2)


def test_kshot_uses_first_dev_items_but_never_the_question_itself(sm, monkeypatch):
    from minimind.eval import mc

    seen = []
    real = mc.fewshot_context
    monkeypatch.setattr(mc, "fewshot_context", lambda shots, q: seen.append([s.query for s in shots]) or real(shots, q))
    pool = [item(q=f"Q{i}", where=f"f:{i}") for i in range(1, 5)]
    bench = Benchmark("arc", {"capital": pool[:2]}, dev={"capital": pool})
    res = evaluate_mc(sm, bench, shots=2)
    assert seen == [["Question: Q2\nAnswer:", "Question: Q3\nAnswer:"],
                    ["Question: Q1\nAnswer:", "Question: Q3\nAnswer:"]]
    assert [it["shots"] for it in res["items"]] == [2, 2]
    with pytest.raises(UserError, match="--shots 2: no few-shot examples found"):
        evaluate_mc(sm, Benchmark("arc", {"capital": pool}), shots=2)


def test_chat_scores_choices_as_the_reply(sm):
    """--chat: the question as a user turn, the choice scored as the start of the assistant's reply.
    As in lm-eval, the template's trailing "\n\n" (after </think>) moves into the continuation."""
    from minimind.tokenizer import render_chat_text

    q = item()
    res = evaluate_mc(sm, Benchmark("mcq", {"capital": [q]}), chat=True)
    text = render_chat_text([{"role": "user", "content": "Question: What is the capital of France?\nAnswer:"}],
                            add_generation_prompt=True)[0]
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ctx = sm.tok.encode(text[:-2])
    want = []
    for o in q.options:
        cont = sm.tok.encode(text + o)[len(ctx):]
        assert sm.tok.decode(cont) == "\n\n" + o
        want.append(score_rows(sm, [continuation_row(ctx, cont, sm.max_positions)])[0].total)
    assert res["chat"] and res["items"][0]["loglik"] == pytest.approx(want, abs=1e-5)


def test_subjects_and_limit(sm):
    bench = Benchmark("mcq", {"a": [item(where=f"a:{i}") for i in range(5)], "b": [item(where="b:1")]})
    res = evaluate_mc(sm, bench, limit=2, subjects=["a"])
    assert res["overall"]["n"] == 2 and list(res["subjects"]) == ["a"]
    with pytest.raises(UserError, match=r"--subjects: \['c'\] not in this benchmark"):
        evaluate_mc(sm, bench, subjects=["c"])


def test_letters_style_scores_letters(sm, tmp_path):
    root = tmp_path / "cmmlu"
    (root / "test").mkdir(parents=True)
    (root / "test" / "chem.csv").write_text(",Question,A,B,C,D,Answer\n0,水的化学式是？,H2O,CO2,O2,NaCl,A\n",
                                            encoding="utf-8")
    res = evaluate_mc(sm, load_benchmark(root))
    assert res["style"] == "letters" and res["items"][0]["acc"] == res["items"][0]["acc_norm"]  # 1-char choices
    assert evaluate_mc(sm, load_benchmark(root), style="cloze")["style"] == "cloze"


def test_cli_mc_on_builtin_mcq(tok, corpus, tmp_path, capsys):
    from minimind.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "ckpt", tiny_model(tok.vocab_size), tok)
    out = tmp_path / "mc.json"
    code, stdout, err = run_cli(capsys, "eval", "mc", ckpt, "--data", corpus / "eval" / "heldout_mcq.jsonl",
                                "--shots", "1", "--dev", corpus / "mcq.jsonl", "--json", out, "--no-progress",
                                "--limit", "4")
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["shots"] == 1 and res["overall"]["chance"] == 0.25
    assert res["overall"]["n"] == sum(v["n"] for v in res["subjects"].values())
    assert all(v["n"] <= 4 for v in res["subjects"].values()) and res["overall"]["n"] > 20
    assert "(chance 25.0)" in stdout and "overall" in stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a", "b"], "answer": "Z"}\n')
    code, _, err = run_cli(capsys, "eval", "mc", ckpt, "--data", bad)
    assert code == 2 and "bad.jsonl:1: answer 'Z' is not one of A, B" in err
