"""The main job end to end: `minimind demo --quick` (tiny corpus and budget), checked stage by stage."""

import json

import pytest

from minimind.checkpoint import resolve_checkpoint
from minimind.cli import main


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    for stage in ("corpus", "tokenizer", "pretrain", "sft", "eval", "samples"):
        assert f"[{stage}: " in text
    assert "minimind chat" in text  # how to continue
    summary = json.loads((out / "demo_summary.json").read_text())
    assert set(summary["accuracy"]) >= {"fact", "add", "identity", "tool"}
    assert all(0.0 <= a <= 1.0 for a in summary["accuracy"].values())
    assert summary["total_s"] < 600
    for run in ("pretrain", "sft"):
        ckpt = resolve_checkpoint(out / run)  # the run's latest step directory
        assert (ckpt / "model.safetensors").is_file() and (ckpt / "config.json").is_file()
        rows = [json.loads(line) for line in open(out / run / "metrics.jsonl")]
        losses = [r["loss"] for r in rows if "loss" in r]
        assert losses[-1] < losses[0]  # both stages learn
    # the held-out eval file was written with one reply per record
    res = json.loads((out / "eval_heldout.json").read_text())
    assert len(res["samples"]) == sum(v["total"] for v in res["families"].values())
