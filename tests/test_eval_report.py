"""`minimind eval report`: a demo-shaped directory (pretrain/ and sft/ runs, data/) -> one markdown page."""

import json

import pytest

from minimind.checkpoint import save_checkpoint
from minimind.errors import UserError
from minimind.eval.report import find_data, find_stages
from tests.test_eval_loglik import run_cli, tiny_model


@pytest.fixture(scope="module")
def demo_dir(tok, corpus, tmp_path_factory):
    import shutil

    root = tmp_path_factory.mktemp("report") / "demo"
    shutil.copytree(corpus, root / "data")
    for stage, seed in (("pretrain", 0), ("sft", 1)):
        run = root / stage
        save_checkpoint(run / "checkpoint", tiny_model(tok.vocab_size, seed=seed, max_pos=512), tok,
                        train_state={"data": {"seq_len": 48} if stage == "pretrain" else {"max_seq_len": 64}},
                        run_config={"stage": stage})
        rows = [{"step": s, "loss": 7.0 - s / 10, "lr": 1e-3, "tokens_seen": 100 * s} for s in range(1, 11)]
        rows.append({"step": 10, "eval_loss": 6.5})
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_find_stages_orders_by_stage(demo_dir):
    stages = find_stages(demo_dir)
    assert [(s.name, s.stage) for s in stages] == [("pretrain", "pretrain"), ("sft", "sft")]
    assert stages[0].run == demo_dir / "pretrain" and stages[1].ckpt == demo_dir / "sft" / "checkpoint"
    assert [s.name for s in find_stages(demo_dir / "sft")] == ["sft"]
    assert find_stages(demo_dir / "sft" / "checkpoint")[0].run == demo_dir / "sft"
    assert find_data(demo_dir / "sft", None) == demo_dir / "data"
    with pytest.raises(UserError, match="no checkpoint here or one level down"):
        find_stages(demo_dir / "data")


def test_report_page(demo_dir, tmp_path, capsys):
    out = tmp_path / "rep"
    code, _, err = run_cli(capsys, "eval", "report", demo_dir, "--out", out, "--limit", "2", "--no-progress")
    assert code == 0, err
    md = (out / "report.md").read_text(encoding="utf-8")
    rep = json.loads((out / "report.json").read_text())
    for title in ("## Loss curves", "## Perplexity on held-out text", "## Multiple choice",
                  "## Perplexity against context length", "## Copying from the context", "## Held-out tasks",
                  "Sample chats:"):
        assert title in md
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG" and (out / "length.png").is_file()
    s = rep["sections"]
    assert set(s["ppl"]) == {"pretrain", "sft"} and s["ppl"]["pretrain"]["seq_len"] == s["ppl"]["sft"]["seq_len"] == 48
    assert s["length"]["checkpoint"] == "pretrain" and s["length"]["lengths"] == [48, 96, 192, 384]
    assert s["tasks"]["checkpoint"] == "sft" and all(v["total"] == 2 for v in s["tasks"]["families"].values())
    assert s["mc"]["sft"]["overall"]["chance"] == 0.25 and s["curves"]["runs"]["pretrain"]["eval_loss"] == 6.5
    assert set(s["copy"]) == {"pretrain", "sft"} and s["copy"]["sft"]["probes"] == 100
    c = s["copy"]["sft"]
    assert f"| sft | {100 * c['copy_accuracy']:.1f}% | {100 * c['baseline_accuracy']:.1f}% |" in md
    ppl = s["ppl"]["pretrain"]
    assert f"| pretrain | {ppl['loss']:.3f} | {ppl['ppl']:.2f} | {ppl['bpb']:.3f} |" in md


def test_report_skip_and_errors(demo_dir, tmp_path, capsys):
    out = tmp_path / "rep"
    code, _, err = run_cli(capsys, "eval", "report", demo_dir / "pretrain", "--out", out, "--skip", "length,mc,ppl",
                           "--no-progress")
    assert code == 0, err
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "held-out tasks need a chat model" in md and "Not in this report: ppl, mc, length" in md
    code, _, err = run_cli(capsys, "eval", "report", demo_dir, "--skip", "speed")
    assert code == 2 and "--skip speed: choose from curves, ppl, mc, length, copy, tasks" in err
