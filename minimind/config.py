"""Model configuration and the named presets.

`ModelConfig` uses Hugging Face config keys (Llama / Qwen3 / Qwen2-MoE / Qwen3-MoE), so a
checkpoint's `config.json` reads like a transformers config and export is a plain rename of
`model_type` / `architectures`.

Parameter arithmetic for the presets (V = vocab, d = hidden, L = layers, h = heads,
g = KV heads, hd = head_dim, f = intermediate size, E = routed experts, S = shared experts):

    attention  = d*h*hd (q) + 2*d*g*hd (k, v) + h*hd*d (o)   [+ 2*hd if q/k norm]
    mlp        = 3*d*f                                       (gate, up, down: SwiGLU)
    moe        = (E + S)*3*d*f + d*E [+ d]                   (experts + router [+ shared gate])
    per layer  = attention + mlp|moe + 2*d                   (two RMSNorms)
    total      = L*per_layer + V*d (+ V*d again if untied) + d (final norm)
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from .errors import UserError


def _swiglu_hidden(d: int) -> int:
    """MiniMind2's MLP width: 8/3 * d rounded up to a multiple of 64."""
    return 64 * ((int(d * 8 / 3) + 63) // 64)


@dataclass
class ModelConfig:
    # names follow transformers' LlamaConfig / Qwen3Config / Qwen3MoeConfig
    vocab_size: int = 6400
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    head_dim: int | None = None  # default hidden_size // num_attention_heads
    intermediate_size: int | None = None  # default: 8/3 * hidden, multiple of 64
    max_position_embeddings: int = 32768
    rope_theta: float = 1e6
    # YaRN: {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048,
    #        "beta_fast": 32.0, "beta_slow": 1.0} or None for plain RoPE
    rope_scaling: dict | None = None
    rms_norm_eps: float = 1e-6
    qk_norm: bool = False  # Qwen3-style RMSNorm on q and k per head
    tie_word_embeddings: bool = True
    attention_bias: bool = False
    hidden_act: str = "silu"
    # mixture of experts (num_experts == 0: dense)
    num_experts: int = 0
    num_experts_per_tok: int = 2
    num_shared_experts: int = 0
    moe_intermediate_size: int | None = None  # default: intermediate_size
    norm_topk_prob: bool = True
    router_aux_loss_coef: float = 0.01
    # special token ids (the tokenizer's; checked against it on load)
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    initializer_range: float = 0.02
    num_labels: int = 0  # 0: a causal LM; 1: a reward model's scalar head (reward/model.py)
    torch_dtype: str = "float32"
    name: str = field(default="custom", compare=False)

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.intermediate_size is None:
            self.intermediate_size = _swiglu_hidden(self.hidden_size)
        if self.num_experts and self.moe_intermediate_size is None:
            self.moe_intermediate_size = self.intermediate_size
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def need(ok: bool, msg: str):
            if not ok:
                raise UserError(f"model config: {msg}")

        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "intermediate_size"):
            need(isinstance(getattr(self, key), int) and getattr(self, key) > 0,
                 f"{key} must be a positive integer, got {getattr(self, key)!r}")
        need(self.num_attention_heads % self.num_key_value_heads == 0,
             f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
             f"num_key_value_heads ({self.num_key_value_heads})")
        need(self.head_dim % 2 == 0, f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.num_experts:
            need(1 <= self.num_experts_per_tok <= self.num_experts,
                 f"num_experts_per_tok ({self.num_experts_per_tok}) must be in 1..num_experts "
                 f"({self.num_experts})")
        if self.rope_scaling is not None:
            rs = self.rope_scaling
            need(isinstance(rs, dict) and rs.get("type", rs.get("rope_type")) == "yarn",
                 f"rope_scaling must be null or a YaRN dict with type 'yarn', got {rs!r}")
            need(float(rs.get("factor", 0)) >= 1.0, "rope_scaling.factor must be >= 1")

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    # --------------------------------------------------------------- counting
    def param_counts(self) -> dict:
        """Total, active-per-token and embedding parameter counts (exact, from the shapes)."""
        d, hd = self.hidden_size, self.head_dim
        attn = d * self.num_attention_heads * hd * 2 + 2 * d * self.num_key_value_heads * hd
        if self.attention_bias:
            attn += (self.num_attention_heads + 2 * self.num_key_value_heads) * hd
        if self.qk_norm:
            attn += 2 * hd
        norms = 2 * d
        if self.is_moe:
            expert = 3 * d * self.moe_intermediate_size
            shared = self.num_shared_experts * expert + (d if self.num_shared_experts else 0)
            mlp_total = self.num_experts * expert + shared + d * self.num_experts
            mlp_active = self.num_experts_per_tok * expert + shared + d * self.num_experts
        else:
            mlp_total = mlp_active = 3 * d * self.intermediate_size
        emb = self.vocab_size * d
        head = 0 if self.tie_word_embeddings else emb
        L = self.num_hidden_layers
        total = L * (attn + mlp_total + norms) + emb + head + d
        active = L * (attn + mlp_active + norms) + emb + head + d
        return {"total": total, "active": active, "embedding": emb,
                "lm_head": self.vocab_size * d}

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token: 6 * (matmul params active per token) + attention.

        Matmul params are the active non-embedding weights plus the LM head (a matmul even
        when tied). Attention adds 2*2*T*h*hd per token forward (scores and weighted sum)
        averaged over a causal row (T/2 keys on average), times 3 for forward+backward:
        6 * L * h * hd * T — the convention of nanoGPT/PaLM (they use the full T: 12*L*h*hd*T/2).
        """
        c = self.param_counts()
        matmul = c["active"] - c["embedding"] - (c["lm_head"] if not self.tie_word_embeddings else 0)
        matmul += c["lm_head"]
        matmul -= self.num_hidden_layers * 2 * self.hidden_size + self.hidden_size  # norms
        attn = 6 * self.num_hidden_layers * self.num_attention_heads * self.head_dim * seq_len
        return 6 * matmul + attn

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["model_type"] = "minimind"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in known and k not in _IGNORED_KEYS)
        if unknown:
            raise UserError(f"model config: unknown keys {unknown}; is this a minimind config.json?")
        return cls(**{k: v for k, v in d.items() if k in known})

    def save(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def load(cls, path) -> "ModelConfig":
        try:
            with open(path) as f:
                d = json.load(f)
        except FileNotFoundError:
            raise UserError(f"{path}: missing config.json") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: config.json is not valid JSON ({e.msg})") from None
        if not isinstance(d, dict):
            raise UserError(f"{path}: config.json must hold a JSON object")
        return cls.from_dict(d)


_IGNORED_KEYS = {"model_type", "architectures", "transformers_version"}


PRESETS: dict[str, dict] = {
    # the 10-minute demo's size: on a slow CPU, many steps of a tiny model beat few of a larger one
    # (bench/RESULTS.md, "a smaller model in the same 10 minutes")
    "pico": dict(hidden_size=96, num_hidden_layers=6, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=2048),
    # CPU demo size: learns the built-in corpus in minutes on two cores (the 30-minute demo)
    "nano": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=2048),
    # MiniMind2-Small, ~26M
    "minimind2-small": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                            num_key_value_heads=2),
    # MiniMind2, ~104M
    "minimind2": dict(hidden_size=768, num_hidden_layers=16, num_attention_heads=8,
                      num_key_value_heads=2),
    # MiniMind2-MoE, ~145M: 1 shared + 4 routed experts, top-2
    "minimind2-moe": dict(hidden_size=640, num_hidden_layers=8, num_attention_heads=8,
                          num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                          num_shared_experts=1),
    # MiniMind3, ~64M: Qwen3-style (q/k norm, explicit head_dim), pi-wide MLP
    "minimind3": dict(hidden_size=768, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=4, head_dim=96, qk_norm=True,
                      intermediate_size=math.ceil(768 * math.pi / 64) * 64),
    # MiniMind3-MoE, ~198M total / ~64M active: 4 routed experts, top-1, no shared expert
    "minimind3-moe": dict(hidden_size=768, num_hidden_layers=8, num_attention_heads=8,
                          num_key_value_heads=4, head_dim=96, qk_norm=True,
                          intermediate_size=math.ceil(768 * math.pi / 64) * 64,
                          num_experts=4, num_experts_per_tok=1, num_shared_experts=0),
}


def get_preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}",
                        param="preset")
    kw = dict(PRESETS[name])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig(name=name, **kw)
