"""Data-prepare throughput (MB/s of JSONL) and peak memory on a generated multi-GB file.

    python bench/prepare.py [--gb 2] [--kind pretrain|sft]

Builds a JSONL file of about --gb GB by repeating the built-in corpus (pretraining text or SFT
conversations), then runs `minimind data prepare` on it in a subprocess and reports MB/s (per core
too) and the subprocess's peak RSS. Writes bench/prepare.json; prints a table last.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.peak import machine, print_table, write_json  # noqa: E402
from bench.train import CACHE, corpus  # noqa: E402


def big_file(kind: str, gb: float) -> Path:
    data, _ = corpus()
    src = data / ("pretrain.jsonl" if kind == "pretrain" else "sft.jsonl")
    out = CACHE / f"big-{kind}-{gb:g}GB.jsonl"
    if out.is_file() and out.stat().st_size >= gb * 1e9 * 0.99:
        return out
    chunk = src.read_bytes()
    with open(out, "wb") as f:
        written = 0
        while written < gb * 1e9:
            f.write(chunk)
            written += len(chunk)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--kind", default="pretrain", choices=["pretrain", "sft"])
    args = ap.parse_args()
    path = big_file(args.kind, args.gb)
    out = CACHE / f"prepared-{args.kind}"
    subprocess.run(["rm", "-rf", str(out)])
    cmd = [sys.executable, "-m", "minimind.cli", "data", "prepare", str(path), "--tokenizer",
           str(CACHE / "tokenizer"), "--out", str(out), "--kind", args.kind, "--no-progress"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    el = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    mb = path.stat().st_size / 1e6
    cores = os.cpu_count() or 1
    row = {"kind": args.kind, "input MB": mb, "seconds": el, "MB/s": mb / el, "MB/s per core": mb / el / cores,
           "peak RSS MB": rss}
    write_json("prepare", {"machine": machine(), "rows": [row]})
    m = machine()
    print(f"\nprepare, {m['cpu']}, {cores} cores, torch {m['torch']}")
    print_table([row], list(row))


if __name__ == "__main__":
    main()
