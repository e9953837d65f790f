"""Int8 weight-only quantization for faster CPU decoding (`--quantize int8`).

Generating one token at batch 1 multiplies a single row vector by every weight matrix once, so its
speed is bounded by how fast the weights stream from memory, not by arithmetic. Storing the
weights in int8 moves a quarter of the fp32 bytes (half of bf16); a layer takes and returns the
model's dtype, and the product inside runs on bf16 activations (the kernel's fast path on every
CPU). Per output channel n (a row of W, shape (N, K)):

    s_n     = max_k |W_nk| / 127                          one scale per row
    Q_nk    = round(W_nk / s_n)      in [-127, 127]       int8
    y_n     = s_n * sum_k x_k Q_nk   (+ b_n)              = x W^T up to rounding error |W - sQ| <= s/2

(the "absmax" row-wise scheme of LLM.int8(), Dettmers et al. 2022, without its outlier split: our
models are small and have no outlier features). The product runs in PyTorch's fused int8-weight
kernel `torch._weight_int8pack_mm`, which dequantizes on the fly.

Only inference uses this (the weights are frozen). Linear layers of attention and MLP (experts
included) and the output head are quantized; the embedding table, norms and router stay as they
are. Greedy outputs usually equal the unquantized model's for many tokens and logits move by
well under 1% (tests/test_quant.py measures it).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import UserError

QUANT_MODES = ("none", "int8")


def int8_available(device) -> bool:
    return torch.device(device).type == "cpu" and hasattr(torch, "_weight_int8pack_mm")


class Int8Linear(nn.Module):
    """A frozen nn.Linear with int8 weights and one scale per output channel."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype):
        """dtype: the activations' dtype inside the product (the layer returns its input's dtype)."""
        super().__init__()
        w = linear.weight.detach().float()  # (N, K)
        scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)  # (N,)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(dtype))
        bias = linear.bias.detach().to(dtype) if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x):
        shape, dtype = x.shape, x.dtype
        x2 = x.reshape(-1, self.in_features).to(self.scale.dtype).contiguous()  # (M, K)
        y = torch._weight_int8pack_mm(x2, self.qweight, self.scale)  # (M, N) = x Q^T * s
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def quantize_int8(model) -> int:
    """Replace the model's linear layers (not the router) by Int8Linear in place; -> how many."""
    dev = next(model.parameters()).device
    if not int8_available(dev):
        raise UserError(f"--quantize int8 runs on CPU only (this model is on {dev}); use --quantize none",
                        param="quantize")
    dtype = next(model.parameters()).dtype
    if dtype == torch.float32:
        # the kernel's fp32 path is 3x slower than its bf16 one on CPUs with AVX-512 bf16, 8.5x
        # on AVX2-only ones (bench/RESULTS.md): the products run in bf16, the layers return fp32
        dtype = torch.bfloat16
    if model.lm_head.weight is model.model.embed_tokens.weight:  # tied: the head gets its own int8 copy
        model.lm_head = nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=False)
        model.lm_head.weight = nn.Parameter(model.model.embed_tokens.weight.detach(), requires_grad=False)
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and not name.endswith("gate")]  # keep the MoE router exact
    for name, m in targets:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, Int8Linear(m, dtype))
    return len(targets)


def apply_quantization(model, mode: str):
    if mode not in QUANT_MODES:
        raise UserError(f"--quantize {mode!r}: choose one of {', '.join(QUANT_MODES)}", param="quantize")
    if mode == "int8":
        quantize_int8(model)
    return model


def add_quantize_arg(g) -> None:
    g.add_argument("--quantize", default="none", choices=list(QUANT_MODES),
                   help="int8: int8 weights for the linear layers, faster decoding on CPU (batch 1: ~1.7x bf16 "
                        "with AVX-512 bf16, ~1.8x bf16 and 3.6x fp32 on AVX2 only; see bench/RESULTS.md)")
