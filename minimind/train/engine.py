"""The one training loop. Every objective (pretrain, SFT, LoRA, DPO, distillation, RL) plugs into it.

An *objective* is any object with

    objective.loss(model, batch) -> (loss: scalar tensor, metrics: dict[str, float | tensor])

where metrics should include "n_tokens" (useful, non-padding tokens trained on, for throughput).
Everything else lives here, once: device and dtype choice, bf16 autocast (also on CPU), fp16 with a
gradient scaler (GPUs without bf16), optional torch.compile, AdamW with decay only on matrices
(or Muon for hidden matrices), gradient accumulation, clipping, warmup + cosine /
warmup-stable-decay schedule, a step plan from a time budget (budget.py), skipping of non-finite
steps and logging of loss spikes (guard.py), periodic held-out evaluation, DDP under torchrun
(gradients synchronised on the last micro-step only, evaluation and stop decisions shared by all
ranks), checkpoints that keep the last K (checkpoint.RunCheckpoints), exact resume (model,
optimizer, scheduler, scaler, every rank's RNG and data position, objective state), a progress
bar, a metrics.jsonl log, and optional wandb / swanlab / tensorboard.

One optimizer step over A micro-batches b_1..b_A (and W data-parallel ranks) is

    g = 1/(A W) * sum_{ranks} sum_a grad L(b_a)        (each L a mean over its tokens)
    g_E[t] <- 0 for tokens t no micro-batch read       (--embed-rows seen only; embed_rows.py)
    skip the step if L or ||g|| is not finite          (no update of theta, moments or lr)
    g <- g * min(1, clip / ||g||)
    theta <- AdamW(theta, g, lr(step))

With fp16 the loss is multiplied by a scale S before backward and g divided by S after it
(Micikevicius et al. 2018, "Mixed Precision Training"); S halves after an overflow (a skipped
step) and doubles after 2000 clean steps (torch.amp.GradScaler).

lr(step): linear warmup to lr over `warmup` steps, then either cosine decay to lr*min_lr_ratio
(Loshchilov & Hutter 2017) or warmup-stable-decay: constant, then linear decay over the last
`decay_frac` of the steps (Hu et al. 2024, MiniCPM). "The steps" are --steps, or under
--time-budget the number of steps the budget allows, re-planned as the run measures itself.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..checkpoint import RunCheckpoints, load_model_state, load_train_state, resolve_checkpoint
from ..errors import UserError
from ..runtime import Dist, autocast, pick_device, pick_dtype, rng_state, seed_everything, set_rng_state
from .budget import TimeBudget, warmup_steps
from .embed_rows import EmbedRows
from .guard import StepGuard
from .metrics import ExpertLoad, MetricsLog


class Objective(Protocol):
    """What the engine needs from a training objective (pretrain, SFT, DPO, distillation, RL, ...).

    `loss(model, batch)` returns (scalar loss, metrics); metrics should include "n_tokens", the
    useful (non-padding) tokens trained on. Optional: `eval_loss(model, batch)` for held-out
    evaluation when it differs from the training loss, `to(device)` to move frozen helper models
    (a reference, a teacher), and `state_dict()` / `load_state_dict(d)` for state that must
    survive a resume (e.g. a running baseline), and `parameters()` for trainable weights the
    objective owns besides the model's (PPO's value head): the engine optimises, clips, averages
    across ranks and saves them (through `state_dict`) with the model. Nothing may depend on
    `model.training`: the engine says which loss it wants by calling `loss` or `eval_loss`.
    """

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]: ...


@dataclass
class TrainConfig:
    out_dir: str = "runs/train"
    steps: int = 1000  # optimizer steps (with time_budget: an upper bound, 0 = none)
    batch_size: int = 16  # sequences per micro-batch (per rank)
    grad_accum: int = 1
    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup: int = 50
    schedule: str = "cosine"  # cosine | wsd | constant
    decay_frac: float = 0.2  # wsd: fraction of steps spent decaying
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0
    embed_rows: str = "all"  # all | seen: only rows of tokens the step read change (embed_rows.py)
    optimizer: str = "adamw"  # adamw | muon
    muon_lr: float = 0.02
    dtype: str = "auto"  # auto | bf16 | fp16 | fp32
    compile: bool = False
    device: str = "auto"
    seed: int = 42
    eval_every: int = 0  # 0: only at the end
    eval_batches: int = 20
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 3  # step directories kept (0: all)
    log_every: int = 10
    resume: bool = False  # continue from OUT/checkpoint's latest if there is one, else start fresh
    resume_from: str = ""  # continue from this checkpoint (or run) directory
    stop_after: int = 0  # stop (with a checkpoint) after this step, to continue later with resume
    target_loss: float = 0.0  # stop once an evaluation reaches this held-out loss (speedruns)
    time_budget: float = 0.0  # seconds: plan the steps so the run ends on time (0: off)
    max_bad_steps: int = 20  # stop after this many non-finite steps in a row (0: never)
    progress: bool = True
    wandb: bool = False
    swanlab: bool = False
    tensorboard: bool = False
    project: str = "minimind"
    extra: dict = field(default_factory=dict)  # objective-specific settings, saved with the run


# flags whose change on resume is worth a warning (the new value wins)
WATCHED = ("lr", "muon_lr", "steps", "time_budget", "batch_size", "grad_accum", "schedule", "warmup",
           "min_lr_ratio", "decay_frac", "weight_decay", "betas", "grad_clip", "dtype")
NO_CAP = 10**12  # "no step limit" under a time budget


# ----------------------------------------------------------------------------- optimizer

def param_groups(model, weight_decay: float):
    """Weight decay on matrices only; none on norms, biases and embeddings (as usual)."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.ndim < 2 or "embed_tokens" in name or "norm" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model, cfg: TrainConfig, device: torch.device, extra=()):
    """AdamW (or Muon + AdamW) over the model's trainable parameters; `extra` parameters (an
    objective's own, e.g. PPO's value head) join AdamW without weight decay."""
    if cfg.optimizer == "muon":
        from .muon import build_muon

        return build_muon(model, cfg, extra)
    if cfg.optimizer != "adamw":
        raise UserError(f"--optimizer {cfg.optimizer!r}: choose adamw or muon")
    kw = {"fused": True} if device.type == "cuda" else {"foreach": True}
    groups = param_groups(model, cfg.weight_decay) + ([{"params": list(extra), "weight_decay": 0.0}] if extra else [])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=1e-8, **kw)


def lr_factor(step: int, cfg: TrainConfig, total: int | None = None) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based) of a run of `total` steps."""
    total = cfg.steps if total is None else total
    warmup = warmup_steps(cfg.warmup, total, bool(cfg.time_budget))
    if warmup and step < warmup:
        return (step + 1) / warmup
    lo = cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "wsd":
        decay_start = int(total * (1 - cfg.decay_frac))
        if step < decay_start:
            return 1.0
        frac = (step - decay_start) / max(1, total - decay_start)
        return 1.0 - (1.0 - lo) * min(1.0, frac)
    if cfg.schedule == "cosine":
        frac = (step - warmup) / max(1, total - warmup)
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    raise UserError(f"--schedule {cfg.schedule!r}: choose cosine, wsd or constant")


def make_scaler(dtype: torch.dtype, device: torch.device):
    """A gradient scaler where fp16 is the training dtype (bf16 and fp32 have fp32's range: none)."""
    if dtype != torch.float16:
        return None
    return torch.amp.GradScaler(device.type)


# ----------------------------------------------------------------------------- the loop

def _scalar(v):
    return v.item() if isinstance(v, torch.Tensor) else float(v)


def _say(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


class Trainer:
    """Runs `objective` on `model` with batches from `train_loader` for cfg.steps optimizer steps
    (or as many as cfg.time_budget allows). `clock` (seconds, monotonic) and `started_at` (its value
    when the command started) exist so that tests can drive the time budget with a fake clock."""

    def __init__(self, model, objective, train_loader, tokenizer, cfg: TrainConfig,
                 eval_loader=None, run_config: dict | None = None, dist_info: Dist | None = None,
                 device: torch.device | None = None, clock=time.monotonic, started_at: float | None = None,
                 evaluators=(), initial_metrics: dict | None = None):
        self.cfg = cfg
        self.dist = dist_info or Dist()
        self.device = device or pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        self.objective = objective
        self.tokenizer = tokenizer
        self.train_loader, self.eval_loader = train_loader, eval_loader
        # evaluators: functions model -> {metric: value}, run (on rank 0) at every evaluation, e.g.
        # held-out task accuracy during RL or greedy sample generations
        self.evaluators = list(evaluators)
        self.initial_metrics = dict(initial_metrics or {})  # logged as step 0 of a fresh run (e.g. RL's "before")
        # every evaluation reads the same held-out batches
        self._eval_start = eval_loader.state_dict() if eval_loader is not None else None
        self.out_dir = Path(cfg.out_dir)
        self.checkpoints = RunCheckpoints(self.out_dir / "checkpoint", keep=cfg.keep_checkpoints)
        self.run_config = {"train": asdict(cfg), **(run_config or {})}
        self.raw_model = model.to(self.device)  # the module we save (never DDP/compiled)
        if hasattr(objective, "to"):
            objective.to(self.device)
        self.model = self.raw_model
        if self.dist.enabled:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.clock = clock
        self.budget = TimeBudget(cfg.time_budget, clock, started_at) if cfg.time_budget else None
        # planned number of steps: --steps, or under a time budget re-planned after every step
        self.total = cfg.steps if not self.budget else (cfg.steps or NO_CAP)
        self.extra_params = list(objective.parameters()) if hasattr(objective, "parameters") else []
        self.optimizer = build_optimizer(self.raw_model, cfg, self.device, self.extra_params)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg, self.total))
        self.scaler = make_scaler(self.dtype, self.device)
        self.guard = StepGuard(cfg.max_bad_steps)
        self.experts = ExpertLoad(self.raw_model)
        self.embed_rows = EmbedRows(self.raw_model, cfg.embed_rows)
        self.step = 0
        self.tokens_seen = 0
        self.saved_step = None  # the step of the newest checkpoint on disk
        self.last_metrics: dict = {}
        self.log = None

    # ---------------------------------------------------------------- checkpoints and resume
    def state(self) -> dict:
        return {"step": self.step, "tokens_seen": self.tokens_seen, "total": self.total,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "data": self.train_loader.state_dict(), "rng": rng_state(),
                "objective": getattr(self.objective, "state_dict", lambda: {})(),
                "guard": self.guard.state_dict(), "budget": self.budget.state_dict() if self.budget else None,
                "last_metrics": self.last_metrics}

    def save(self) -> None:
        state = self.state()
        if self.dist.enabled:  # what differs between ranks, gathered to rank 0: a list with one per rank
            for key in ("data", "rng", "objective"):
                every = [None] * self.dist.world_size
                dist.all_gather_object(every, state[key])
                state[key] = every
        if self.dist.is_main:
            self.checkpoints.save(self.step, self.raw_model, self.tokenizer, state, self.run_config)
        if self.dist.enabled:
            dist.barrier()
        self.saved_step = self.step

    def resume_point(self) -> Path | None:
        """The checkpoint to continue from (--resume-from, or --resume's latest), or None."""
        cfg = self.cfg
        if cfg.resume_from:
            path = resolve_checkpoint(cfg.resume_from)
            if not (path / "train_state.pt").is_file():
                raise UserError(f"--resume-from {cfg.resume_from}: no resumable checkpoint there "
                                f"(train_state.pt missing in {path})")
            return path
        if not cfg.resume:
            return None
        path = self.checkpoints.latest()
        if path is None:
            if self.dist.is_main:
                print(f"--resume: no checkpoint in {self.checkpoints.root} yet; starting fresh")
            return None
        if not (path / "train_state.pt").is_file():
            raise UserError(f"--resume: {path} holds weights but no resume state (train_state.pt); "
                            f"start from it with --init {path} instead")
        return path

    def resume(self, path: Path) -> None:
        st = load_train_state(path)
        self._check_and_warn(path, st["step"])
        load_model_state(self.raw_model, path)
        fresh = [(g["initial_lr"], g.get("weight_decay"), g.get("betas")) for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(st["optimizer"])
        except (ValueError, KeyError) as e:
            raise UserError(f"{path}: its optimizer state does not fit this model ({e}); resume with the "
                            f"model and LoRA settings it was trained with, or start fresh") from None
        self.scheduler.load_state_dict(st["scheduler"])
        self.step, self.tokens_seen = st["step"], st["tokens_seen"]
        mine = self._for_rank
        self.train_loader.load_state_dict(mine(st["data"]))
        set_rng_state(mine(st["rng"]))
        if hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(mine(st.get("objective")) or {})
        if self.scaler and st.get("scaler"):
            self.scaler.load_state_dict(st["scaler"])
        self.guard.load_state_dict(st.get("guard") or {})
        if self.budget and st.get("budget"):
            self.budget.load_state_dict(st["budget"])
            self.total = min(st["total"], self.cfg.steps or NO_CAP)
        self._apply_new_hyperparameters(fresh)  # after the plan: the next lr depends on it
        self.last_metrics = st.get("last_metrics") or {}
        if self.last_metrics.get("target_reached"):
            self.total = self.step  # the run had reached --target-loss: it is finished
        self.saved_step = self.step
        self.checkpoints.fresh = False

    def _for_rank(self, value):
        """This rank's entry of a per-rank list (a checkpoint from fewer ranks: wrap around)."""
        if isinstance(value, list):
            return value[self.dist.rank % len(value)]
        return value

    def _apply_new_hyperparameters(self, fresh: list) -> None:
        """The flags of this invocation win over the saved optimizer's: lr, weight decay, betas."""
        self.scheduler.base_lrs = [lr for lr, _, _ in fresh]
        for g, (lr, wd, betas) in zip(self.optimizer.param_groups, fresh):
            g["initial_lr"] = lr
            if wd is not None:
                g["weight_decay"] = wd
            if betas is not None:
                g["betas"] = betas
        self._set_lr()

    def _check_and_warn(self, path: Path, step: int) -> None:
        """Refuse what cannot be resumed; warn about flags that changed since the checkpoint."""
        try:
            saved = json.loads((path / "run.json").read_text()).get("train", {})
        except (OSError, ValueError):
            return
        if saved.get("optimizer", self.cfg.optimizer) != self.cfg.optimizer:
            raise UserError(f"--optimizer {self.cfg.optimizer}: the checkpoint {path} was trained with "
                            f"--optimizer {saved['optimizer']}; resume with that one or start fresh")
        if not self.dist.is_main:
            return
        for key in WATCHED:
            old, new = saved.get(key), getattr(self.cfg, key)
            if key in saved and (list(old) if isinstance(old, (list, tuple)) else old) != \
                    (list(new) if isinstance(new, (list, tuple)) else new):
                print(f"minimind: warning: resume: --{key.replace('_', '-')} is {new} now, {old} in {path}; "
                      f"the new value is used from step {step} on", file=sys.stderr)

    # ---------------------------------------------------------------- steps
    def micro_step(self, batch, last: bool):
        sync = contextlib.nullcontext() if (last or not self.dist.enabled) else self.model.no_sync()
        with sync:
            t0 = self.clock()
            with autocast(self.device, self.dtype):
                loss, metrics = self.objective.loss(self.model, batch)
            if self.budget:  # the forward's time prices the final evaluation
                _sync(self.device)
                self.budget.forward_done(self.clock() - t0)
            scaled = loss / self.cfg.grad_accum
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
        return loss.detach(), metrics

    def train_step(self, data_iter) -> dict:
        """One optimizer step (A micro-batches) and its scheduler step. Returns its metrics;
        "skipped" is in them when the loss or gradient norm was not finite and nothing was updated."""
        self.model.train()
        total, agg = 0.0, {}
        self.embed_rows.start_step()
        for a in range(self.cfg.grad_accum):
            batch = _to_device(next(data_iter), self.device)
            loss, metrics = self.micro_step(batch, last=a == self.cfg.grad_accum - 1)
            self.experts.collect()
            total += loss.float()
            for k, v in metrics.items():
                agg[k] = agg.get(k, 0.0) + _scalar(v)
        if self.dist.enabled:  # DDP averages the model's gradients; an objective's own are averaged here
            for p in self.extra_params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.dist.world_size
        self.embed_rows.mask(self.dist.enabled)
        if self.scaler:
            self.scaler.unscale_(self.optimizer)  # true gradients, for the norm and the clip
        grad_norm = torch.nn.utils.clip_grad_norm_([*self.raw_model.parameters(), *self.extra_params],
                                                   self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf"))
        loss = total / self.cfg.grad_accum
        if self.dist.enabled:  # the global mean loss and token count: every rank decides alike
            t = torch.tensor([float(loss), agg.get("n_tokens", 0.0)], device=self.device, dtype=torch.float64)
            dist.all_reduce(t)
            loss, agg["n_tokens"] = t[0] / self.dist.world_size, t[1].item()
        loss, grad_norm = _scalar(loss), _scalar(grad_norm)  # grad_norm: the same on every rank (synced grads)
        if StepGuard.is_bad(loss, grad_norm):
            self.optimizer.zero_grad(set_to_none=True)  # nothing applied: weights, moments, lr untouched
            if self.scaler:
                self.scaler.update()  # an fp16 overflow: halve the scale
            self.experts.reset()
            return {"skipped": True, "loss": loss, "grad_norm": grad_norm}
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        out = {"loss": loss, "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": grad_norm}  # the lr just used
        self.scheduler.step()
        for k, v in agg.items():
            out[k] = v if k == "n_tokens" else v / self.cfg.grad_accum
        out.update(self.experts.metrics(self.dist, self.device))
        return out

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean held-out loss over cfg.eval_batches batches per rank, averaged over all ranks; then
        the evaluators' metrics (rank 0 only: they are logged, never used to stop)."""
        out = self._eval_loss()
        if self.evaluators and self.dist.is_main:
            t0 = self.clock()
            self.model.eval()
            for fn in self.evaluators:
                out.update(fn(self.raw_model))
            self.model.train()
            if self.budget:
                self.budget.eval_done(self.clock() - t0)
        return out

    def _eval_loss(self) -> dict:
        if self.eval_loader is None:
            return {}
        t0 = self.clock()
        self.model.eval()
        self.eval_loader.load_state_dict(self._eval_start)
        loss_fn = getattr(self.objective, "eval_loss", self.objective.loss)
        it = iter(self.eval_loader)
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # (sum of losses, batches)
        for _ in range(self.cfg.eval_batches):
            try:
                batch = _to_device(next(it), self.device)
            except StopIteration:
                break
            with autocast(self.device, self.dtype):
                loss, _ = loss_fn(self.raw_model, batch)
            total += torch.stack([loss.double(), loss.new_ones((), dtype=torch.float64)])
        if self.dist.enabled:
            dist.all_reduce(total)
        self.model.train()
        if self.budget:
            self.budget.eval_done(self.clock() - t0)
        return {"eval_loss": (total[0] / total[1]).item()} if total[1] else {}

    # ---------------------------------------------------------------- the run
    def plan(self) -> None:
        """Under a time budget: the number of steps that still fits (the same on every rank)."""
        if not self.budget:
            return
        self.budget.step_done()
        save_bytes = sum(p.numel() * p.element_size() for p in self.raw_model.parameters() if p.requires_grad)
        n = torch.tensor([self.budget.plan(self.step, self.cfg.eval_batches if self.eval_loader else 0,
                                           self.cfg.grad_accum, save_bytes)], device=self.device)
        if self.dist.enabled:
            dist.broadcast(n, src=0)  # rank 0's clock decides for everyone
        self.total = min(int(n.item()), self.cfg.steps or NO_CAP)
        self._set_lr()  # the next step's lr over the new plan

    def _set_lr(self) -> None:
        """lr of every group for the next step: base * lr_factor(step, total) (LambdaLR's own formula)."""
        for g, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            g["lr"] = base * lr_factor(self.scheduler.last_epoch, self.cfg, self.total)

    def fit(self) -> dict:
        cfg = self.cfg
        seed_everything(cfg.seed + self.dist.rank)
        resumed = self.resume_point()
        if resumed is not None:
            self.resume(resumed)
        self.log = MetricsLog(self.out_dir, cfg, self.run_config, enabled=self.dist.is_main,
                              resumed_step=self.step if resumed is not None else None)
        if resumed is None and self.initial_metrics:
            self.log.log(0, self.initial_metrics)
        if self.dist.is_main and cfg.progress:
            plan = (f"up to {self.total if self.total < NO_CAP else 'as many'} steps within "
                    f"{cfg.time_budget:g} s" if self.budget else f"{self.total} steps")
            print(f"training {plan} on {self.device} ({str(self.dtype).replace('torch.', '')})"
                  + (f", resumed from {resumed} at step {self.step}" if resumed is not None else "")
                  + (f", {self.dist.world_size} processes" if self.dist.enabled else "")
                  + (", fp16 gradient scaler" if self.scaler else ""))
        last = dict(self.last_metrics)
        try:
            last = self._loop(last)
        finally:
            self.log.close()
        last["elapsed_s"] = self.clock() - self._t0
        last["skipped_steps"] = self.guard.bad_total
        if self.budget:  # the command's time as the budget counts it (setup, steps, evaluations, saves)
            last["budget_s"], last["spent_s"] = self.budget.seconds, self.budget.spent()
        return last

    def _loop(self, last: dict) -> dict:
        cfg = self.cfg
        data_iter = iter(self.train_loader)
        bar = tqdm(total=self.total if self.total < NO_CAP else None, initial=self.step,
                   disable=not (cfg.progress and self.dist.is_main), dynamic_ncols=True, unit="step")
        self._t0, tok0 = self.clock(), self.tokens_seen
        if self.budget:
            self.budget.begin()
        stop_at = cfg.stop_after or NO_CAP
        while self.step < min(self.total, stop_at):
            m = self.train_step(data_iter)
            if m.get("skipped"):
                self._skipped(m)
                continue
            self.step += 1
            self.tokens_seen += int(m.get("n_tokens", 0))
            m["tokens_per_s"] = (self.tokens_seen - tok0) / max(self.clock() - self._t0, 1e-9)
            m["tokens_seen"] = self.tokens_seen
            spike = self.guard.record_good(m["loss"])
            if spike and self.dist.is_main:
                m["loss_spike"] = round(spike, 3)
                _say(f"step {self.step}: loss spike {m['loss']:.3f} ({spike:.2f}x the recent average)")
            self.plan()
            bar.total = self.total if self.total < NO_CAP else None
            evaluated = bool(cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < self.total)
            if evaluated:
                m.update(self.evaluate())
                if cfg.target_loss and m.get("eval_loss", float("inf")) <= cfg.target_loss:
                    m["target_reached"] = True
                    self.total = self.step  # every rank saw the same (all-reduced) loss: all stop here
            if self.step % cfg.log_every == 0 or self.step == self.total or evaluated or spike:
                self.log.log(self.step, m)
            bar.set_postfix(loss=f"{m['loss']:.3f}", lr=f"{m['lr']:.2e}", tok_s=f"{m['tokens_per_s']:.0f}",
                            refresh=False)
            bar.update(1)
            last = self.last_metrics = {k: v for k, v in m.items() if not isinstance(v, list)}
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < self.total:
                self.save()
        bar.close()
        if self.step >= self.total and "eval_loss" not in last and (self.eval_loader is not None or self.evaluators):
            final = self.evaluate() if self._final_eval_fits() else {}
            if final:
                self.log.log(self.step, final)
                last.update(final)
                self.last_metrics = dict(last)
        if self.saved_step != self.step:
            self.save()
        return last

    def _final_eval_fits(self) -> bool:
        """Under a time budget, is there time left for the final evaluation? (Same on every rank.)"""
        if not self.budget:
            return True
        ok = torch.tensor([self.budget.affords(self.budget.eval_time(self.cfg.eval_batches, self.cfg.grad_accum))],
                          device=self.device)
        if self.dist.enabled:
            dist.broadcast(ok, src=0)
        if not ok.item() and self.dist.is_main:
            _say(f"--time-budget: no time left for the final evaluation ({self.budget.spent():.0f} s of "
                 f"{self.budget.seconds:g} s spent); skipped")
        return bool(ok.item())

    def _skipped(self, m: dict) -> None:
        """Log a skipped (non-finite) step; stop the run after too many in a row."""
        stop = self.guard.record_bad()
        what = "loss" if not math.isfinite(m["loss"]) else "gradient norm"
        row = {"skipped": f"non-finite {what}", "bad_loss": str(m["loss"]), "bad_grad_norm": str(m["grad_norm"]),
               "skipped_total": self.guard.bad_total}
        self.log.log(self.step + 1, row)
        if self.dist.is_main:
            _say(f"step {self.step + 1}: non-finite {what} (loss {m['loss']}, grad norm {m['grad_norm']}); "
                 f"skipped without touching weights, optimizer or schedule ({self.guard.bad_in_row} in a row, "
                 f"{self.guard.bad_total} in all)")
        if stop:
            latest = self.checkpoints.latest()
            raise UserError(
                f"{self.guard.bad_in_row} steps in a row had a non-finite loss or gradient norm (last at step "
                f"{self.step + 1}); training stopped. Last good checkpoint: "
                f"{latest if latest is not None else 'none saved yet'}. Lower --lr, keep --grad-clip on, "
                f"use --dtype bf16 or fp32, or check the data; continue with --resume-from CHECKPOINT")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
