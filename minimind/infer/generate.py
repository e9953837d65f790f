"""Loading a checkpoint for generation.

    model, tok = load_for_inference(checkpoint)      the model on the best device, in bf16 where
                                                      bf16 matmuls are fast (else fp32)
    engine = load_engine(checkpoint)                  the generation engine over it (engine.py),
                                                      decoding in the fastest format measured here

Generation itself (batching, sampling, stop strings, log-probs) is the engine's: see engine.py.
SamplingParams, sample_next and think_suppression are re-exported here for older imports.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..runtime import pick_device
from .decode import inference_dtype
from .engine import Engine
from .sampling import SamplingParams, sample_next, think_suppression  # noqa: F401 (re-exported)

DTYPE_NAMES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _dtype(name: str, dev: torch.device) -> torch.dtype:
    if name == "auto":
        return inference_dtype(dev)
    if name not in DTYPE_NAMES:
        raise UserError(f"--dtype {name!r}: choose auto, bf16, fp16 or fp32", param="dtype")
    if name == "fp16" and dev.type == "cpu":
        raise UserError("--dtype fp16 on CPU is ~100x slower than bf16; use bf16 or fp32", param="dtype")
    return DTYPE_NAMES[name]


def load_for_inference(checkpoint, device: str = "auto", dtype: str = "auto", quantize: str = "none"):
    """(model, tokenizer) on the best device, in bf16 where that is fast (else fp32).

    quantize="int8" stores the linear layers' weights in int8 (CPU; see infer/quant.py). The engine
    (load_engine) prefers to keep the loaded model as it is and decode with an int8 copy.
    """
    from ..checkpoint import load_checkpoint
    from .quant import apply_quantization

    dev = pick_device(device)
    model, tok = load_checkpoint(checkpoint, device=dev, dtype=_dtype(dtype, dev))
    return apply_quantization(model, quantize), tok


def load_engine(checkpoint, device: str = "auto", dtype: str = "auto", quantize: str = "none",
                compile: str = "auto", lora: str | None = None, **engine_kw) -> Engine:
    """The generation engine over a checkpoint: prefill in the loaded model's dtype, decode in the
    fastest format measured on this machine (int8 weights when quantize="int8")."""
    from .quant import QUANT_MODES

    if quantize not in QUANT_MODES:
        raise UserError(f"--quantize {quantize!r}: choose one of {', '.join(QUANT_MODES)}", param="quantize")
    model, tok = load_for_inference(checkpoint, device, dtype)
    if lora:
        model = apply_lora(model, lora)
    weights = "int8" if quantize == "int8" else "auto"
    return Engine(model, tok, decode_weights=weights, compile=compile, frozen_weights=True, **engine_kw)


def apply_lora(model, adapter: str):
    """Load a LoRA adapter and fold it into the weights (generating then costs nothing extra)."""
    try:
        from .. import lora
    except ImportError:
        lora = None
    if not hasattr(lora, "load_adapter"):
        raise UserError(f"--lora {adapter}: LoRA adapters are not available in this installation "
                        "(no minimind.lora.load_adapter)")
    model = lora.load_adapter(model, adapter) or model
    merge = getattr(lora, "merge_lora", None)
    return merge(model).eval() if merge else model


def Generator(model, tokenizer) -> Engine:
    """The engine over a model, decoding with the model's own weights (the older entry point)."""
    return Engine(model, tokenizer)
