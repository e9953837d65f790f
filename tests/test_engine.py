"""The training engine: schedule, resume equivalence, DDP equivalence, checkpoints, metrics."""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from minimind.checkpoint import resolve_checkpoint
from minimind.cli import main
from minimind.train.engine import TrainConfig, lr_factor

SHAPE = ["--preset", "nano", "--hidden-size", "64", "--num-layers", "2", "--num-heads", "4", "--num-kv-heads", "2"]
OPT = ["--batch-size", "4", "--max-seq-len", "64", "--dtype", "fp32", "--log-every", "1", "--no-progress",
       "--warmup", "2", "--lr", "3e-3"]
TINY = SHAPE + OPT


def free_port() -> int:
    """A free TCP port for torchrun: other test runs on this machine may use torchrun too."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(run_dir):
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def pretrain(corpus, tokenizer_dir, out, *extra):
    argv = ["pretrain", "--data", str(corpus / "pretrain.jsonl"), "--tokenizer", str(tokenizer_dir),
            "--out", str(out), *TINY, *extra]
    assert main(argv) == 0


def test_lr_schedules():
    cfg = TrainConfig(steps=100, warmup=10, min_lr_ratio=0.1, schedule="cosine")
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(55, cfg) == pytest.approx(0.55)  # half way down the cosine: (1 + 0.1) / 2
    assert lr_factor(100, cfg) == pytest.approx(0.1)
    wsd = TrainConfig(steps=100, warmup=10, min_lr_ratio=0.0, schedule="wsd", decay_frac=0.2)
    assert lr_factor(50, wsd) == 1.0 and lr_factor(79, wsd) == 1.0
    assert lr_factor(90, wsd) == pytest.approx(0.5)


def test_pretrain_learns_and_writes_checkpoint(corpus, tokenizer_dir, tmp_path):
    pretrain(corpus, tokenizer_dir, tmp_path / "run", "--steps", "30", "--eval-data",
             str(corpus / "eval" / "heldout_pretrain.jsonl"))
    ls = losses(tmp_path / "run")
    assert ls[30] < ls[1] - 1.0  # it learns
    ckpt = tmp_path / "run" / "checkpoint" / "step-0000030"
    assert (tmp_path / "run" / "checkpoint" / "latest").read_text() == "step-0000030\n"
    assert resolve_checkpoint(tmp_path / "run") == ckpt
    assert {"config.json", "model.safetensors", "tokenizer.json", "train_state.pt", "run.json"} <= {
        p.name for p in ckpt.iterdir()}
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert any("eval_loss" in r for r in rows)
    assert all(r["tokens_per_s"] > 0 for r in rows if "loss" in r)
    assert not [p for p in (tmp_path / "run").iterdir() if ".tmp-" in p.name]  # no half-written leftovers


def test_resume_gives_identical_losses(corpus, tokenizer_dir, tmp_path):
    pretrain(corpus, tokenizer_dir, tmp_path / "straight", "--steps", "12")
    pretrain(corpus, tokenizer_dir, tmp_path / "split", "--steps", "12", "--stop-after", "6")
    assert max(losses(tmp_path / "split")) == 6
    pretrain(corpus, tokenizer_dir, tmp_path / "split", "--steps", "12", "--resume")
    a, b = losses(tmp_path / "straight"), losses(tmp_path / "split")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert [a[s] for s in range(1, 13)] == [b[s] for s in range(1, 13)]  # exactly equal


def test_resume_without_checkpoint_starts_fresh_and_says_so(corpus, tokenizer_dir, tmp_path, capsys):
    argv = ["pretrain", "--data", str(corpus / "pretrain.jsonl"), "--tokenizer", str(tokenizer_dir),
            "--out", str(tmp_path / "none"), *TINY, "--steps", "2", "--resume"]
    assert main(argv) == 0  # a scheduler can always pass --resume
    out = capsys.readouterr().out
    assert "no checkpoint in" in out and "starting fresh" in out
    assert sorted(losses(tmp_path / "none")) == [1, 2]
    assert main(argv[:-1] + ["--resume-from", str(tmp_path / "nowhere")]) == 2  # a named one must exist
    assert "no resumable checkpoint" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process_with_double_accumulation(corpus, tokenizer_dir, tmp_path):
    pretrain(corpus, tokenizer_dir, tmp_path / "single", "--steps", "5", "--grad-accum", "2")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "minimind.cli", "pretrain", "--data", str(corpus / "pretrain.jsonl"),
           "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "ddp"), *TINY, "--steps", "5",
           "--device", "cpu"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-5, (s, a[s], b[s])


def test_sft_from_pretrained_inherits_tokenizer_and_config(corpus, tokenizer_dir, tmp_path):
    pretrain(corpus, tokenizer_dir, tmp_path / "pt", "--steps", "3")
    argv = ["sft", "--data", str(corpus / "sft.jsonl"), "--init", str(tmp_path / "pt"),
            "--out", str(tmp_path / "sft"), *OPT, "--max-seq-len", "128", "--batch-size", "4",
            "--steps", "20"]
    assert main(argv) == 0
    pt, sft = resolve_checkpoint(tmp_path / "pt"), resolve_checkpoint(tmp_path / "sft")
    assert json.loads((pt / "config.json").read_text()) == json.loads((sft / "config.json").read_text())
    assert (sft / "tokenizer.json").read_bytes() == (pt / "tokenizer.json").read_bytes()
    ls = losses(tmp_path / "sft")
    assert sum(ls[s] for s in (18, 19, 20)) < sum(ls[s] for s in (1, 2, 3)) - 0.3  # it learns


def test_bad_flags_exit_2(corpus, tokenizer_dir, tmp_path, capsys):
    base = ["pretrain", "--data", str(corpus / "pretrain.jsonl"), "--tokenizer", str(tokenizer_dir),
            "--out", str(tmp_path / "x"), "--no-progress", "--steps", "1"]
    assert main(base + ["--preset", "gigantic"]) == 2
    assert "unknown preset 'gigantic'" in capsys.readouterr().err
    assert main(base + ["--dtype", "fp16", "--device", "cpu"]) == 2
    assert "fp16 on CPU" in capsys.readouterr().err
    assert main(["pretrain", "--data", str(tmp_path / "missing.jsonl"), "--tokenizer", str(tokenizer_dir),
                 "--out", str(tmp_path / "y")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_resume_from_an_earlier_checkpoint_rewrites_metrics_once(corpus, tokenizer_dir, tmp_path, capsys):
    run = tmp_path / "run"
    pretrain(corpus, tokenizer_dir, run, "--steps", "8", "--save-every", "2", "--keep-checkpoints", "0")
    first = losses(run)
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == [
        "latest", "step-0000002", "step-0000004", "step-0000006", "step-0000008"]
    pretrain(corpus, tokenizer_dir, run, "--steps", "8", "--save-every", "2", "--keep-checkpoints", "0",
             "--resume-from", str(run / "checkpoint" / "step-0000004"))
    assert "resumed from" not in capsys.readouterr().out  # --no-progress: quiet
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, 9))  # steps 5..8 once, not twice
    assert losses(run) == first  # and exactly the same losses
    # the steps after the resumed one were an abandoned future: replaced by the new ones
    assert (run / "checkpoint" / "latest").read_text() == "step-0000008\n"


def test_resume_reports_changed_flags_and_uses_the_new_lr(corpus, tokenizer_dir, tmp_path, capsys):
    run = tmp_path / "run"
    pretrain(corpus, tokenizer_dir, run, "--steps", "6", "--stop-after", "3")
    capsys.readouterr()
    pretrain(corpus, tokenizer_dir, run, "--steps", "6", "--resume", "--lr", "1e-3")
    err = capsys.readouterr().err
    assert "warning: resume: --lr is 0.001 now, 0.003 in" in err and "used from step 3 on" in err
    rows = {r["step"]: r for r in map(json.loads, open(run / "metrics.jsonl")) if "lr" in r}
    assert rows[3]["lr"] == pytest.approx(3e-3) and rows[4]["lr"] == pytest.approx(1e-3)  # wsd: stable until 4


def test_resuming_a_finished_run_does_nothing_and_reports(corpus, tokenizer_dir, tmp_path, capsys):
    run = tmp_path / "run"
    pretrain(corpus, tokenizer_dir, run, "--steps", "3")
    before = (run / "checkpoint" / "step-0000003" / "model.safetensors").read_bytes()
    capsys.readouterr()
    pretrain(corpus, tokenizer_dir, run, "--steps", "3", "--resume")
    out = capsys.readouterr().out
    assert "done: loss" in out and "step-0000003" in out
    assert (run / "checkpoint" / "step-0000003" / "model.safetensors").read_bytes() == before
    assert sorted(losses(run)) == [1, 2, 3]


@contextlib.contextmanager
def read_only(folder):
    """Make `folder` refuse new files: permission bits for a normal user, the immutable flag for root
    (root ignores permission bits). Skips the test where neither is possible."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root without chattr/CAP_LINUX_IMMUTABLE: cannot make a folder read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_read_only_data_folder_prepares_into_the_user_cache(corpus, tokenizer_dir, tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(corpus / "pretrain.jsonl", data / "pretrain.jsonl")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MINIMIND_CACHE", raising=False)
    argv = ["pretrain", "--data", str(data / "pretrain.jsonl"), "--tokenizer", str(tokenizer_dir),
            "--out", str(tmp_path / "run"), *TINY, "--steps", "2"]
    with read_only(data):
        with pytest.raises(OSError):
            (data / "probe").write_text("x")  # it really is read-only
        assert main(argv) == 0
        assert main(argv + ["--cache-dir", str(tmp_path / "mine")]) == 0
    assert sorted(p.name for p in data.iterdir()) == ["pretrain.jsonl"]
    assert "is not writable; prepared data goes to" in capsys.readouterr().out
    for cache in (tmp_path / "cache" / "minimind" / "prepared", tmp_path / "mine"):
        assert [(p / "meta.json").is_file() for p in cache.glob("pretrain-pretrain-*")] == [True]
    assert sorted(losses(tmp_path / "run")) == [1, 2]


def test_moe_runs_log_per_expert_load(corpus, tokenizer_dir, tmp_path):
    pretrain(corpus, tokenizer_dir, tmp_path / "moe", "--steps", "3", "--num-experts", "4",
             "--experts-per-tok", "1")
    rows = [json.loads(line) for line in open(tmp_path / "moe" / "metrics.jsonl") if '"loss"' in line]
    assert len(rows) == 3
    for r in rows:
        load = r["expert_load"]  # (layers, experts): share of the step's routed tokens
        assert len(load) == 2 and all(len(layer) == 4 for layer in load)
        assert all(abs(sum(layer) - 1) < 1e-3 for layer in load)
        assert r["expert_imbalance"] == pytest.approx(max(max(layer) for layer in load) * 4, rel=1e-3)


def test_expert_load_sums_micro_steps():
    import torch

    from minimind.config import ModelConfig
    from minimind.model import MiniMindForCausalLM
    from minimind.runtime import Dist
    from minimind.train.metrics import ExpertLoad

    model = MiniMindForCausalLM(ModelConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                            num_key_value_heads=2, num_experts=4, num_experts_per_tok=2))
    load = ExpertLoad(model)
    layers = load.layers
    for counts in ([3, 1, 0, 0], [1, 1, 2, 0]):  # two micro-batches
        for m in layers:
            m.expert_counts = counts
        load.collect()
    m = load.metrics(Dist(), torch.device("cpu"))
    assert m["expert_load"] == [[0.5, 0.25, 0.25, 0.0]] * 2 and m["expert_imbalance"] == 2.0
    assert load.metrics(Dist(), torch.device("cpu")) == {}  # reset after reading
    with torch.no_grad():
        model(torch.randint(0, 50, (2, 5)))
    assert [sum(m.expert_counts) for m in layers] == [2 * 5 * 2] * 2  # tokens x top-k, per layer


def test_resume_with_another_micro_batch_keeps_the_data_position(corpus, tokenizer_dir, tmp_path, capsys):
    """A run resumed on a machine where --batch-size auto picks 2 x 2 instead of 4 x 1 sees the same rows."""
    pretrain(corpus, tokenizer_dir, tmp_path / "a", "--steps", "6")
    pretrain(corpus, tokenizer_dir, tmp_path / "b", "--steps", "6", "--stop-after", "3")
    capsys.readouterr()
    pretrain(corpus, tokenizer_dir, tmp_path / "b", "--steps", "6", "--resume", "--batch-size", "2",
             "--grad-accum", "2")
    err = capsys.readouterr().err
    assert "--batch-size is 2 now, 4 in" in err and "--grad-accum is 2 now, 1 in" in err
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(a) == sorted(b) == list(range(1, 7))
    assert all(b[s] == pytest.approx(a[s], rel=1e-4) for s in a)  # the same rows: equal up to rounding
