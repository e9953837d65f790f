"""Non-finite steps are skipped without touching weights, optimizer or schedule; runs of them stop
the run naming the last good checkpoint; loss spikes are flagged."""

import json

import pytest
import torch

from minimind.data.loader import make_loader
from minimind.errors import UserError
from minimind.train.engine import TrainConfig, Trainer
from minimind.train.guard import WARMUP, StepGuard
from minimind.train.pretrain import LanguageModeling
from tests.conftest import tiny_model


class InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss whose gradient overflows."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


class Faulty(LanguageModeling):
    """The pretraining loss, made NaN on the calls in `nan_at` and given an inf gradient on `inf_at`."""

    def __init__(self, nan_at=(), inf_at=()):
        self.nan_at, self.inf_at, self.calls = set(nan_at), set(inf_at), 0

    def loss(self, model, batch):
        self.calls += 1
        loss, metrics = super().loss(model, batch)
        if self.calls in self.nan_at:
            loss = loss * float("nan")
        if self.calls in self.inf_at:
            loss = InfGrad.apply(loss)
        return loss, metrics


def trainer(tok, data, tmp_path, objective, **kw):
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), batch_size=2, lr=1e-3, warmup=2, dtype="fp32", device="cpu",
                      progress=False, log_every=1, **kw)
    loader = make_loader(data, cfg.batch_size, 32, seed=0)
    return Trainer(tiny_model(tok), objective, loader, tok, cfg)


def snapshot(t: Trainer) -> dict:
    return {"weights": {k: v.clone() for k, v in t.raw_model.state_dict().items()},
            "moments": {k: {n: v.clone() if isinstance(v, torch.Tensor) else v for n, v in s.items()}
                        for k, s in t.optimizer.state.items()},
            "lr": [g["lr"] for g in t.optimizer.param_groups], "sched": t.scheduler.last_epoch}


def same(a: dict, b: dict) -> bool:
    return (a["lr"] == b["lr"] and a["sched"] == b["sched"]
            and all(torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
            and a["moments"].keys() == b["moments"].keys()
            and all(torch.equal(torch.as_tensor(a["moments"][p][n]), torch.as_tensor(b["moments"][p][n]))
                    for p in a["moments"] for n in a["moments"][p]))


@pytest.mark.parametrize("fault", ["nan_at", "inf_at"])
def test_a_non_finite_step_changes_nothing(tok, pretrain_data, tmp_path, fault):
    t = trainer(tok, pretrain_data, tmp_path, Faulty(**{fault: [3]}), steps=10)
    it = iter(t.train_loader)
    for _ in range(2):  # two good steps: AdamW has moments, the schedule has moved
        assert "skipped" not in t.train_step(it)
    before = snapshot(t)
    m = t.train_step(it)  # the third call is the faulty one
    assert m["skipped"]
    assert same(before, snapshot(t))
    assert all(p.grad is None for p in t.raw_model.parameters())  # no gradient left over for the next step
    assert "skipped" not in t.train_step(it)  # the next batch trains normally
    assert not same(before, snapshot(t))


def test_run_skips_counts_and_logs(tok, pretrain_data, tmp_path):
    t = trainer(tok, pretrain_data, tmp_path, Faulty(nan_at=[3], inf_at=[5]), steps=6)
    m = t.fit()
    assert t.step == 6 and t.scheduler.last_epoch == 6  # 6 applied steps, 2 batches more consumed
    assert t.objective.calls == 8 and m["skipped_steps"] == 2
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    skipped = [r for r in rows if "skipped" in r]
    assert [(r["step"], r["skipped"]) for r in skipped] == [(3, "non-finite loss"), (4, "non-finite gradient norm")]
    assert sorted(r["step"] for r in rows if "loss" in r) == [1, 2, 3, 4, 5, 6]
    assert all(torch.isfinite(p).all() for p in t.raw_model.parameters())


def test_too_many_bad_steps_in_a_row_stop_naming_the_last_good_checkpoint(tok, pretrain_data, tmp_path):
    t = trainer(tok, pretrain_data, tmp_path, Faulty(nan_at=range(5, 100)), steps=20, save_every=2,
                max_bad_steps=3)
    with pytest.raises(UserError, match=r"3 steps in a row .* Last good checkpoint: .*step-0000004"):
        t.fit()
    assert t.step == 4 and t.guard.bad_total == 3


def test_spikes_are_flagged_after_warmup():
    g = StepGuard()
    level = [2.0 + 0.01 * ((i * 7) % 5) for i in range(WARMUP + 10)]
    assert all(g.record_good(x) is None for x in level)
    mean = g.mean
    assert g.record_good(5.0) == pytest.approx(5.0 / mean)
    assert g.record_good(2.01) is None
    early = StepGuard()
    assert all(early.record_good(x) is None for x in (8.0, 6.0, 9.0))  # no verdict during the first steps
    assert g.record_bad() is False and g.bad_in_row == 1


def test_a_scaler_only_where_fp16_trains():
    from minimind.train.engine import make_scaler

    cpu = torch.device("cpu")
    assert make_scaler(torch.bfloat16, cpu) is None and make_scaler(torch.float32, cpu) is None  # fp32's range


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="fp16 training needs a GPU (CPUs have no fp16 matrix units; --dtype fp16 is refused there)")
def test_fp16_trains_with_a_gradient_scaler(tok, pretrain_data, tmp_path):
    t = trainer(tok, pretrain_data, tmp_path, Faulty(inf_at=[3]), steps=12, dtype="fp16", device="cuda",
                save_every=6)
    assert t.scaler is not None and t.scaler.is_enabled()
    scale0 = t.scaler.get_scale()
    m = t.fit()
    assert m["skipped_steps"] == 1 and t.step == 12  # the overflow was skipped ...
    assert t.scaler.get_scale() == scale0 / 2  # ... and halved the scale
    assert all(torch.isfinite(p).all() for p in t.raw_model.parameters())
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl") if '"loss"' in line]
    assert rows[-1]["loss"] < rows[0]["loss"]
    resumed = trainer(tok, pretrain_data, tmp_path, LanguageModeling(), steps=12, dtype="fp16", device="cuda",
                      resume_from=str(tmp_path / "run" / "checkpoint" / "step-0000006"))
    resumed.resume(resumed.resume_point())
    assert resumed.scaler.get_scale() == scale0 / 2  # the scale is part of the resume state


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_scaler_mechanics_on_cpu(tok, pretrain_data, tmp_path, optimizer):
    """The engine's scaler path (scale, unscale before clipping, skip and halve on overflow), run with
    a CPU scaler over fp32 math: what fp16 on a GPU does, minus the fp16 matmuls."""
    t = trainer(tok, pretrain_data, tmp_path, Faulty(inf_at=[2]), steps=4, optimizer=optimizer)
    t.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    plain = trainer(tok, pretrain_data, tmp_path / "plain", LanguageModeling(), steps=4, optimizer=optimizer)
    it, plain_it = iter(t.train_loader), iter(plain.train_loader)
    first, ref = t.train_step(it), plain.train_step(plain_it)
    assert first["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-4)  # unscaled before the norm
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(t.raw_model.parameters(), plain.raw_model.parameters()))
    before = snapshot(t)
    assert t.train_step(it)["skipped"] and same(before, snapshot(t))
    assert t.scaler.get_scale() == 2.0**9  # the overflow halved the scale
    assert "skipped" not in t.train_step(it)
