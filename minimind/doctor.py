"""`minimind doctor`: one screen about this machine to paste into a bug report.

What it reports, and why each line is there:

* versions (minimind, Python, torch, tokenizers, numpy) and the platform;
* the CPU, the flags that decide how fast each dtype runs (AVX2, AVX-512, AVX-512 BF16, AMX), the
  threads torch uses, and any GPU;
* measured speed: fp32 and bf16 matmul GFLOP/s (training and prefill) and batch-1 GEMV GB/s
  (decoding), each probe bounded to about half a second (runtime.timed), so an emulated dtype
  (bf16 on a CPU without bf16 units runs ~100x slower) is reported as slow instead of hanging;
* what minimind will therefore do: the training and inference dtypes `--dtype auto` picks, and
  whether `--compile` can work (it needs a C++ compiler on CPU, Triton on CUDA);
* free memory and free disk where the command runs;
* which optional extras (`pip install minimind[serve]` ...) and loggers are installed.

Nothing here changes any state; `--json` prints the same facts for scripts.
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import sys
from pathlib import Path

# the flags `--wandb` / `--swanlab` / `--tensorboard` need; not extras of the package
LOGGERS = {"wandb": "wandb", "swanlab": "swanlab", "tensorboard": "tensorboard"}
# extras named in pyproject.toml, used when minimind runs from a source tree without metadata
FALLBACK_EXTRAS = {"serve": ["fastapi", "uvicorn"], "plot": ["matplotlib"], "export": ["gguf", "transformers"],
                   "llama": ["llama-cpp-python"]}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    import torch

    return {"minimind": _version("minimind") or "not installed (running from a source tree)",
            "python": platform.python_version(), "torch": torch.__version__,
            "tokenizers": _version("tokenizers"), "numpy": _version("numpy"),
            "platform": f"{platform.system()} {platform.release()} ({platform.machine()})"}


def extras() -> dict:
    """{extra: {package: version or None}} from the package metadata (pyproject's extras)."""
    try:
        reqs = metadata.requires("minimind") or []
    except metadata.PackageNotFoundError:
        reqs = []
    found: dict[str, list[str]] = {}
    for req in reqs:
        m = re.match(r"\s*([A-Za-z0-9_.\-]+).*;\s*extra\s*==\s*['\"]([^'\"]+)['\"]", req)
        if m and m.group(2) != "test":
            found.setdefault(m.group(2), []).append(m.group(1))
    found = found or FALLBACK_EXTRAS
    return {extra: {pkg: _version(pkg) for pkg in pkgs} for extra, pkgs in sorted(found.items())}


def memory_and_disk(path: str = ".") -> dict:
    out = {}
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.split()}
        out["memory_total_gb"] = info["MemTotal"] / 2**30
        out["memory_available_gb"] = info.get("MemAvailable", info.get("MemFree", 0)) / 2**30
    except (OSError, KeyError, ValueError, IndexError):
        pass  # not Linux: memory is left out rather than guessed
    disk = shutil.disk_usage(Path(path).resolve())
    out["disk_free_gb"], out["disk_path"] = disk.free / 2**30, str(Path(path).resolve())
    return out


def compile_support(device) -> str:
    """Can `--compile` work here? Inductor needs a C++ compiler on CPU and Triton on CUDA."""
    if importlib.util.find_spec("torch._dynamo") is None:  # found, not imported: that takes seconds
        return "no: this torch has no torch._dynamo (torch >= 2.0 needed)"
    if device.type == "cuda":
        return "yes (Triton found)" if importlib.util.find_spec("triton") else "no: Triton is not installed"
    cc = next((shutil.which(c) for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    return f"yes (C++ compiler {cc})" if cc else "no: no C++ compiler on PATH (install g++ or clang)"


def speed(device, budget_s: float = 0.5) -> dict:
    """Measured matmul GFLOP/s and GEMV GB/s per dtype; each probe is time-bounded."""
    import torch

    from .runtime import gemv_gbps, matmul_gflops

    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        out[f"matmul_{name}_gflops"] = matmul_gflops(dt, n=1024, device=device, budget_s=budget_s)
        out[f"gemv_{name}_gbps"] = gemv_gbps(dt, device=device, budget_s=budget_s)
    return out


def collect(path: str = ".", measure: bool = True) -> dict:
    import torch

    from .runtime import inference_dtype, machine_info, pick_device, pick_dtype

    device = pick_device("auto")
    report = {"versions": versions(), "machine": machine_info(), "cpu_count": os.cpu_count(),
              "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        report["gpu_memory_gb"] = props.total_memory / 2**30
        report["gpu_bf16"] = torch.cuda.is_bf16_supported()
    if measure:
        report["speed"] = speed(device)
    short = lambda dt: str(dt).replace("torch.", "")  # noqa: E731
    report["train_dtype"] = short(pick_dtype("auto", device))
    report["inference_dtype"] = short(inference_dtype(device))
    report["compile"] = compile_support(device)
    report["storage"] = memory_and_disk(path)
    report["extras"] = extras()
    report["loggers"] = {name: _version(dist) for name, dist in LOGGERS.items()}
    report["env"] = {k: v for k, v in sorted(os.environ.items())
                     if k.startswith("MINIMIND_") or k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")}
    return report


def _bf16_verdict(r: dict) -> str:
    s = r.get("speed")
    fast = r["train_dtype"] == "bfloat16"
    if not s:
        return "bf16 used for training" if fast else "training runs in fp32"
    ratio = s["matmul_bf16_gflops"] / max(s["matmul_fp32_gflops"], 1e-9)
    if fast:
        return f"bf16 matmul {ratio:.1f}x fp32: training uses bf16 autocast"
    why = "MINIMIND_NO_FAST_BF16 is set" if os.environ.get("MINIMIND_NO_FAST_BF16") else \
        "no bf16 matrix units (emulated)" if r["device"] == "cpu" else "not supported"
    return f"bf16 matmul {ratio:.2f}x fp32 ({why}): training and prefill stay in fp32"


def format_report(r: dict) -> str:
    v, m, st = r["versions"], r["machine"], r["storage"]
    lines = [f"minimind {v['minimind']} | Python {v['python']} | torch {v['torch']} | "
             f"tokenizers {v['tokenizers']} | numpy {v['numpy']}",
             f"platform   {v['platform']}",
             f"cpu        {m['cpu']} ({r['cpu_count']} logical cores, torch uses {m['threads']} threads)",
             f"cpu flags  {' '.join(m['flags']) or 'none of avx2/avx512/amx'}",
             f"device     {r['device']}" + (f" ({m['gpu']}, {r['gpu_memory_gb']:.0f} GiB)" if "gpu" in m else "")]
    if "speed" in r:
        s = r["speed"]
        lines += [f"matmul     fp32 {s['matmul_fp32_gflops']:,.0f} GFLOP/s | bf16 {s['matmul_bf16_gflops']:,.1f} GFLOP/s"
                  "   (training, prefill; n=1024, time-bounded)",
                  f"gemv       fp32 {s['gemv_fp32_gbps']:.1f} GB/s | bf16 {s['gemv_bf16_gbps']:.1f} GB/s"
                  f"   (batch-1 decoding, 256 MB of fp32 weights: bf16 weights "
                  f"{2 * s['gemv_bf16_gbps'] / max(s['gemv_fp32_gbps'], 1e-9):.1f}x as many per second)"]
    lines += [f"bf16       {_bf16_verdict(r)}",
              f"dtypes     --dtype auto trains in {r['train_dtype']}; inference runs in {r['inference_dtype']}",
              f"compile    {r['compile']}"]
    mem = (f"{st['memory_available_gb']:.1f} GiB free of {st['memory_total_gb']:.1f} GiB | "
           if "memory_total_gb" in st else "")
    lines.append(f"memory     {mem}disk {st['disk_free_gb']:.1f} GiB free at {st['disk_path']}")
    for extra, pkgs in r["extras"].items():
        have = ", ".join(f"{p} {ver}" if ver else f"{p} missing" for p, ver in pkgs.items())
        ok = all(pkgs.values())
        lines.append(f"extra      [{extra}] {'ok' if ok else 'incomplete'}: {have}"
                     + ("" if ok else f"  (pip install 'minimind[{extra}]')"))
    loggers = ", ".join(f"{k} {ver}" if ver else f"{k} missing" for k, ver in r["loggers"].items())
    lines.append(f"loggers    {loggers}")
    if r["env"]:
        lines.append("env        " + " ".join(f"{k}={val}" for k, val in r["env"].items()))
    return "\n".join(lines)


def cmd_doctor(args) -> dict:
    report = collect(args.path, measure=not args.no_speed)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        print(format_report(report))
    sys.stdout.flush()
    return report


def add_commands(sub) -> None:
    s = sub.add_parser("doctor", help="versions, device, measured dtype speed, memory, extras: paste into a bug report",
                       description="Print one screen about this machine: versions, CPU flags, measured fp32/bf16 "
                                   "matmul and GEMV speed (each probe bounded to ~0.5 s), the dtypes minimind "
                                   "picks, whether --compile works, free memory and disk, optional extras.")
    s.add_argument("--json", action="store_true", help="print the report as JSON")
    s.add_argument("--no-speed", action="store_true", help="skip the speed probes (about 2 s)")
    s.add_argument("--path", default=".", help="where to measure free disk space (default: here)")
    s.set_defaults(func=cmd_doctor)
