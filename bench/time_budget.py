"""Training by time budget: how close to its budget a real `--time-budget` run ends.

    python bench/time_budget.py [--budgets 20,90] [--dtypes auto,fp32] [--preset nano]

For each (budget, dtype) it pretrains the preset on the built-in corpus (bench/.cache, made once)
through `run_training` with a RunConfig, exactly what `minimind pretrain --time-budget B` does, with
a final held-out evaluation and save. Reported per run: the steps the plan allowed, the time the
budget counted (setup, data, steps, evaluation, checkpoint), the wall time around the call, and the
overshoot (wall - budget; negative = ended early). Every run is bounded by its budget, so the
script finishes on any CPU (a slow dtype just gets fewer steps). Writes bench/time_budget.json and
prints a table plus a markdown block for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_one(budget: float, dtype: str, preset: str) -> dict:
    from bench.train import CACHE, corpus
    from minimind.train.engine import TrainConfig
    from minimind.train.pretrain import LanguageModeling
    from minimind.train.run import RunConfig, run_training

    data, _ = corpus()
    out = CACHE / "time_budget" / f"{preset}-{dtype}-{budget:g}s"
    cfg = RunConfig(stage="pretrain", data=str(data / "pretrain.jsonl"),
                    eval_data=str(data / "eval" / "heldout_pretrain.jsonl"), tokenizer=str(CACHE / "tokenizer"),
                    preset=preset, max_seq_len=256,
                    train=TrainConfig(out_dir=str(out), steps=0, time_budget=budget, batch_size=32, lr=3e-3,
                                      warmup=50, schedule="wsd", dtype=dtype, device="cpu", progress=False,
                                      log_every=10, eval_batches=10))
    t0 = time.monotonic()
    m = run_training(cfg, LanguageModeling(), data_kind="pretrain")
    wall = time.monotonic() - t0
    steps = max(int(r.split('"step": ')[1].split(",")[0]) for r in open(out / "metrics.jsonl") if '"loss"' in r)
    return {"budget s": budget, "dtype": dtype, "steps": steps, "counted s": m["spent_s"], "wall s": wall,
            "overshoot s": wall - budget, "eval_loss": m.get("eval_loss")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", default="20,90", help="seconds, comma-separated")
    ap.add_argument("--dtypes", default="auto,fp32")
    ap.add_argument("--preset", default="nano")
    args = ap.parse_args()
    from bench.peak import print_table, write_json
    from bench.train import corpus
    from minimind.runtime import machine_info

    corpus()
    rows = [run_one(float(b), d, args.preset) for b in args.budgets.split(",") for d in args.dtypes.split(",")]
    info = machine_info()
    path = write_json("time_budget", {"machine": info, "preset": args.preset, "rows": rows})
    cols = ["budget s", "dtype", "steps", "counted s", "wall s", "overshoot s", "eval_loss"]
    print(f"\n{info['cpu']} ({', '.join(info['flags'])}), {info['threads']} threads, torch {info['torch']}")
    print_table(rows, cols)
    print(f"\nwrote {path}\n\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
