"""`minimind demo`: the budget split, the end table, and the whole pipeline end to end (`--quick`)."""

import json
import re
from argparse import Namespace
from pathlib import Path

import pytest

from minimind import demo
from minimind.config import PRESETS
from minimind.checkpoint import resolve_checkpoint
from minimind.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"


def test_stage_budget_shares_what_is_left_after_fixed_costs():
    total, reserve = 600.0, demo.AFTER_TRAINING_S
    pre = demo.stage_budget("pretrain", total, spent_s=20.0)
    assert pre == pytest.approx((total - 20 - reserve) * demo.SHARES["pretrain"] / sum(demo.SHARES.values()))
    # pretraining ended on time: SFT gets the rest, and the stages plus fixed costs fill the budget
    sft = demo.stage_budget("sft", total, spent_s=20.0 + pre)
    assert 20 + pre + sft + reserve == pytest.approx(total)
    assert sft / pre == pytest.approx(demo.SHARES["sft"] / demo.SHARES["pretrain"])
    # pretraining overran by 30 s: SFT gives the time back, the end stays on time
    assert demo.stage_budget("sft", total, spent_s=20.0 + pre + 30) == pytest.approx(sft - 30)
    # a budget the fixed costs already use up still trains a little
    assert demo.stage_budget("pretrain", 30.0, spent_s=25.0) == demo.MIN_STAGE_S


def _args(**kw):
    base = dict(quick=False, minutes=10.0, pretrain_steps=None, sft_steps=None)
    return Namespace(**{**base, **kw})


def test_stage_flags_pass_the_budget_and_the_recipe():
    flags = demo._stage_flags("pretrain", demo.RECIPE, _args(), spent_s=15.0)
    assert flags[:2] == ["--time-budget", f"{demo.stage_budget('pretrain', 600.0, 15.0):.0f}"]
    assert flags[2:] == demo.RECIPE["pretrain"] and "--steps" not in flags
    capped = demo._stage_flags("sft", demo.RECIPE, _args(sft_steps=7), spent_s=400.0)
    assert capped[:4] == ["--time-budget", f"{demo.stage_budget('sft', 600.0, 400.0):.0f}", "--steps", "7"]
    quick = demo._stage_flags("sft", demo.QUICK, _args(quick=True), spent_s=0.0)
    assert quick[:2] == ["--steps", str(demo.QUICK["steps"]["sft"])] and "--time-budget" not in quick
    longer = demo._stage_flags("pretrain", demo.RECIPE, _args(minutes=30.0), spent_s=15.0)
    assert float(longer[1]) > 3 * float(flags[1])  # the fixed costs do not grow with the budget


def test_the_model_grows_with_the_budget():
    assert demo.preset_for(10.0) == demo.RECIPE["preset"] == "pico"
    assert demo.preset_for(29.0) == "pico" and demo.preset_for(30.0) == demo.preset_for(60.0) == "nano"
    assert demo.preset_for(30.0, quick=True) == demo.QUICK["preset"]
    assert {demo.RECIPE["preset"], demo.QUICK["preset"], demo.LONG_PRESET} <= set(PRESETS)
    # each budget brings its own plan: nano keeps the pretraining flags its --long row was measured with
    assert demo.plan_for(10.0) is demo.RECIPE and demo.plan_for(30.0) is demo.LONG
    assert demo.plan_for(30.0, quick=True) is demo.QUICK
    assert demo.LONG["pretrain"] != demo.RECIPE["pretrain"] and demo.LONG["sft"] == demo.RECIPE["sft"]
    parser = build_parser()
    for plan in (demo.RECIPE, demo.LONG, demo.QUICK):  # every flag is one the training commands take
        for stage in ("pretrain", "sft"):
            parser.parse_args([stage, "--data", "d.jsonl", "--out", "o"] + plan[stage])


def test_unknown_preset_fails_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # argparse rejects it, as the command line does (exit 2)
        main(["demo", "--preset", "bogus", "--out", str(tmp_path / "d")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--preset" in err and "bogus" in err and "pico" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d").exists()  # nothing was written


def test_bad_minutes_is_a_user_error(tmp_path, capsys):
    assert main(["demo", "--minutes", "0", "--out", str(tmp_path / "d")]) == 2
    assert "--minutes" in capsys.readouterr().err


def test_learned_table_shows_the_readme_numbers_of_the_machine_class():
    acc = {"fact": 0.625, "add": 0.5, "identity": 1.0, "tool": 0.0}
    text = demo.learned_table(acc, "fp32")
    ref = demo.README_RESULTS["fp32"]
    assert ref["label"] in text and "62.5%" in text
    for fam in acc:
        row = next(line for line in text.splitlines() if line.strip().startswith(fam))
        if ref[fam] is not None:
            assert row.rstrip().endswith(f"{ref[fam]:.0%}")
    assert "no README numbers" in demo.learned_table(acc, "mps")
    assert "--quick" in demo.learned_table(acc, "fp32", quick=True)
    # a 30-minute run compares with the README's --long row, another budget says what it is compared with
    long = demo.README_RESULTS_LONG["bf16"]
    text = demo.learned_table(acc, "bf16", minutes=30)
    assert long["label"] in text and f"{long['add']:.0%}" in text and "minute run" not in text
    assert "10-minute run; this one had 20" in demo.learned_table(acc, "bf16", minutes=20)
    assert "no README numbers for a --long run on a mps" in demo.learned_table(acc, "mps", minutes=30)


def test_readme_states_the_numbers_the_demo_compares_against():
    text = README.read_text(encoding="utf-8")
    for ref in [*demo.README_RESULTS.values(), *demo.README_RESULTS_LONG.values()]:
        cls = ref["label"]
        row = next((line for line in text.splitlines() if line.startswith(f"| {ref['label']}")), None)
        assert row, f"README has no demo row for {ref['label']!r}"
        cells = [c.strip() for c in row.strip("|").split("|")]
        for fam in ("fact", "add", "identity"):
            shown = next(c for c in cells if c.startswith(f"{fam} "))
            want = f"{fam} {ref[fam]:.0%}" if ref[fam] is not None else f"{fam} -"  # "-": not measured
            assert shown == want, (cls, fam, shown)


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    for stage in ("corpus", "tokenizer", "pretrain", "sft", "eval", "samples"):
        assert f"[{stage}: " in text
    assert "minimind chat" in text  # how to continue
    assert "What the model learned" in text
    summary = json.loads((out / "demo_summary.json").read_text())
    assert set(summary["accuracy"]) >= {"fact", "add", "identity", "tool"}
    assert all(0.0 <= a <= 1.0 for a in summary["accuracy"].values())
    assert summary["machine_class"] in ("fp32", "bf16", "cuda", "mps")
    # the total is the sum of the stages plus the prints between them (no bound on time: that is
    # the machine's business, and a loaded host takes many times longer)
    assert summary["total_s"] >= sum(summary["times_s"].values())
    for run in ("pretrain", "sft"):
        ckpt = resolve_checkpoint(out / run)  # the run's latest step directory
        assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.json").is_file()
        rows = [json.loads(line) for line in open(out / run / "metrics.jsonl")]
        losses = [r["loss"] for r in rows if "loss" in r]
        assert losses[-1] < losses[0]  # both stages learn
    shape = json.loads((resolve_checkpoint(out / "pretrain") / "config.json").read_text())
    want = PRESETS[demo.QUICK["preset"]]
    assert (shape["hidden_size"], shape["num_hidden_layers"]) == (want["hidden_size"], want["num_hidden_layers"])
    # the held-out eval file was written with one reply per record
    res = json.loads((out / "eval_heldout.json").read_text())
    assert len(res["samples"]) == sum(v["total"] for v in res["families"].values())
    # the table printed at the end holds this run's accuracies
    table = text[text.index("What the model learned"):]
    for fam, acc in summary["accuracy"].items():
        assert re.search(rf"{fam}\s+{acc:.1%}", table), fam


@pytest.mark.slow
def test_budgeted_demo_gives_each_stage_its_share(tmp_path, capsys):
    """A 2-minute demo on a tiny corpus: each training stage runs with the --time-budget that
    stage_budget computes from the time actually spent before it (about 2 minutes on 2 cores)."""
    out = tmp_path / "demo"
    assert main(["demo", "--minutes", "2", "--size", "0.05", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["minutes"] == 2
    t = summary["times_s"]
    before = {"pretrain": t["corpus"] + t["tokenizer"], "sft": t["corpus"] + t["tokenizer"] + t["pretrain"]}
    for run in ("pretrain", "sft"):
        train = json.loads((resolve_checkpoint(out / run) / "run.json").read_text())["train"]
        # the stage's budget as computed from the time spent before it (flags carry whole seconds;
        # the stage timers leave out a few prints)
        assert train["time_budget"] == pytest.approx(demo.stage_budget(run, 120.0, before[run]), abs=1.5)
    assert "What the model learned" in capsys.readouterr().out
