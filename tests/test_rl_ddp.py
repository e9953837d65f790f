"""DDP for RL: one GRPO step on two gloo processes, each sampling its own shard of the prompts, equals
the single-process step on the union of both shards (the gradients are averaged across ranks with the
token count summed over ranks, rollout.py)."""

import os
import subprocess
import sys

import pytest
import torch

from minimind.checkpoint import load_checkpoint
from tests.test_engine import free_port
from tests.test_rl import prompts, sft  # noqa: F401  (fixtures)
from tests.test_ddp import ROOT


def grpo(argv, procs: int):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    launch = [sys.executable]
    if procs > 1:
        launch += ["-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", str(free_port())]
    r = subprocess.run([*launch, "-m", "tests.rl_ddp_worker", *map(str, argv)], env=env, capture_output=True,
                       text=True, timeout=600)  # a hang fails here
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
def test_one_grpo_step_on_two_ranks_equals_one_process_on_the_union(sft, prompts, tmp_path):  # noqa: F811
    common = ["--init", sft, "--data", prompts, "--rollouts", "1", "--group-size", "4", "--max-new-tokens", "8",
              "--no-dynamic-sampling", "--lr", "1", "--warmup", "0", "--dtype", "fp32", "--device", "cpu",
              "--no-progress"]
    grpo([*common, "--prompts-per-rollout", "2", "--out", tmp_path / "ddp"], procs=2)
    grpo([*common, "--prompts-per-rollout", "4", "--out", tmp_path / "one"], procs=1)
    start = load_checkpoint(sft)[0].state_dict()
    ddp, one = load_checkpoint(tmp_path / "ddp")[0].state_dict(), load_checkpoint(tmp_path / "one")[0].state_dict()
    moved = max((one[k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-3  # the step did something (SGD, lr 1: the weights moved by the clipped gradient)
    assert max((ddp[k] - one[k]).abs().max().item() for k in one) <= 1e-5  # the same gradient
