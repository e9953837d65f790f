"""The one training loop. Every objective (pretrain, SFT, LoRA, DPO, distillation, RL) plugs into it.

An *objective* is any object with

    objective.loss(model, batch) -> (loss: scalar tensor, metrics: dict[str, float | tensor])

where metrics should include "n_tokens" (useful, non-padding tokens trained on, for throughput).
Everything else lives here, once: device and dtype choice, bf16 autocast (also on CPU), optional
torch.compile, AdamW with decay only on matrices (or Muon for hidden matrices), gradient
accumulation, clipping, warmup + cosine / warmup-stable-decay schedule, periodic held-out
evaluation, DDP under torchrun (gradients synchronised on the last micro-step only), atomic
checkpoints, exact resume (model, optimizer, scheduler, RNG, data position), a progress bar, a
metrics.jsonl log, and optional wandb / swanlab / tensorboard.

One optimizer step over A micro-batches b_1..b_A (and W data-parallel ranks) is

    g = 1/(A W) * sum_{ranks} sum_a grad L(b_a)        (each L a mean over its tokens)
    g <- g * min(1, clip / ||g||)
    theta <- AdamW(theta, g, lr(step))

lr(step): linear warmup to lr over `warmup` steps, then either cosine decay to lr*min_lr_ratio
(Loshchilov & Hutter 2017) or warmup-stable-decay: constant, then linear decay over the last
`decay_frac` of the steps (Hu et al. 2024, MiniCPM).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..checkpoint import load_weights, save_checkpoint
from ..errors import UserError
from ..runtime import Dist, autocast, pick_device, pick_dtype, rng_state, seed_everything, set_rng_state


class Objective(Protocol):
    """What the engine needs from a training objective (pretrain, SFT, DPO, distillation, RL, ...).

    `loss(model, batch)` returns (scalar loss, metrics); metrics should include "n_tokens", the
    useful (non-padding) tokens trained on. Optional: `eval_loss(model, batch)` for held-out
    evaluation when it differs from the training loss, `to(device)` to move frozen helper models
    (a reference, a teacher), and `state_dict()` / `load_state_dict(d)` for state that must
    survive a resume (e.g. a running baseline).
    """

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, dict]: ...


@dataclass
class TrainConfig:
    out_dir: str = "runs/train"
    steps: int = 1000  # optimizer steps
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
    optimizer: str = "adamw"  # adamw | muon
    muon_lr: float = 0.02
    dtype: str = "auto"  # auto | bf16 | fp16 | fp32
    compile: bool = False
    device: str = "auto"
    seed: int = 42
    eval_every: int = 0  # 0: only at the end
    eval_batches: int = 20
    save_every: int = 0  # 0: only at the end
    log_every: int = 10
    resume: bool = False
    stop_after: int = 0  # stop (with a checkpoint) after this step, to continue later with resume
    target_loss: float = 0.0  # stop once an evaluation reaches this held-out loss (speedruns)
    progress: bool = True
    wandb: bool = False
    swanlab: bool = False
    tensorboard: bool = False
    project: str = "minimind"
    extra: dict = field(default_factory=dict)  # objective-specific settings, saved with the run


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


def build_optimizer(model, cfg: TrainConfig, device: torch.device):
    if cfg.optimizer == "muon":
        from .muon import build_muon

        return build_muon(model, cfg)
    if cfg.optimizer != "adamw":
        raise UserError(f"--optimizer {cfg.optimizer!r}: choose adamw or muon")
    kw = {"fused": True} if device.type == "cuda" else {"foreach": True}
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                             betas=tuple(cfg.betas), eps=1e-8, **kw)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based)."""
    if cfg.warmup and step < cfg.warmup:
        return (step + 1) / cfg.warmup
    lo = cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "wsd":
        decay_start = int(cfg.steps * (1 - cfg.decay_frac))
        if step < decay_start:
            return 1.0
        frac = (step - decay_start) / max(1, cfg.steps - decay_start)
        return 1.0 - (1.0 - lo) * frac
    if cfg.schedule == "cosine":
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
    raise UserError(f"--schedule {cfg.schedule!r}: choose cosine, wsd or constant")


# ----------------------------------------------------------------------------- loggers

class MetricsLog:
    """metrics.jsonl in the run directory, plus optional wandb / swanlab / tensorboard."""

    def __init__(self, out_dir: Path, cfg: TrainConfig, run_config: dict, enabled: bool):
        self.enabled = enabled
        self.sinks = []
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        self.file = open(out_dir / "metrics.jsonl", "a" if cfg.resume else "w")
        name = out_dir.name
        if cfg.wandb:
            wandb = _optional_import("wandb", "--wandb")
            wandb.init(project=cfg.project, name=name, config=run_config)
            self.sinks.append(lambda m, s: wandb.log(m, step=s))
        if cfg.swanlab:
            swanlab = _optional_import("swanlab", "--swanlab")
            swanlab.init(project=cfg.project, experiment_name=name, config=run_config)
            self.sinks.append(lambda m, s: swanlab.log(m, step=s))
        if cfg.tensorboard:
            tb = _optional_import("torch.utils.tensorboard", "--tensorboard (needs the tensorboard package)")
            writer = tb.SummaryWriter(str(out_dir / "tensorboard"))
            self.sinks.append(lambda m, s: [writer.add_scalar(k, v, s) for k, v in m.items()
                                            if isinstance(v, (int, float))])

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        for sink in self.sinks:
            sink(metrics, step)

    def close(self):
        if self.enabled:
            self.file.close()


def _optional_import(module: str, flag: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{flag} needs the {module.split('.')[0]} package: pip install "
                        f"{'tensorboard' if 'tensorboard' in module else module}") from None


# ----------------------------------------------------------------------------- the loop

def _scalar(v):
    return v.item() if isinstance(v, torch.Tensor) else float(v)


class Trainer:
    """Runs `objective` on `model` with batches from `train_loader` for cfg.steps optimizer steps."""

    def __init__(self, model, objective, train_loader, tokenizer, cfg: TrainConfig,
                 eval_loader=None, run_config: dict | None = None, dist_info: Dist | None = None,
                 device: torch.device | None = None):
        self.cfg = cfg
        self.dist = dist_info or Dist()
        self.device = device or pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device)
        self.objective = objective
        self.tokenizer = tokenizer
        self.train_loader, self.eval_loader = train_loader, eval_loader
        # every evaluation reads the same held-out batches
        self._eval_start = eval_loader.state_dict() if eval_loader is not None else None
        self.out_dir = Path(cfg.out_dir)
        self.ckpt_dir = self.out_dir / "checkpoint"
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
        self.optimizer = build_optimizer(self.raw_model, cfg, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg))
        self.step = 0
        self.tokens_seen = 0
        self.log = MetricsLog(self.out_dir, cfg, self.run_config, enabled=self.dist.is_main)

    # ---------------------------------------------------------------- resume
    def state(self) -> dict:
        return {"step": self.step, "tokens_seen": self.tokens_seen,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "data": self.train_loader.state_dict(), "rng": rng_state(),
                "objective": getattr(self.objective, "state_dict", lambda: {})()}

    def maybe_resume(self) -> bool:
        st_file = self.ckpt_dir / "train_state.pt"
        if not self.cfg.resume:
            return False
        if not st_file.is_file():
            raise UserError(f"--resume: no resumable checkpoint at {self.ckpt_dir} (train_state.pt missing)")
        load_weights(self.raw_model, self.ckpt_dir / "model.safetensors")
        st = torch.load(st_file, map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(st["optimizer"])
        self.scheduler.load_state_dict(st["scheduler"])
        self.train_loader.load_state_dict(st["data"][self.dist.rank] if isinstance(st["data"], list)
                                          else st["data"])
        set_rng_state(st["rng"])
        if hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(st.get("objective", {}))
        self.step, self.tokens_seen = st["step"], st["tokens_seen"]
        return True

    def save(self) -> None:
        state = self.state()
        if self.dist.enabled:  # every rank's data cursor, gathered to rank 0
            datas = [None] * self.dist.world_size
            dist.all_gather_object(datas, state["data"])
            state["data"] = datas
        if self.dist.is_main:
            save_checkpoint(self.ckpt_dir, self.raw_model, self.tokenizer, train_state=state,
                            run_config=self.run_config)
        if self.dist.enabled:
            dist.barrier()

    # ---------------------------------------------------------------- steps
    def micro_step(self, batch, last: bool):
        sync = contextlib.nullcontext() if (last or not self.dist.enabled) else self.model.no_sync()
        with sync:
            with autocast(self.device, self.dtype):
                loss, metrics = self.objective.loss(self.model, batch)
            (loss / self.cfg.grad_accum).backward()
        return loss.detach(), metrics

    def train_step(self, data_iter) -> dict:
        self.model.train()
        total, agg = 0.0, {}
        for a in range(self.cfg.grad_accum):
            batch = _to_device(next(data_iter), self.device)
            loss, metrics = self.micro_step(batch, last=a == self.cfg.grad_accum - 1)
            total += loss.float()
            for k, v in metrics.items():
                agg[k] = agg.get(k, 0.0) + _scalar(v)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(),
                                                   self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        loss = total / self.cfg.grad_accum
        if self.dist.enabled:  # report the global mean loss and token count
            t = torch.tensor([loss.item(), agg.get("n_tokens", 0.0)], device=self.device)
            dist.all_reduce(t)
            loss, agg["n_tokens"] = t[0] / self.dist.world_size, t[1].item()
        out = {"loss": _scalar(loss), "lr": lr, "grad_norm": _scalar(grad_norm)}
        for k, v in agg.items():
            out[k] = v if k == "n_tokens" else v / self.cfg.grad_accum
        return out

    @torch.no_grad()
    def evaluate(self) -> dict:
        if self.eval_loader is None:
            return {}
        self.model.eval()
        self.eval_loader.load_state_dict(self._eval_start)
        it = iter(self.eval_loader)
        losses, n = [], 0
        for _ in range(self.cfg.eval_batches):
            try:
                batch = _to_device(next(it), self.device)
            except StopIteration:
                break
            with autocast(self.device, self.dtype):
                loss, _ = self.objective.loss(self.raw_model, batch)
            losses.append(loss.float().item())
            n += 1
        self.model.train()
        if not n:
            return {}
        return {"eval_loss": sum(losses) / n}

    def fit(self) -> dict:
        cfg = self.cfg
        seed_everything(cfg.seed + self.dist.rank)
        resumed = self.maybe_resume()
        if self.dist.is_main and cfg.progress:
            print(f"training {cfg.steps} steps on {self.device} ({str(self.dtype).replace('torch.', '')})"
                  + (f", resumed at step {self.step}" if resumed else "")
                  + (f", {self.dist.world_size} processes" if self.dist.enabled else ""))
        data_iter = iter(self.train_loader)
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (cfg.progress and self.dist.is_main),
                   dynamic_ncols=True, unit="step")
        t0, tok0, last = time.perf_counter(), self.tokens_seen, {}
        end = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
        while self.step < end:
            m = self.train_step(data_iter)
            self.step += 1
            self.tokens_seen += int(m.get("n_tokens", 0))
            elapsed = time.perf_counter() - t0
            m["tokens_per_s"] = (self.tokens_seen - tok0) / max(elapsed, 1e-9)
            m["tokens_seen"] = self.tokens_seen
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                m.update(self.evaluate())
                if cfg.target_loss and m.get("eval_loss", float("inf")) <= cfg.target_loss:
                    m["target_reached"] = True
                    end = self.step  # stop here: the target held-out loss is reached
            if self.step % cfg.log_every == 0 or self.step == cfg.steps or "eval_loss" in m:
                self.log.log(self.step, m)
            bar.set_postfix(loss=f"{m['loss']:.3f}", lr=f"{m['lr']:.2e}", tok_s=f"{m['tokens_per_s']:.0f}",
                            refresh=False)
            bar.update(1)
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                self.save()
            last = m
        bar.close()
        final = self.evaluate() if self.step == cfg.steps and "eval_loss" not in last else {}
        if final:
            self.log.log(self.step, final)
            last.update(final)
        self.save()
        self.log.close()
        last["elapsed_s"] = time.perf_counter() - t0
        return last


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
