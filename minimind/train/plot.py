"""`minimind plot RUN_DIR`: training loss, eval loss and learning rate from metrics.jsonl to a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl (is this a run directory?)")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise UserError(f"{path}:{n}: not valid JSON") from None
    return rows


def plot_run(run_dir, out=None) -> Path:
    try:
        import matplotlib
    except ImportError:
        raise UserError("plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    train = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "eval_loss" in r]
    if not train:
        raise UserError(f"{run_dir}/metrics.jsonl has no training steps yet")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if evals:
        ax1.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval loss")
    ax1.set_xlabel("step"), ax1.set_ylabel("loss"), ax1.legend(), ax1.grid(alpha=0.3)
    ax2.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:orange")
    ax2.set_xlabel("step"), ax2.set_ylabel("learning rate"), ax2.grid(alpha=0.3)
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def cmd_plot(args):
    out = plot_run(args.run_dir, args.out)
    print(f"wrote {out}")


def add_commands(sub) -> None:
    s = sub.add_parser("plot", help="draw loss and lr curves of a run to a PNG")
    s.add_argument("run_dir")
    s.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    s.set_defaults(func=cmd_plot)
