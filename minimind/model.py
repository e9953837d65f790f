"""The whole MiniMind transformer in one file.

A pre-norm decoder-only transformer (Llama / Qwen3 family):

    h_0      = E[x]                                           token embedding, (B, T, d)
    a_l      = h_{l-1} + Attn(RMSNorm(h_{l-1}))               grouped-query attention with RoPE
    h_l      = a_l + FFN(RMSNorm(a_l))                        SwiGLU MLP, or a mixture of SwiGLU experts
    logits   = RMSNorm(h_L) W_out^T                           W_out tied to E unless configured otherwise

RMSNorm (Zhang & Sennrich 2019):      y = x / sqrt(mean(x^2) + eps) * g
SwiGLU (Shazeer 2020):                FFN(x) = W_down (silu(W_gate x) * W_up x)
RoPE (Su et al. 2021):                rotate each (x_i, x_{i+d/2}) pair of q and k by angle m * theta_i,
                                      theta_i = base^(-2i/d), m = position
YaRN (Peng et al. 2023):              for context extension by a factor s, blend per frequency between
                                      the original theta_i (high frequencies, many rotations in the
                                      original window) and theta_i / s (low frequencies) with a linear
                                      ramp between beta_fast and beta_slow rotations, and scale q.k by
                                      (0.1 ln s + 1)^2 through cos/sin
GQA (Ainslie et al. 2023):            h query heads share g key/value heads (h % g == 0)
Attention:                            softmax(q k^T / sqrt(hd) + causal mask) v, via PyTorch's fused
                                      scaled_dot_product_attention
MoE (Shazeer 2017; DeepSeekMoE 2024): p = softmax(W_g x); keep the top-k experts, weights p_topk
                                      (renormalised to sum 1 if norm_topk_prob); y = sum_k w_k E_k(x)
                                      + shared experts on every token
Load-balancing loss (Switch, Fedus et al. 2021):
                                      aux = alpha * E * sum_i f_i * P_i, f_i = share of routed slots
                                      that went to expert i, P_i = mean router probability of expert i;
                                      equals alpha when routing is uniform

Parameter names follow Hugging Face Llama / Qwen3 / Qwen2-MoE so `model.safetensors` is readable by
transformers after renaming only `config.json`'s model_type.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # x / sqrt(mean(x^2) + eps) * g, in fp32 (bf16 sums of squares lose precision), returned in
        # the input dtype; F.rms_norm is the same formula as one fused kernel
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


# ----------------------------------------------------------------------------- RoPE + YaRN

def rope_frequencies(head_dim: int, theta: float, rope_scaling: dict | None):
    """Inverse frequencies theta_i (head_dim/2,) and the attention scale factor (1.0 without YaRN)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    if not rope_scaling:
        return inv_freq.float(), 1.0
    s = float(rope_scaling["factor"])
    orig = float(rope_scaling.get("original_max_position_embeddings", 2048))
    beta_fast = float(rope_scaling.get("beta_fast", 32.0))
    beta_slow = float(rope_scaling.get("beta_slow", 1.0))

    def dim_for_rotations(n_rot):  # the i whose wavelength fits n_rot times in the original window
        return head_dim * math.log(orig / (n_rot * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(dim_for_rotations(beta_fast)), 0)
    high = min(math.ceil(dim_for_rotations(beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    keep = 1.0 - ramp  # 1: keep the original frequency (extrapolate), 0: interpolate by s
    inv_freq = inv_freq / s * (1 - keep) + inv_freq * keep
    mscale = 0.1 * math.log(s) + 1.0 if s > 1 else 1.0
    return inv_freq.float(), mscale


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x, cos, sin):
    """x: (B, T, H, hd); cos, sin: (B, T, 1, hd) — rotate pairs (x_i, x_{i+hd/2})."""
    return x * cos + rotate_half(x) * sin


# ----------------------------------------------------------------------------- KV cache

class KVCache:
    """The simplest cache: keys/values of a batch that advances in lockstep, (B, g, max_len, hd)
    per layer, pre-allocated and written in place. `pos` is the number of positions filled.

    Any object with `update(layer, k, v) -> (keys, values to attend over)` can be passed as a
    model's `cache`. This one tracks positions itself (the model reads and advances `pos`); the
    generation engine's paged cache (minimind/infer/kvcache.py) instead takes explicit per-row
    `position_ids` and a mask with every call, and stores nothing between calls but the keys and
    values themselves.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, device=None, dtype=None):
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.max_len = max_len
        self.pos = 0

    def update(self, layer: int, k, v):
        """Write k, v (B, g, T, hd) at [pos, pos+T) and return the filled prefix of the cache."""
        T = k.shape[2]
        end = self.pos + T
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > max_len {self.max_len}")
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end].to(k.dtype), self.v[layer][:, :, :end].to(v.dtype)

    def select(self, rows):
        """Keep only the given batch rows (used when some sequences of a batch finish)."""
        self.k = [k[rows] for k in self.k]
        self.v = [v[rows] for v in self.v]


# ----------------------------------------------------------------------------- blocks

class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        d, bias = cfg.hidden_size, cfg.attention_bias
        self.q_proj = nn.Linear(d, self.n_heads * self.hd, bias=bias)
        self.k_proj = nn.Linear(d, self.n_kv * self.hd, bias=bias)
        self.v_proj = nn.Linear(d, self.n_kv * self.hd, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.hd, d, bias=False)
        if cfg.qk_norm:  # Qwen3: RMSNorm over head_dim of each q and k head, before RoPE
            self.q_norm = RMSNorm(self.hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.hd, cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None
        self.qkv_proj = None  # set by fuse_projections() on inference copies: one product, not three

    def project(self, x):
        """x (B, T, d) -> q (B, T, h*hd), k, v (B, T, g*hd)."""
        if self.qkv_proj is None:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        return self.qkv_proj(x).split([self.n_heads * self.hd, self.n_kv * self.hd, self.n_kv * self.hd], dim=-1)

    def forward(self, x, cos, sin, mask, cache):
        B, T, _ = x.shape
        q, k, v = self.project(x)
        q = q.view(B, T, self.n_heads, self.hd)  # (B, T, h, hd)
        k = k.view(B, T, self.n_kv, self.hd)  # (B, T, g, hd)
        v = v.view(B, T, self.n_kv, self.hd)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)
        if cache is not None:  # store this step's keys/values; get back all the keys/values to attend over
            k, v = cache.update(self.layer_idx, k, v)
        # GQA: query head j reads kv head j // (h/g); SDPA does that without copying k and v
        gqa = self.n_kv != self.n_heads
        if isinstance(mask, str):  # "causal" or "none"
            y = F.scaled_dot_product_attention(q, k, v, is_causal=(mask == "causal"), enable_gqa=gqa)
        else:  # boolean (B, 1, T, S), True = attend
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd)  # (B, T, h*hd)
        return self.o_proj(y)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, d: int, f: int):
        super().__init__()
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)
        self.gate_up_proj = None  # set by fuse_projections() on inference copies

    def forward(self, x):
        if self.gate_up_proj is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class MoE(nn.Module):
    """Top-k routed SwiGLU experts (+ optional shared experts), Qwen2-MoE / Qwen3-MoE layout."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, f = cfg.hidden_size, cfg.moe_intermediate_size
        self.n_experts, self.top_k = cfg.num_experts, cfg.num_experts_per_tok
        self.norm_topk_prob = cfg.norm_topk_prob
        self.aux_coef = cfg.router_aux_loss_coef
        self.gate = nn.Linear(d, self.n_experts, bias=False)  # the router
        self.experts = nn.ModuleList(MLP(d, f) for _ in range(self.n_experts))
        # Qwen2-MoE: one shared expert of width S*f, scaled by a sigmoid gate
        if cfg.num_shared_experts:
            self.shared_expert = MLP(d, f * cfg.num_shared_experts)
            self.shared_expert_gate = nn.Linear(d, 1, bias=False)
        else:
            self.shared_expert = None

    def route(self, x):
        """x: (N, d) -> top-k weights (N, k), expert ids (N, k), router probs (N, E)."""
        probs = F.softmax(self.gate(x).float(), dim=-1)  # (N, E)
        w, idx = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.norm_topk_prob:
            w = w / w.sum(-1, keepdim=True)
        return w, idx, probs

    def aux_loss(self, idx, probs):
        """Switch load-balancing loss: alpha * E * sum_i f_i P_i (= alpha for a uniform router)."""
        f = torch.bincount(idx.flatten(), minlength=self.n_experts).float() / idx.numel()  # (E,)
        P = probs.mean(0)  # (E,)
        return self.aux_coef * self.n_experts * (f * P).sum()

    def forward(self, x):
        B, T, d = x.shape
        x = x.reshape(-1, d)  # (N, d)
        w, idx, probs = self.route(x)
        # Sort the N*k (token, expert) slots by expert so each expert sees one contiguous slice;
        # one host sync per layer (the counts), none per expert.
        flat = idx.flatten()  # (N*k,)
        order = flat.argsort(stable=True)
        token_of_slot = order // self.top_k  # (N*k,)
        counts = torch.bincount(flat, minlength=self.n_experts).tolist()
        self.expert_counts = counts  # tokens routed to each expert in this forward (the trainer logs the load)
        xs = x[token_of_slot]  # (N*k, d) tokens grouped by expert
        outs = torch.cat([e(chunk) for e, chunk in zip(self.experts, xs.split(counts))])  # (N*k, d)
        y = torch.zeros_like(x)
        y.index_add_(0, token_of_slot, (outs * w.flatten()[order, None].to(outs.dtype)).to(y.dtype))
        if self.shared_expert is not None:
            y = y + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        aux = self.aux_loss(idx, probs) if self.training else x.new_zeros((), dtype=torch.float32)
        return y.view(B, T, d), aux


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg) if cfg.is_moe else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        h = self.mlp(self.post_attention_layernorm(x))
        if isinstance(h, tuple):  # MoE returns (output, aux loss)
            h, aux = h
        else:
            aux = None
        return x + h, aux


class MiniMindModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.set_rope_scaling(cfg.rope_scaling)

    def set_rope_scaling(self, rope_scaling: dict | None, max_positions: int | None = None):
        """(Re)build the cos/sin tables; switch YaRN on or off at inference time."""
        cfg = self.config
        cfg.rope_scaling = rope_scaling
        n = max_positions or cfg.max_position_embeddings
        if rope_scaling:
            n = max(n, int(rope_scaling.get("original_max_position_embeddings", 2048)
                           * float(rope_scaling["factor"])))
        inv_freq, mscale = rope_frequencies(cfg.head_dim, cfg.rope_theta, rope_scaling)
        freqs = torch.outer(torch.arange(n, dtype=torch.float32), inv_freq)  # (n, hd/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (n, hd)
        device = self.embed_tokens.weight.device
        self.register_buffer("rope_cos", (emb.cos() * mscale).to(device), persistent=False)
        self.register_buffer("rope_sin", (emb.sin() * mscale).to(device), persistent=False)

    def forward(self, input_ids, position_ids=None, mask=None, cache=None):
        B, T = input_ids.shape
        start = cache.pos if isinstance(cache, KVCache) else 0
        if position_ids is None:
            if start + T > self.rope_cos.shape[0]:
                raise ValueError(f"sequence of {start + T} positions exceeds the RoPE table "
                                 f"({self.rope_cos.shape[0]}); raise max_position_embeddings")
            cos = self.rope_cos[start:start + T][None, :, None, :]  # (1, T, 1, hd)
            sin = self.rope_sin[start:start + T][None, :, None, :]
        else:
            cos = self.rope_cos[position_ids][:, :, None, :]  # (B, T, 1, hd)
            sin = self.rope_sin[position_ids][:, :, None, :]
        if mask is None:  # plain causal attention over [0, start+T)
            mask = "causal" if start == 0 and T > 1 else ("none" if T == 1 else _causal_mask(
                T, start, input_ids.device))
        x = self.embed_tokens(input_ids)  # (B, T, d)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        aux_total = None
        for layer in self.layers:
            x, aux = layer(x, cos, sin, mask, cache)
            if aux is not None:
                aux_total = aux if aux_total is None else aux_total + aux
        if isinstance(cache, KVCache):
            cache.pos = start + T
        return self.norm(x), aux_total


def fuse_projections(model) -> None:
    """In place, for a model that is only ever run (an inference copy): q/k/v and gate/up become one
    linear layer each (their weights stacked), so a decode step makes 4 matrix products per layer
    instead of 7. Same function: each output row is the same dot product as before."""

    def stacked(*linears):
        w = torch.cat([m.weight.detach() for m in linears])
        fused = nn.Linear(w.shape[1], w.shape[0], bias=linears[0].bias is not None, device=w.device, dtype=w.dtype)
        fused.weight = nn.Parameter(w, requires_grad=False)
        if fused.bias is not None:
            fused.bias = nn.Parameter(torch.cat([m.bias.detach() for m in linears]), requires_grad=False)
        return fused

    for m in model.modules():
        if isinstance(m, Attention) and m.qkv_proj is None:
            m.qkv_proj = stacked(m.q_proj, m.k_proj, m.v_proj)
            del m.q_proj, m.k_proj, m.v_proj
        elif isinstance(m, MLP) and m.gate_up_proj is None:
            m.gate_up_proj = stacked(m.gate_proj, m.up_proj)
            del m.gate_proj, m.up_proj


def _causal_mask(T: int, start: int, device):
    """(1, 1, T, start+T) boolean: query i (at position start+i) sees keys 0..start+i."""
    q = torch.arange(start, start + T, device=device)[:, None]
    k = torch.arange(start + T, device=device)[None, :]
    return (k <= q)[None, None]


def padded_mask(key_valid, T: int):
    """Boolean attention mask for left-padded batches.

    key_valid: (B, S) bool, False on padding, S = all positions so far (cache + new T).
    Returns (B, 1, T, S): causal over the last T positions and never attending padding. A padding
    query attends itself so that no softmax row is empty (its output is never used).
    """
    B, S = key_valid.shape
    start = S - T
    q = torch.arange(start, S, device=key_valid.device)[:, None]
    k = torch.arange(S, device=key_valid.device)[None, :]
    m = (k <= q)[None] & key_valid[:, None, :]  # (B, T, S)
    m = m | (k == q)[None]
    return m[:, None]


def segment_mask(segments):
    """Positions and attention mask for rows that pack several sequences (SFT packing).

    segments: (B, T) sequence index of each position within its row, -1 on padding.
    Returns position_ids (B, T) restarting at 0 for every sequence, and a (B, 1, T, T) boolean
    mask: causal and only within the same sequence (padding attends only itself).
    """
    B, T = segments.shape
    idx = torch.arange(T, device=segments.device).expand(B, T)
    starts = torch.ones_like(segments, dtype=torch.bool)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values  # (B, T)
    position_ids = idx - first
    same = segments[:, :, None] == segments[:, None, :]  # (B, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    mask = (same & causal) | torch.eye(T, dtype=torch.bool, device=segments.device)
    return position_ids, mask[:, None]


class Output(NamedTuple):
    logits: torch.Tensor  # (B, T, V)
    aux_loss: torch.Tensor | None  # MoE load-balancing loss (None for dense models)
    hidden: torch.Tensor | None = None


class MiniMindForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = MiniMindModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(self._init_weights)
        # GPT-2 style: scale residual-branch outputs by 1/sqrt(2L) so the stream's variance stays put
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, std=cfg.initializer_range / math.sqrt(2 * cfg.num_hidden_layers))

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=self.config.initializer_range)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=self.config.initializer_range)

    def forward(self, input_ids, position_ids=None, mask=None, cache=None, logits_to_keep: int = 0):
        """input_ids (B, T) -> Output(logits (B, T', V), aux_loss).

        logits_to_keep > 0 computes logits for the last positions only (generation needs one).
        """
        h, aux = self.model(input_ids, position_ids, mask, cache)  # (B, T, d)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        return Output(self.lm_head(h), aux, h)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self):
        return self.model.embed_tokens.weight.device
