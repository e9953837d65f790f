"""Matmul peak of this machine, measured in-process (importable by every throughput benchmark).

    python bench/peak.py        # prints bf16 / fp32 GFLOP/s and writes bench/peak.json

Every probe is time-bounded: on a CPU without bf16 units the bf16 matmul is measured once on a small
matrix and reported as slow (the note column) instead of running for minutes.

MFU (model FLOPs utilisation) = achieved training FLOP/s / peak FLOP/s, where the peak is the best
of a few square matmuls of the size that saturates the CPU/GPU, measured in the same run as the
benchmark (these machines are noisy: ratios from one run are meaningful, absolute numbers less so).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere: minimind importable


def dtype_is_slow(name: str, device: str = "cpu") -> str | None:
    """Why matmuls in dtype `name` are slow on `device`, or None when they are not.

    On a CPU without bf16 matrix units (AVX2-only, or MINIMIND_NO_FAST_BF16=1) bf16 matmuls are
    emulated at ~1 GFLOP/s, ~100x slower than fp32: benchmarks report such a dtype as slow and skip
    its long runs instead of hanging. fp16 has no CPU matrix units anywhere.
    """
    from minimind.runtime import cpu_has_fast_bf16

    if device.startswith("cuda"):
        return None if name != "bf16" or torch.cuda.is_bf16_supported() else "this GPU has no bf16"
    if name == "bf16" and not cpu_has_fast_bf16():
        return "emulated on this CPU (no AVX-512 BF16 / AMX): ~100x slower than fp32"
    if name == "fp16":
        return "no fp16 matrix units on CPUs"
    return None


def matmul_gflops(dtype: torch.dtype, n: int = 2048, device: str = "cpu", budget_s: float = 2.0) -> float:
    """GFLOP/s of an n x n x n matmul (2 n^3 FLOPs), best of the calls that fit in ~budget_s.

    runtime.matmul_gflops times one call first and stops there if it used the budget, so an
    emulated dtype costs one call, never minutes; a slow dtype is measured at n=256 (34 MFLOP).
    """
    from minimind import runtime

    name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))
    if dtype_is_slow(name, device):
        n = 256
    return runtime.matmul_gflops(dtype, n=n, device=device, budget_s=budget_s)


def machine() -> dict:
    """CPU, the flags that decide dtype speed, threads, versions, GPU (minimind.runtime.machine_info)."""
    from minimind.runtime import machine_info

    return machine_info()


def peaks(device: str = "cpu") -> dict:
    """{dtype: GFLOP/s}: the MFU denominators of the throughput benchmarks."""
    return {"fp32": matmul_gflops(torch.float32, device=device), "bf16": matmul_gflops(torch.bfloat16, device=device)}


def write_json(name: str, payload: dict) -> Path:
    path = Path(__file__).with_name(f"{name}.json")
    path.write_text(json.dumps(payload, indent=2))
    return path


def print_table(rows: list[dict], cols: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(cols, widths)))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return "" if v is None else str(v)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Matmul peak per dtype (time-bounded).")
    ap.add_argument("--out", default=str(Path(__file__).with_name("peak.json")), help="JSON file to write")
    out = Path(ap.parse_args().out)
    m = machine()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    p = peaks(dev)
    print(m)
    rows = [{"dtype": k, "GFLOP/s": v, "x fp32": v / p["fp32"], "note": dtype_is_slow(k, dev) or ""}
            for k, v in p.items()]
    print_table(rows, ["dtype", "GFLOP/s", "x fp32", "note"])
    out.write_text(json.dumps({"machine": m, "gflops": p, "slow": {k: dtype_is_slow(k, dev) for k in p}}, indent=2))
