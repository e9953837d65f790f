"""Fault injection: a training process killed with SIGKILL at random moments (while it prepares data,
trains, or writes a checkpoint), then resumed with --resume each time, ends with weights identical
to an uninterrupted run's, and every kill leaves a `latest` checkpoint that loads."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minimind.checkpoint import load_checkpoint, resolve_checkpoint
from tests.test_engine import SHAPE

STEPS = 40
ARGS = [*SHAPE, "--batch-size", "2", "--max-seq-len", "32", "--dtype", "fp32", "--device", "cpu", "--lr", "3e-3",
        "--warmup", "2", "--steps", str(STEPS), "--save-every", "1", "--keep-checkpoints", "2", "--log-every", "1",
        "--no-progress"]
ROOT = Path(__file__).resolve().parents[1]


def start(data: Path, tokenizer: Path, out: Path, log) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "minimind.cli", "pretrain", "--data", str(data), "--tokenizer", str(tokenizer),
           "--out", str(out), *ARGS, "--resume"]
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=log)


def logged_step(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    steps = [json.loads(x)["step"] for x in lines if x.endswith("}")]
    return max(steps, default=0)


def temp_dirs(out: Path) -> set[str]:
    """The checkpoint writes' temporary directories (each a fresh random name)."""
    try:
        return {n for n in os.listdir(out / "checkpoint") if n.startswith(".step-") and ".tmp-" in n}
    except OSError:
        return set()


def writing(out: Path, leftovers: set[str]) -> bool:
    """A checkpoint is being written: a temporary directory exists that an earlier, killed process
    did not leave behind (the next save removes those)."""
    return bool(temp_dirs(out) - leftovers)


def kill_when(proc: subprocess.Popen, condition) -> bool:
    """SIGKILL `proc` as soon as condition() holds; False if it finished first."""
    while proc.poll() is None:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.0005)
    return False


def kill_inside_a_write(proc: subprocess.Popen, out: Path, leftovers: set[str]) -> bool:
    """SIGKILL `proc` while it writes a checkpoint; False if it finished first.

    A write can end between seeing it and the kill, so the process is first stopped (SIGSTOP, waited
    for with waitpid(WUNTRACED): it is frozen when that returns), and killed only if the write is
    still unfinished; else it goes on (SIGCONT) to its next save (--save-every 1: one per step)."""
    while proc.poll() is None:
        if writing(out, leftovers):
            proc.send_signal(signal.SIGSTOP)
            _, status = os.waitpid(proc.pid, os.WUNTRACED)
            if not os.WIFSTOPPED(status):  # it exited just before the signal
                proc.returncode = os.waitstatus_to_exitcode(status)
                return False
            if writing(out, leftovers):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.0005)
    return False


def weights(out: Path) -> dict:
    return load_file(str(resolve_checkpoint(out) / "model.safetensors"))


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_gives_identical_weights(corpus, tokenizer_dir, tmp_path):
    for name in ("straight", "killed"):  # each its own data folder: the killed run's first kill may hit prepare
        (tmp_path / name).mkdir()
        shutil.copy(corpus / "pretrain.jsonl", tmp_path / name / "pretrain.jsonl")
    log = open(tmp_path / "log.txt", "w")
    straight = tmp_path / "straight" / "run"
    assert start(tmp_path / "straight" / "pretrain.jsonl", tokenizer_dir, straight, log).wait() == 0

    rng = random.Random(os.getpid())  # other moments on every run of the suite; the outcome never changes
    run, data = tmp_path / "killed" / "run", tmp_path / "killed" / "pretrain.jsonl"
    killed_in_write = 0
    # any moment (startup, data preparation, first steps: by step 3 at the latest, however fast the
    # machine), then a few steps on, then inside a save
    for moment in ["time", "write"] + ["steps", "write"] * 3:
        done, ahead, delay, t0 = logged_step(run), rng.randint(1, 5), rng.uniform(0.2, 3.0), time.monotonic()
        leftovers = temp_dirs(run)
        proc = start(data, tokenizer_dir, run, log)
        if moment == "write":
            killed = kill_inside_a_write(proc, run, leftovers)
        else:
            killed = kill_when(proc, {"time": lambda: time.monotonic() - t0 > delay or logged_step(run) >= 3,
                                      "steps": lambda: logged_step(run) >= done + ahead}[moment])
        if not killed:
            break  # it finished before the moment came
        killed_in_write += writing(run, leftovers)  # the dead process left its temporary directory behind
        if resolve_checkpoint(run) != run:
            load_checkpoint(run)  # `latest` always names a complete checkpoint
    assert killed_in_write >= 1, "no kill landed inside a checkpoint write"
    assert start(data, tokenizer_dir, run, log).wait() == 0
    a, b = weights(straight), weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [{r["step"]: r["loss"] for r in map(json.loads, open(d / "metrics.jsonl")) if "loss" in r}
              for d in (straight, run)]
    assert losses[0] == losses[1] and sorted(losses[0]) == list(range(1, STEPS + 1))
