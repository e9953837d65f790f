"""The decode step, and the weight format it runs in: chosen by what is fast on this machine.

Decoding one token per sequence multiplies a handful of row vectors by every weight matrix: at
small batch it is bound by how fast the weights stream from memory (bytes per token) and by the
overhead of launching a few hundred small operations, not by arithmetic. Prefill (a whole
prompt at once) is a real matrix product and is bound by arithmetic. So the two phases may run
in different formats (gpt-fast, pytorch-labs 2023, shows the same recipe in plain PyTorch):

    prefill   the loaded model: bf16 where this CPU/GPU multiplies bf16 matrices fast, else fp32
              (a CPU without bf16 units emulates bf16 matmuls ~100x slower)
    decode    bf16 weights (half the bytes of fp32) wherever bf16 matrix-vector products over as
              many weights as the model has are faster than fp32 -- measured once per machine and
              model size and cached on disk, because CPUs without bf16 matrix units still stream
              bf16 weights faster once they outgrow the cache --, or int8 weights on request
              (`--quantize int8`, a quarter of the bytes, see quant.py; its residual stream stays fp32)

Both phases share one KV cache (stored in the decode model's dtype). The step itself runs as:

    eager       the model's forward; always available, always correct (the reference)
    compiled    CPU: torch.compile (inductor's C++ backend) of the whole step with the batch size
                and the number of KV blocks as dynamic dimensions: one graph whose fused loops
                replace ~300 small eager ops per token; when the weights are
                known not to change, they are frozen into the graph, prepacked, and its matrix
                products autotuned (FROZEN below)
    CUDA graph  GPU: the eager step captured once per (batch bucket, block bucket) and replayed;
                inputs are copied into static buffers, padding rows write into scratch block 0

A compiled step's greedy output equals the eager step's (tests/test_decode_fast.py).

Environment overrides (for testing one machine class on another, or pinning a choice):
    MINIMIND_BF16_MATMUL=slow|fast   whether bf16 matrix products count as fast (prefill dtype)
    MINIMIND_DECODE_WEIGHTS=fp32|bf16|int8   skip the measurement
    MINIMIND_CACHE=DIR               where the measured choice is cached (default ~/.cache/minimind)
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..model import fuse_projections
from ..runtime import cpu_has_fast_bf16, gemv_seconds, machine_info
from ..runtime import inference_dtype as runtime_inference_dtype

log = logging.getLogger("minimind.decode")
DECODE_WEIGHTS = ("auto", "model", "fp32", "bf16", "int8")
COMPILE_MODES = ("auto", "on", "off")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ----------------------------------------------------------------------------- what is fast here

def fast_bf16_matmul() -> bool:
    """Whether bf16 matrix products are fast on this CPU (MINIMIND_BF16_MATMUL=slow|fast overrides)."""
    forced = os.environ.get("MINIMIND_BF16_MATMUL", "").lower()
    if forced in ("slow", "fast"):
        return forced == "fast"
    return cpu_has_fast_bf16()


def inference_dtype(device) -> torch.dtype:
    """The loaded model's (= prefill's) dtype: runtime's choice (bf16 where bf16 matmuls are fast,
    else fp32), with the MINIMIND_BF16_MATMUL override on CPU."""
    if torch.device(device).type == "cpu":
        return torch.bfloat16 if fast_bf16_matmul() else torch.float32
    return runtime_inference_dtype(device)


def cache_dir() -> Path:
    return Path(os.environ.get("MINIMIND_CACHE") or Path.home() / ".cache" / "minimind")


STREAM_CAP = 64 * 2**20  # weights timed at most (256 MB in fp32): enough to outgrow any cache


def streamed_weights(model) -> int:
    """How many weights one batch-1 decode step reads: every matrix once (the output head
    included; an untied input embedding only has one row read per token; of a MoE layer's routed
    experts, num_experts_per_tok)."""
    embed, cfg = model.model.embed_tokens.weight, model.config
    tied = model.lm_head.weight is embed
    routed = cfg.num_experts_per_tok / cfg.num_experts if cfg.num_experts else 1.0
    n = 0.0
    for name, p in model.named_parameters():  # a tied matrix is listed once
        if p.dim() == 2 and (tied or p is not embed):
            n += p.numel() * (routed if ".experts." in name else 1.0)
    return int(n)


def measured_decode_weights(model) -> str:
    """fp32 or bf16 for an fp32 model's decode weights on this CPU: the faster of the two for
    matrix-vector products over as many weights as the model has, in matrices of its widest
    layer's shape (so a model larger than the caches is timed streaming from memory, as it
    decodes), measured once and cached per machine, shape and size."""
    config, info = model.config, machine_info()
    shape = (config.intermediate_size or config.hidden_size * 4, config.hidden_size)
    count = max(1, round(min(streamed_weights(model), STREAM_CAP) / (shape[0] * shape[1])))
    key = (f"{info['cpu']}|{','.join(info['flags'])}|torch {info['torch']}|{info['threads']} threads|"
           f"{shape} x {count}")
    path = cache_dir() / "decode_weights.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]["choice"]
    t = {name: gemv_seconds(DTYPES[name], *shape, count) for name in ("fp32", "bf16")}
    choice = min(t, key=t.get)
    known[key] = {"choice": choice, "seconds": t}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=1))
        tmp.replace(path)
    except OSError as e:  # a read-only home: measure again next time
        log.warning("could not cache the decode format in %s: %s", path, e)
    log.info("decode weights: %s (%d GEMVs of %s: %s)", choice, count, shape,
             {k: f"{v * 1e6:.0f} us" for k, v in t.items()})
    return choice


def choose_decode_weights(model, requested: str = "auto") -> str:
    """The decode weights' format: `requested`, or for "auto" the fastest lossless one here.
    int8 is never picked automatically (it rounds the weights); ask for it."""
    if requested not in DECODE_WEIGHTS:
        raise UserError(f"decode weights {requested!r}: choose one of {', '.join(DECODE_WEIGHTS)}")
    forced = os.environ.get("MINIMIND_DECODE_WEIGHTS", "")
    if requested == "auto" and forced:
        if forced not in DECODE_WEIGHTS[1:]:
            raise UserError(f"MINIMIND_DECODE_WEIGHTS={forced!r}: choose one of {', '.join(DECODE_WEIGHTS[1:])}")
        requested = forced
    p = next(model.parameters())
    if requested != "auto":
        return requested
    if p.device.type != "cpu" or p.dtype != torch.float32:
        return "model"  # GPU, or already bf16 because bf16 is fast here
    return measured_decode_weights(model)


def decode_model(model, weights: str):
    """The model the decode step runs: `model` itself, or a copy with converted weights. A copy
    also gets fused projections (model.fuse_projections: 4 matrix products per layer, not 7)."""
    dtype = next(model.parameters()).dtype
    if weights == "model" or DTYPES.get(weights) == dtype:
        return model  # shared with the caller (it may be training it): left as it is
    if weights == "int8" and any(type(m).__name__ == "Int8Linear" for m in model.modules()):
        return model  # already quantized
    copy_ = copy.deepcopy(model).eval()
    fuse_projections(copy_)
    if weights == "int8":
        from .quant import quantize_int8

        # the residual stream stays fp32 (the products still run on bf16 activations,
        # quant.py): a lone row's graph is then exact (CompiledStep) and a batch-1 step measured
        # 1.25-1.4x faster than with a bf16 residual stream on a Xeon with AMX (bench/RESULTS.md)
        quantize_int8(copy_.float())
        return copy_
    return copy_.to(DTYPES[weights])


def activation_dtype(model) -> torch.dtype:
    """The residual stream's dtype (int8 layers take and return it), = the KV cache's dtype."""
    return model.model.embed_tokens.weight.dtype


# ----------------------------------------------------------------------------- the step

def decode_forward(model, cache, ids, positions, table):
    """One token for each of n rows: ids (n,), positions (n,), table (n, nb) -> logits (n, V).

    Row i attends over key columns 0..positions[i] of its blocks (the rest is masked)."""
    span = table.shape[1] * cache.block_size
    mask = (torch.arange(span, device=ids.device)[None, :] <= positions[:, None])[:, None, None, :]  # (n, 1, 1, S)
    view = cache.decode_view(table, positions)
    return model(ids[:, None], position_ids=positions[:, None], mask=mask, cache=view).logits[:, -1]


class EagerStep:
    """The reference decode step."""

    name = "eager"

    def __init__(self, model, cache):
        self.model, self.cache = model, cache

    def __call__(self, ids, positions, table):
        return decode_forward(self.model, self.cache, ids, positions, table)


# The graph is tested against the eager step, so inductor's per-call size/stride checks of its
# kernels' outputs (~150 per token) are skipped. With weights that will not change, inductor may
# also treat them as constants ("freezing"): it prepacks them for its matrix kernels and autotunes
# its own C++ GEMM templates against ATen's; and dynamo may skip re-checking them on every call.
# On a Xeon with AMX this halved a bf16 decode step and cut an int8 one by half (bench/RESULTS.md).
# A frozen graph also gets a C++ wrapper: the ~100 kernel calls of a step are made from C++, not
# from Python (+16% int8 tokens/s at batch 1 on that Xeon, at the price of a longer compilation).
FAST = {"size_asserts": False, "scalar_asserts": False}
FROZEN = {**FAST, "freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN", "cpp_wrapper": True}


class CompiledStep(EagerStep):
    """torch.compile of the step with the batch size and block count as dynamic dimensions: one
    graph for every batch of two or more rows. dynamo compiles a separate graph for a batch of
    one, and a request's greedy output must not depend on whether it runs alone, so a lone row
    takes that graph only where it computes exactly what the batched graph does, checked on the
    first lone row (bitwise equal logits). Otherwise it runs as a batch of two (the second row:
    token 0 at position 0 of scratch block 0). Measured on a Xeon with AMX: int8 products are
    computed row by row, so the lone graph is exact and saves the padding row's work (about a
    fifth of an int8 step); fp32 and bf16 matrix kernels round differently for one row than for
    two, so those keep the padding (at batch 1 it costs little: the weights are read once either
    way). frozen=True snapshots the weights (see FROZEN): only for a model nobody will train while
    this step lives."""

    name = "compiled"

    def __init__(self, model, cache, frozen: bool = False):
        super().__init__(model, cache)
        self.frozen, self.compiled = frozen, False
        self.lone_exact: bool | None = None  # None: not checked yet
        self.fn = torch.compile(decode_forward, dynamic=False, options=FROZEN if frozen else FAST)

    def __call__(self, ids, positions, table):
        if len(ids) > 1 or self.lone_exact is False:
            return self._batched(ids, positions, table)
        out = self._run(ids, positions, table)
        if self.lone_exact is None:  # the same step padded writes the same keys and values again
            padded = self._batched(ids, positions, table)
            self.lone_exact = torch.equal(out, padded)
            log.info("decode: a lone row %s", "runs alone (exact)" if self.lone_exact else "runs as a batch of two")
            return padded
        return out

    def _batched(self, ids, positions, table):
        n = len(ids)
        if n == 1:
            ids, positions = F.pad(ids, (0, 1)), F.pad(positions, (0, 1))
            table = F.pad(table, (0, 0, 0, 1))
        for t in (ids, positions, table):
            torch._dynamo.mark_dynamic(t, 0)
        return self._run(ids, positions, table)[:n]

    def _run(self, ids, positions, table):
        torch._dynamo.mark_dynamic(table, 1)
        if self.frozen and self.compiled:  # check only the guards that tell graphs apart
            try:
                with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                    return self.fn(self.model, self.cache, ids, positions, table)
            except RuntimeError as e:  # inputs no graph was compiled for (a new dtype, grad mode ...)
                if "Recompilation" not in str(e):
                    raise
        out = self.fn(self.model, self.cache, ids, positions, table)
        self.compiled = True
        return out


def _bucket(n: int) -> int:
    return 1 << (n - 1).bit_length()


class CudaGraphStep(EagerStep):
    """The eager step captured as CUDA graphs, one per (batch bucket, block bucket), powers of 2."""

    name = "cuda-graph"

    def __init__(self, model, cache):
        super().__init__(model, cache)
        self.graphs: dict[tuple[int, int], tuple] = {}

    def __call__(self, ids, positions, table):
        n, nb = table.shape
        key = (_bucket(n), _bucket(nb))
        if key not in self.graphs:
            self.graphs[key] = self._capture(*key)
        graph, s_ids, s_pos, s_table, s_out = self.graphs[key]
        s_ids.zero_(), s_pos.zero_(), s_table.zero_()  # padding rows: token 0 at position 0 of block 0
        s_ids[:n].copy_(ids), s_pos[:n].copy_(positions), s_table[:n, :nb].copy_(table)
        graph.replay()
        return s_out[:n]

    def _capture(self, n: int, nb: int):
        dev = self.cache.k[0].device
        s_ids = torch.zeros(n, dtype=torch.long, device=dev)
        s_pos = torch.zeros(n, dtype=torch.long, device=dev)
        s_table = torch.zeros(n, nb, dtype=torch.long, device=dev)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up runs, as CUDA graph capture requires
            for _ in range(2):
                super().__call__(s_ids, s_pos, s_table)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            s_out = super().__call__(s_ids, s_pos, s_table)
        return graph, s_ids, s_pos, s_table, s_out


def make_step(model, cache, compile: str = "off", frozen: bool = False):
    """The decode step for this device: compile "on" uses the fast path (CPU: torch.compile, GPU:
    CUDA graphs), "off" the eager one, "auto" the fast one where it is known to pay (GPU; on CPU
    a compilation takes minutes, so the long-running server and the benchmark ask for "on").
    frozen: the weights will not change (the step may snapshot them)."""
    if compile not in COMPILE_MODES:
        raise UserError(f"--compile {compile!r}: choose one of {', '.join(COMPILE_MODES)}")
    dev = next(model.parameters()).device
    fast = compile == "on" or (compile == "auto" and dev.type == "cuda")
    if not fast or getattr(model.config, "is_moe", False):  # MoE routing syncs with the host: eager
        return EagerStep(model, cache)
    if dev.type == "cuda":
        return CudaGraphStep(model, cache)
    if dev.type == "cpu":
        return CompiledStep(model, cache, frozen)
    return EagerStep(model, cache)
