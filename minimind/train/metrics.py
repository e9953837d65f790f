"""What a run writes about itself: metrics.jsonl (+ wandb / swanlab / tensorboard), MoE expert load.

metrics.jsonl holds one JSON object per logged step ({"step": 12, "loss": ..., "lr": ...}), plus
rows for evaluations and for skipped (non-finite) steps. On resume it is cut back to the resumed
step first, so the steps between the checkpoint and the interruption are not there twice.

Expert load (mixture-of-experts models): the share of routed token slots each expert received in
the step, per layer, and one number for collapse, imbalance = max over layers and experts of
share * E (1 when the router spreads tokens evenly, E when one expert takes everything).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

from ..checkpoint import write_text_atomic
from ..errors import UserError


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows of metrics.jsonl up to `step` (a torn last line from a crash is dropped too)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


class MetricsLog:
    """metrics.jsonl in the run directory, plus optional wandb / swanlab / tensorboard."""

    def __init__(self, out_dir: Path, cfg, run_config: dict, enabled: bool, resumed_step: int | None = None):
        self.enabled = enabled
        self.sinks = []
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "metrics.jsonl"
        if resumed_step is not None:
            truncate_metrics(path, resumed_step)
        self.file = open(path, "a" if resumed_step is not None else "w")
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
            self.sinks.append(lambda m, s: [writer.add_scalar(k, v, s) for k, v in m.items()])

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for sink in self.sinks:
            sink(numbers, step)

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


class ExpertLoad:
    """Tokens routed to each expert of each MoE layer during one optimizer step (all ranks)."""

    def __init__(self, model):
        from ..model import MoE

        self.layers = [m for m in model.modules() if isinstance(m, MoE)]
        self.counts = None  # (L, E) float64

    def collect(self) -> None:
        """After a forward: add each layer's counts (MoE.forward leaves them on the module)."""
        if self.layers:
            c = torch.tensor([m.expert_counts for m in self.layers], dtype=torch.float64)  # (L, E)
            self.counts = c if self.counts is None else self.counts + c

    def reset(self) -> None:
        self.counts = None

    def metrics(self, d, device) -> dict:
        if self.counts is None:
            return {}
        counts, self.counts = self.counts.to(device), None
        if d.enabled:
            dist.all_reduce(counts)
        share = counts / counts.sum(-1, keepdim=True).clamp(min=1)  # (L, E)
        return {"expert_load": [[round(x, 4) for x in row] for row in share.tolist()],
                "expert_imbalance": float(share.max()) * share.shape[1]}
