"""`minimind plot RUN_DIR [RUN_DIR...]`: a run's curves from metrics.jsonl to a PNG - training and eval
loss, learning rate, and for RL runs reward, KL and held-out accuracy; several runs overlaid."""

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


# panels after loss and lr, drawn when a run logged them (RL runs do): (metric, axis label)
EXTRA_PANELS = [("reward", "rollout reward"), ("kl_k3", "KL to the reference (k3)"),
                ("eval_reward", "held-out reward")]


def panels_for(rows: list[dict]) -> list[str]:
    """The metrics to draw, one panel each: loss and lr always, the rest when some row has them."""
    extra = [m for m, _ in EXTRA_PANELS if any(m in r for r in rows)]
    return ["loss", "lr"] + extra + sorted({k for r in rows for k in r if k.startswith("acc/")})


def plot_run(run_dirs, out=None) -> Path:
    """One PNG: loss (+ eval loss), lr, and for RL runs reward, KL and held-out accuracy per family;
    several run directories are overlaid, one colour each."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dirs = [run_dirs] if isinstance(run_dirs, (str, Path)) else list(run_dirs)
    runs = {str(d): read_metrics(d) for d in run_dirs}
    for d, rows in runs.items():
        if not any("loss" in r for r in rows):
            raise UserError(f"{d}/metrics.jsonl has no training steps yet")
    panels = panels_for([r for rows in runs.values() for r in rows])
    families = [p for p in panels if p.startswith("acc/")]
    cols = min(len(panels), 3)
    fig, axes = plt.subplots(-(-len(panels) // cols), cols, figsize=(5.5 * cols, 4 * -(-len(panels) // cols)),
                             squeeze=False)
    labels = {"loss": "loss", "lr": "learning rate", **dict(EXTRA_PANELS),
              **{f: f"held-out accuracy: {f[4:]}" for f in families}}
    for i, (d, rows) in enumerate(runs.items()):
        colour, name = f"C{i}", Path(d).name
        for ax, metric in zip(axes.flat, panels):
            pts = [(r["step"], r[metric]) for r in rows if metric in r]
            if metric == "loss":
                ev = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
                if ev:
                    ax.plot(*zip(*ev), "o--", color=colour, label=f"{name} eval")
            if pts:
                ax.plot(*zip(*pts), "o-" if metric.startswith(("acc/", "eval_")) else "-", color=colour,
                        label=name if metric != "loss" or len(runs) > 1 else "train loss")
    for ax, metric in zip(axes.flat, panels):
        ax.set_xlabel("step"), ax.set_ylabel(labels[metric]), ax.grid(alpha=0.3)
        if metric == "loss" or len(runs) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(", ".join(Path(d).name for d in runs) if len(runs) > 1 else str(run_dirs[0]))
    fig.tight_layout()
    out = Path(out) if out else Path(run_dirs[0]) / "curves.png"
    if out.is_dir():
        raise UserError(f"--out {out}: a directory; give a file name such as {out / 'curves.png'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def cmd_plot(args):
    out = plot_run(args.run_dir, args.out)
    print(f"wrote {out}")


def add_commands(sub) -> None:
    s = sub.add_parser("plot", help="draw a run's curves to a PNG (several runs: overlaid)",
                       description="Loss (and eval loss) and learning rate from RUN_DIR/metrics.jsonl; RL runs "
                                   "also get rollout reward, KL to the reference, held-out reward and "
                                   "held-out accuracy per family. Several run directories are overlaid, "
                                   "e.g. to compare RL algorithms.")
    s.add_argument("run_dir", nargs="+", help="run directories (each with a metrics.jsonl)")
    s.add_argument("--out", help="PNG path (default FIRST_RUN_DIR/curves.png)")
    s.set_defaults(func=cmd_plot)
