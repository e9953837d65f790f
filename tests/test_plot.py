"""`minimind plot`: RL runs get reward / KL / held-out panels, several runs overlay into one PNG."""

import json

import pytest

from minimind.cli import main
from minimind.train.plot import panels_for, read_metrics

pytest.importorskip("matplotlib")


def write_run(path, rl: bool):
    path.mkdir()
    rows = [{"step": s, "loss": 2.0 / s, "lr": 1e-3, **({"reward": 0.1 * s, "kl_k3": 0.01 * s} if rl else {})}
            for s in range(1, 5)]
    rows.append({"step": 4, "eval_loss": 0.6, **({"acc/add": 0.5, "acc/fact": 0.3} if rl else {})})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_panels_follow_what_the_runs_logged(tmp_path):
    sft, rl = write_run(tmp_path / "sft", rl=False), write_run(tmp_path / "grpo", rl=True)
    assert panels_for(read_metrics(sft)) == ["loss", "lr"]
    assert panels_for(read_metrics(rl)) == ["loss", "lr", "reward", "kl_k3", "acc/add", "acc/fact"]
    out = tmp_path / "both.png"
    assert main(["plot", str(sft), str(rl), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", str(tmp_path / "missing")]) == 2
