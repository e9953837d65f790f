"""Speedrun: wall time for a model to reach a fixed held-out loss from scratch on the built-in corpus.

    python bench/speedrun.py [--preset nano] [--target 1.2] [--variants fp32,bf16,bf16-wsd,bf16-wsd-muon]

Every variant runs the real `minimind pretrain` command (subprocess) on the same corpus (seed 0,
size 1), tokenizer, batch (32 x 256 tokens) and seed, evaluating the held-out loss every
--eval-every steps and stopping when it reaches --target (`--target-loss`). The time counted is
the training wall time the engine reports (data preparation is cached and excluded). A variant
that does not reach the target within --max-steps reports its best loss instead.

Variants (each adds one change to the one before it, so the table reads as an ablation):
    fp32           AdamW, cosine schedule, fp32 matmuls (what the reference trainer does on CPU)
    bf16           + bf16 autocast
    bf16-wsd       + warmup-stable-decay schedule
    bf16-wsd-muon  + Muon for the hidden matrices
    bf16-compile   bf16-wsd + torch.compile
bf16 variants are listed as skipped on a CPU that only emulates bf16 (~100x slower than fp32).
Writes bench/speedrun.json; prints a table last.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.peak import dtype_is_slow, machine, print_table, write_json  # noqa: E402
from bench.train import CACHE, corpus  # noqa: E402

VARIANTS = {
    "fp32": ["--dtype", "fp32", "--schedule", "cosine"],
    "bf16": ["--dtype", "bf16", "--schedule", "cosine"],
    "bf16-wsd": ["--dtype", "bf16", "--schedule", "wsd"],
    "bf16-wsd-muon": ["--dtype", "bf16", "--schedule", "wsd", "--optimizer", "muon"],
    "bf16-compile": ["--dtype", "bf16", "--schedule", "wsd", "--compile"],
}


def run(variant: str, args) -> dict:
    data, _ = corpus()
    out = CACHE / f"speedrun-{args.preset}-{variant}"
    cmd = [sys.executable, "-m", "minimind.cli", "pretrain", "--data", str(data / "pretrain.jsonl"),
           "--eval-data", str(data / "eval" / "heldout_pretrain.jsonl"), "--tokenizer", str(CACHE / "tokenizer"),
           "--preset", args.preset, "--out", str(out), "--steps", str(args.max_steps), "--batch-size", "32",
           "--max-seq-len", "256", "--eval-every", str(args.eval_every), "--eval-batches", "8",
           "--target-loss", str(args.target), "--log-every", "10", "--seed", "0", "--no-progress",
           *VARIANTS[variant]]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    evals = [r for r in rows if "eval_loss" in r]
    reached = [r for r in evals if r["eval_loss"] <= args.target]
    last = [r for r in rows if "loss" in r][-1]
    train_s = last["tokens_seen"] / last["tokens_per_s"]
    return {"variant": variant, "reached": bool(reached), "steps": reached[0]["step"] if reached else last["step"],
            "best eval loss": min(r["eval_loss"] for r in evals), "train s": train_s,
            "wall s": wall, "tok/s": last["tokens_per_s"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--target", type=float, default=1.2, help="held-out loss to reach")
    ap.add_argument("--max-steps", type=int, default=300, help="the schedule's length; stop early at --target")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--variants", default="fp32,bf16,bf16-wsd,bf16-wsd-muon")
    args = ap.parse_args()
    corpus()
    rows = []
    for v in args.variants.split(","):
        why = dtype_is_slow("bf16") if "bf16" in v else None
        rows.append({"variant": v, "note": f"skipped: bf16 {why}"} if why else run(v, args))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["train s"] if rows[0].get("reached") else None
    for r in rows:
        r["speedup"] = base / r["train s"] if base and r.get("reached") else None
    m = machine()
    write_json("speedrun", {"machine": m, "preset": args.preset, "target": args.target, "rows": rows})
    print(f"\nspeedrun {args.preset} to held-out loss {args.target}, {m['cpu']}, {m['threads']} threads, "
          f"torch {m['torch']}")
    print_table(rows, ["variant", "reached", "steps", "best eval loss", "train s", "tok/s", "speedup", "note"])


if __name__ == "__main__":
    main()
