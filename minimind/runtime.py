"""The floor that training and inference both stand on: device, dtype, distributed setup, seeding.

Nothing here knows about models or data. `train/` and `infer/` import from this module and never
from each other.

Dtype policy. On CUDA, bf16 where the GPU supports it (else fp16, which training pairs with a
gradient scaler). On CPU, bf16 only where the CPU has bf16 matrix units (AVX-512 BF16 / AMX,
reported by oneDNN): there a bf16 matmul is 2-4x faster than fp32; elsewhere it is emulated and
~100x slower, so training and prefill stay in fp32. fp16 is never a CPU path.
"""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .errors import UserError


# ----------------------------------------------------------------------------- devices

def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        try:
            dev = torch.device(name)
        except (RuntimeError, ValueError):
            raise UserError(f"--device {name}: not a device; use auto, cpu, cuda, cuda:N or mps") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is available; use --device cpu or auto")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: bf16 where the hardware runs it fast, else fp32 (fp16 only if asked)."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu":
            return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
        return torch.float32
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in table:
        raise UserError(f"--dtype {name!r}: choose auto, bf16, fp16 or fp32")
    if name == "fp16" and device.type == "cpu":
        raise UserError("--dtype fp16 on CPU is ~100x slower than bf16 (no fp16 matrix units); use bf16 or fp32")
    return table[name]


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------- distributed

@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> "Dist":
        """This process's place under torchrun (RANK, LOCAL_RANK, WORLD_SIZE), without joining anything."""
        if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return cls()
        return cls(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), int(os.environ["WORLD_SIZE"]))


def process_device(d: Dist, device_name: str) -> torch.device:
    """The device of this process: under torchrun on CUDA, GPU number LOCAL_RANK."""
    device = pick_device(device_name)
    if d.enabled and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    return device


def join_process_group(d: Dist, device: torch.device) -> None:
    """Join the torchrun process group (NCCL on GPUs, gloo on CPU); nothing for one process.

    Call it after slow single-process work (data preparation): collectives time out."""
    if d.enabled and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def inference_dtype(device) -> torch.dtype:
    """bf16 where it is fast (CUDA with bf16, CPUs with AVX-512 bf16 / AMX), else fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN reports bf16 matrix units (AVX-512 BF16 / AMX).

    MINIMIND_NO_FAST_BF16=1 makes it False: the slow-bf16 paths (fp32 training, benchmarks that skip
    or time-bound bf16) can then be exercised on a machine that has the units."""
    if os.environ.get("MINIMIND_NO_FAST_BF16", "") not in ("", "0"):
        return False
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# ----------------------------------------------------------------------------- RNG state

def rng_state() -> dict:
    """Python, numpy, torch (and CUDA) generator states as tensors and plain values, so that a
    checkpoint holding them loads with torch.load(weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    s = {"python": random.getstate(), "torch": torch.get_rng_state(),
         "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    n = s["numpy"]
    if isinstance(n, dict):
        n = (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    np.random.set_state(n)  # (a tuple in checkpoints written before the dict form)
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------- frozen models

def freeze(model):
    """A model that is only ever evaluated: no grads, eval mode (no dropout, no MoE aux loss)."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


# ----------------------------------------------------------------------------- memory

def pin_malloc_threshold() -> None:
    """glibc raises its mmap threshold each time a large block is freed, after which tensors of
    changing shapes (DPO's length-bucketed batches, a server's requests) are carved from the heap
    and fragment it: resident memory grew ~60 MB per step of variable-shape batches. A fixed
    threshold returns big blocks to the OS, at a price: every large tensor is then a fresh mmap
    whose pages the kernel zeroes, which cost 26% of pretraining and ~50% of packed-SFT throughput
    (bench/RESULTS.md). So only commands whose shapes vary set `varying_shapes` and pin it;
    pretraining and packed SFT have fixed shapes and keep glibc's default.
    MINIMIND_MMAP_THRESHOLD=BYTES overrides the threshold (0: never pin)."""
    import ctypes

    threshold = int(os.environ.get("MINIMIND_MMAP_THRESHOLD", 1 << 17))
    if threshold <= 0:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


# ----------------------------------------------------------------------------- measured speed

def timed(fn, budget_s: float = 0.5, min_reps: int = 1) -> float:
    """Best seconds per call of `fn()` within about `budget_s` of wall time.

    One warm-up call is timed too: if it alone uses the budget (an emulated dtype, ~100x slow),
    no more calls are made, so a measurement never hangs on a slow path.
    """
    import time

    t0 = time.perf_counter()
    fn()
    best = first = time.perf_counter() - t0
    reps = 0
    while reps < min_reps or time.perf_counter() - t0 + best < budget_s:
        if first >= budget_s:
            break
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        reps += 1
    return best


def _sync(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def matmul_gflops(dtype: torch.dtype, n: int = 1024, device="cpu", budget_s: float = 0.5) -> float:
    """GFLOP/s of an n x n x n matmul (2 n^3 FLOPs) in `dtype`, measured within ~budget_s."""
    device = torch.device(device)
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    sync = _sync(device)

    def step():
        a @ b
        sync()

    return 2 * n**3 / timed(step, budget_s) / 1e9


def gemv_seconds(dtype: torch.dtype, rows: int, cols: int, count: int = 1, device="cpu",
                 budget_s: float = 0.3) -> float:
    """Best seconds for `count` (1 x cols) @ (cols x rows) products, each with its own weight matrix.

    Batch-1 decoding multiplies one row vector by every weight matrix of the model once per token.
    Where those matrices outgrow the CPU's caches they stream from memory, and then the dtype with
    fewer bytes wins (bf16 moves half of fp32's); where they fit, the faster kernel wins (on CPUs
    without bf16 units, fp32). So give `count` matrices the model's weight count, not one.
    Time-bounded: a slow (emulated) dtype stops after one pass."""
    device = torch.device(device)
    w = torch.randn(rows, cols, device=device).to(dtype)
    ws = [w] + [w.clone() for _ in range(count - 1)]  # distinct memory: nothing stays cached
    x = torch.randn(1, cols, device=device).to(dtype)
    sync = _sync(device)

    def step():
        for m in ws:
            torch.nn.functional.linear(x, m)
        sync()

    return timed(step, budget_s)


def gemv_gbps(dtype: torch.dtype, rows: int = 4096, cols: int = 1024, count: int = 16, device="cpu",
              budget_s: float = 0.3) -> float:
    """GB/s of weight bytes streamed by batch-1 decoding's products, over `count` matrices of
    (rows x cols) (16 x 4M weights: 256 MB in fp32, more than a CPU's last-level cache)."""
    elem = torch.finfo(dtype).bits // 8
    return count * rows * cols * elem / gemv_seconds(dtype, rows, cols, count, device, budget_s) / 1e9


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info() -> dict:
    """CPU model, the flags that decide dtype speed, threads, torch and Python versions, GPU."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    flags = cpu_flags()
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni", "avx_vnni", "fma")
    info = {"cpu": cpu, "flags": [f for f in wanted if f in flags], "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "fast_bf16_matmul": cpu_has_fast_bf16()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
