"""Training by time budget: durations, the step plan on a fake clock (ends within the budget, to
a step), the schedule over the plan, exact resume, and the --time-budget flag."""

import json

import pytest

from minimind.cli import main
from minimind.data.loader import make_loader
from minimind.errors import UserError
from minimind.train.budget import WARMUP_MAX_FRAC, parse_duration
from minimind.train.engine import TrainConfig, Trainer, lr_factor
from minimind.train.pretrain import LanguageModeling
from tests.conftest import tiny_model
from tests.test_engine import TINY, losses


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class Timed(LanguageModeling):
    """The pretraining loss, costing `dt` fake seconds per batch (training and evaluation alike)."""

    def __init__(self, clock: FakeClock, dt: float):
        self.clock, self.dt = clock, dt

    def loss(self, model, batch):
        self.clock.t += self.dt
        return super().loss(model, batch)


def budget_run(tok, data, out, budget, clock, dt=1.0, eval_data=None, **kw):
    cfg = TrainConfig(out_dir=str(out), steps=0, time_budget=budget, batch_size=2, lr=1e-3, warmup=50,
                      schedule="wsd", dtype="fp32", device="cpu", progress=False, log_every=1, **kw)
    loader = make_loader(data, 2, 32, seed=0)
    evals = make_loader(eval_data, 2, 32, seed=0) if eval_data is not None else None
    return Trainer(tiny_model(tok), Timed(clock, dt), loader, tok, cfg, eval_loader=evals,
                   clock=clock, started_at=clock())


def test_durations():
    assert [parse_duration(x) for x in ("90s", "6m", "1h", "15", "1.5m", "1h30m", " 2 m ", 40)] == \
        [90, 360, 3600, 15, 90, 5400, 120, 40]
    for bad in ("", "6x", "m", "-5", "0", "5 minutes", "6m!"):
        with pytest.raises(UserError, match="--time-budget"):
            parse_duration(bad)


def test_ends_within_the_budget_to_a_step(tok, pretrain_data, tmp_path):
    clock = FakeClock()
    t = budget_run(tok, pretrain_data, tmp_path / "run", 40.0, clock)
    t.fit()
    # 1 fake second per step, 0.5 s (plus the weights' bytes) reserved for the final save
    assert 39.0 <= clock.t <= 40.0 and t.step == 39
    rows = {r["step"]: r for r in map(json.loads, open(tmp_path / "run" / "metrics.jsonl"))}
    warmup = int(WARMUP_MAX_FRAC * 39 + 0.999)  # --warmup 50 is capped to a quarter of the plan
    assert rows[warmup + 1]["lr"] == pytest.approx(1e-3)  # peak reached, stable phase
    assert rows[31]["lr"] == pytest.approx(1e-3) and rows[39]["lr"] < 0.25e-3  # wsd: the decay ends with the plan


def test_evaluations_are_paid_for(tok, pretrain_data, tmp_path):
    clock = FakeClock()
    t = budget_run(tok, pretrain_data, tmp_path / "run", 60.0, clock, eval_data=pretrain_data,
                   eval_every=10, eval_batches=2)
    m = t.fit()
    assert "eval_loss" in m
    assert 60.0 - 3.0 <= clock.t <= 60.0  # within a step + an evaluation (2 s) of the budget
    assert 45 <= t.step <= 50  # the evaluations' time (2 s every 10 steps) is not spent on steps


def test_resume_is_exact(tok, pretrain_data, tmp_path):
    straight = budget_run(tok, pretrain_data, tmp_path / "a", 30.0, FakeClock())
    straight.fit()
    split = budget_run(tok, pretrain_data, tmp_path / "b", 30.0, FakeClock(), stop_after=12)
    split.fit()
    assert split.step == 12
    resumed = budget_run(tok, pretrain_data, tmp_path / "b", 30.0, FakeClock(1000.0), resume=True)
    resumed.fit()
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert sorted(a) == sorted(b) == list(range(1, straight.step + 1))
    assert [a[s] for s in a] == [b[s] for s in a]  # exactly equal, the plan included


def test_warmup_is_capped_only_under_a_budget():
    cfg = TrainConfig(steps=20, warmup=50, time_budget=10.0, schedule="constant")
    assert lr_factor(4, cfg) == 1.0  # ceil(0.25 * 20) = 5 warmup steps
    assert lr_factor(4, TrainConfig(steps=20, warmup=50, schedule="constant")) == pytest.approx(5 / 50)


def test_cli_time_budget_ends_before_its_step_cap(corpus, tokenizer_dir, tmp_path):
    argv = ["pretrain", "--data", str(corpus / "pretrain.jsonl"), "--tokenizer", str(tokenizer_dir),
            "--out", str(tmp_path / "run"), *TINY, "--time-budget", "3s", "--steps", "100000"]
    assert main(argv) == 0
    steps = losses(tmp_path / "run")
    assert 1 <= max(steps) < 100000
    run = json.loads((tmp_path / "run" / "checkpoint" / "latest").parent.joinpath(
        (tmp_path / "run" / "checkpoint" / "latest").read_text().strip(), "run.json").read_text())
    assert run["train"]["time_budget"] == 3.0
    assert main(argv[:-4] + ["--time-budget", "soon"]) == 2


def test_a_budget_smaller_than_one_step_still_ends_with_a_checkpoint(tok, pretrain_data, tmp_path, capsys):
    clock = FakeClock()
    t = budget_run(tok, pretrain_data, tmp_path / "run", 3.0, clock, dt=5.0, eval_data=pretrain_data,
                   eval_batches=2)
    m = t.fit()
    assert t.step == 1 and clock.t == 5.0  # one step (nothing is known before it), no late evaluation
    assert "eval_loss" not in m and "no time left for the final evaluation" in capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoint" / "latest").read_text() == "step-0000001\n"
