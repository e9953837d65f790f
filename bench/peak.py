"""Matmul peak of this machine, measured in-process (importable by every throughput benchmark).

    python bench/peak.py        # prints bf16 / fp32 GFLOP/s and writes bench/peak.json

MFU (model FLOPs utilisation) = achieved training FLOP/s / peak FLOP/s, where the peak is the best
of a few square matmuls of the size that saturates the CPU/GPU, measured in the same run as the
benchmark (these machines are noisy: ratios from one run are meaningful, absolute numbers less so).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Best-of-`repeats` GFLOP/s of an n x n x n matmul (2 n^3 FLOPs)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    best = float("inf")
    iters = 3 if device == "cpu" else 20
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(iters):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - t) / iters)
    return 2 * n**3 / best / 1e9


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def peaks(device: str = "cpu") -> dict:
    out = {"fp32": matmul_gflops(torch.float32, device=device)}
    out["bf16"] = matmul_gflops(torch.bfloat16, device=device)
    return out


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
    m = machine()
    p = peaks("cuda" if torch.cuda.is_available() else "cpu")
    print(m)
    print_table([{"dtype": k, "GFLOP/s": v} for k, v in p.items()], ["dtype", "GFLOP/s"])
    write_json("peak", {"machine": m, "gflops": p})
