"""LoRA from scratch: low-rank adapters on the linear layers of a frozen model.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") keeps a pretrained
weight W (out x in) frozen and learns a low-rank update instead:

    y = W x + b + (alpha / r) * B A dropout(x)          A: (r, in), B: (out, r), r << min(in, out)

A starts random (Kaiming-uniform, as nn.Linear), B starts at zero, so at step 0 the adapted model
is exactly the base model and training moves it away smoothly. Only A and B are trained: for a
26M model with r = 8 on every attention and MLP projection that is ~1.7% of the weights, and the
adapter file is a few hundred KB instead of a 100 MB checkpoint. After training the update can be
folded back into the weight,

    W' = W + (alpha / r) * B A,

which gives a plain model with no extra cost at inference (`merge_lora`).

Files: an adapter directory holds `adapter_model.safetensors` (only the lora_A / lora_B tensors,
named like the model's own parameters) and `adapter_config.json` (rank, alpha, dropout, the
target regex, the adapted module names and a fingerprint of the base model's shapes, so loading
onto the wrong base fails with a clear message instead of silently producing garbage). The
checkpoints of a `minimind lora` run are such adapters plus config, tokenizer and resume state;
their adapter_config.json also names the base checkpoint and the sha256 of its weights, so that
`load_lora_checkpoint` can rebuild the merged model (chat, serve, eval, export) or say exactly
what is missing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .checkpoint import atomic_dir
from .errors import UserError

# every projection of attention (q, k, v, o) and of the SwiGLU MLPs, routed and shared experts
# included; not the MoE router (`mlp.gate`), not lm_head. Matched with re.fullmatch on module names.
DEFAULT_TARGETS = r".*\.(q|k|v|o|gate|up|down)_proj"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# the config keys that decide every weight's shape: an adapter fits a base iff these agree
SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "head_dim", "intermediate_size", "num_experts", "num_shared_experts", "moe_intermediate_size")


@dataclass
class LoRAConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = DEFAULT_TARGETS

    def validate(self) -> "LoRAConfig":
        if not isinstance(self.rank, int) or self.rank < 1:
            raise UserError(f"--rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise UserError(f"--alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"--lora-dropout must be in [0, 1), got {self.dropout!r}")
        try:
            re.compile(self.targets)
        except re.error as e:
            raise UserError(f"--lora-targets {self.targets!r}: not a valid regular expression ({e})") from None
        return self


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: y = W x + b + (alpha/r) B A dropout(x).

    The base `weight` and `bias` are the wrapped layer's own Parameters (not copies) and keep their
    names, so a LoRA model's state dict is the base one plus `*.lora_A.weight` / `*.lora_B.weight`.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # (out, in), frozen by inject_lora
        if base.bias is not None:
            self.bias = base.bias
        else:
            self.register_parameter("bias", None)
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, **kw)  # A: (r, in)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, **kw)  # B: (out, r)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # nn.Linear's own init
        nn.init.zeros_(self.lora_B.weight)  # B = 0: the adapted model starts as the base model
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):  # x: (..., in)
        base = F.linear(x, self.weight, self.bias)  # W x + b: (..., out)
        update = self.lora_B(self.lora_A(self.dropout(x)))  # B A x: (..., r) -> (..., out)
        return base + self.scale * update

    def delta_weight(self) -> torch.Tensor:
        """(alpha/r) B A as a dense (out, in) matrix, computed in fp32."""
        return self.scale * (self.lora_B.weight.float() @ self.lora_A.weight.float())

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}, alpha={self.alpha:g}"


# ----------------------------------------------------------------------------- inject / merge

def lora_modules(model) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _set_submodule(model, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _target_names(model, targets: str) -> list[str]:
    pattern = re.compile(targets)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and pattern.fullmatch(n)]
    if not names:
        raise UserError(f"--lora-targets {targets!r} matches no linear layer of the model "
                        f"(names look like model.layers.0.self_attn.q_proj, model.layers.0.mlp.up_proj)")
    if "lm_head" in names and getattr(model.config, "tie_word_embeddings", False):
        raise UserError("--lora-targets matches lm_head, which is tied to the input embeddings; "
                        "adapt the decoder layers only (the default) or use an untied model")
    return names


def inject_lora(model, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                targets: str = DEFAULT_TARGETS, modules: list[str] | None = None):
    """Wrap the linear layers whose names fullmatch `targets` in LoRALinear; freeze everything else.

    `modules` (exact names) overrides `targets`; load_adapter uses it to rebuild a saved adapter.
    Returns the model (changed in place); only the lora_A / lora_B weights require grad.
    """
    cfg = LoRAConfig(rank, float(alpha), float(dropout), targets).validate()
    if lora_modules(model):
        raise UserError("the model already has LoRA adapters; merge them first (merge_lora) or start "
                        "from the base checkpoint")
    names = modules if modules is not None else _target_names(model, cfg.targets)
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        base = model.get_submodule(name)
        if not isinstance(base, nn.Linear):
            raise UserError(f"adapter module {name!r} is not a linear layer of this model")
        _set_submodule(model, name, LoRALinear(base, cfg.rank, cfg.alpha, cfg.dropout))
    model.lora_config = cfg
    return model


def merge_lora(model):
    """Fold every adapter into its weight, W' = W + (alpha/r) B A, leaving plain nn.Linear layers.

    Returns the model (changed in place) with all parameters trainable again, like a freshly
    loaded checkpoint; save it with save_checkpoint to get a plain model directory.
    """
    for name, m in lora_modules(model).items():
        plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None,
                          device=m.weight.device, dtype=m.weight.dtype)
        with torch.no_grad():
            plain.weight.copy_((m.weight.float() + m.delta_weight()).to(m.weight.dtype))  # (out, in)
            if m.bias is not None:
                plain.bias.copy_(m.bias)
        _set_submodule(model, name, plain)
    for p in model.parameters():
        p.requires_grad_(True)
    for attr in ("lora_config", "lora_base"):
        if hasattr(model, attr):
            delattr(model, attr)
    return model


def lora_state_dict(model) -> dict[str, torch.Tensor]:
    """Only the adapter tensors: {'model.layers.0.self_attn.q_proj.lora_A.weight': (r, in), ...}."""
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()
            if k.endswith((".lora_A.weight", ".lora_B.weight"))}


# ----------------------------------------------------------------------------- files

def base_fingerprint(model_config) -> tuple[str, dict]:
    """(short hash, dict) of the config keys that fix every weight's shape."""
    shapes = {k: getattr(model_config, k, None) for k in SHAPE_KEYS}
    digest = hashlib.sha256(json.dumps(shapes, sort_keys=True).encode()).hexdigest()[:16]
    return digest, shapes


def write_adapter(folder, model, cfg: LoRAConfig | None = None) -> None:
    """Write adapter_model.safetensors + adapter_config.json into the existing directory `folder`.

    The base checkpoint is named by `model.lora_base` ({"path", "sha256"}), set by whoever loaded
    the base (the lora command); without it the adapter still loads onto a base given by hand.
    """
    cfg = cfg or getattr(model, "lora_config", None)
    modules = lora_modules(model)
    if cfg is None or not modules:
        raise UserError("save_adapter: the model has no LoRA adapters (call inject_lora first)")
    fingerprint, shapes = base_fingerprint(model.config)
    base = getattr(model, "lora_base", None) or {}
    config = {**asdict(cfg), "modules": sorted(modules), "base_fingerprint": fingerprint,
              "base_shapes": shapes, "base_model": base.get("path"), "base_sha256": base.get("sha256"),
              "format": "minimind-lora-1"}
    folder = Path(folder)
    save_file(lora_state_dict(model), folder / ADAPTER_WEIGHTS, metadata={"format": "pt"})
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def save_adapter(out_dir, model, cfg: LoRAConfig | None = None) -> Path:
    """Write adapter_model.safetensors + adapter_config.json into out_dir (atomically)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / ADAPTER_CONFIG).is_file():
        raise UserError(f"{out_dir}: exists and is not an adapter directory; choose another output path")
    with atomic_dir(out_dir) as tmp:
        write_adapter(tmp, model, cfg)
    return out_dir


def set_base(model, base_ckpt) -> None:
    """Record which checkpoint (path and weights sha256) the adapters of `model` sit on."""
    from .checkpoint import weights_digest

    base_ckpt = Path(base_ckpt).resolve()
    model.lora_base = {"path": str(base_ckpt), "sha256": weights_digest(base_ckpt)}


def resolve_adapter(path) -> Path:
    """An adapter directory, a lora run directory (its final `adapter/`, else its latest
    checkpoint) or one of the run's checkpoints."""
    from .checkpoint import resolve_checkpoint

    path = Path(path)
    if not (path / ADAPTER_CONFIG).is_file():
        if (path / "adapter" / ADAPTER_CONFIG).is_file():
            path = path / "adapter"
        elif (resolve_checkpoint(path) / ADAPTER_CONFIG).is_file():
            path = resolve_checkpoint(path)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (path / name).is_file():
            raise UserError(f"{path}: missing {name}; is this a LoRA adapter directory (from `minimind lora`)?")
    return path


def read_adapter_config(path: Path) -> dict:
    try:
        cfg = json.loads((path / ADAPTER_CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path / ADAPTER_CONFIG}:{e.lineno}: not valid JSON ({e.msg})") from None
    need = {"rank", "alpha", "dropout", "targets", "modules", "base_shapes"}
    if not isinstance(cfg, dict) or not need <= cfg.keys():
        raise UserError(f"{path / ADAPTER_CONFIG}: expected keys {sorted(need)}")
    return cfg


def _check_base(cfg: dict, model, where: Path) -> None:
    _, shapes = base_fingerprint(model.config)
    diff = [f"{k} {cfg['base_shapes'].get(k)} vs {v}" for k, v in shapes.items() if cfg["base_shapes"].get(k) != v]
    if diff:
        raise UserError(f"{where}: the adapter was trained on a base model of another shape "
                        f"(adapter vs this model: {', '.join(diff)}); load it onto the base it was made for")


def load_adapter(model, path):
    """Add the saved adapter to `model` (injecting LoRA layers as saved) and load its weights.

    Raises UserError when the adapter does not fit this base model (shapes or module names).
    """
    path = resolve_adapter(path)
    cfg = read_adapter_config(path)
    _check_base(cfg, model, path)
    try:
        sd = load_file(str(path / ADAPTER_WEIGHTS))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path / ADAPTER_WEIGHTS}: cannot read ({e}); the file is corrupt or truncated") from None
    if not lora_modules(model):
        known = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        missing = [n for n in cfg["modules"] if n not in known]
        if missing:
            raise UserError(f"{path}: adapter modules {missing[:3]} do not exist in this model")
        inject_lora(model, int(cfg["rank"]), cfg["alpha"], cfg["dropout"], cfg["targets"], modules=cfg["modules"])
    expected = lora_state_dict(model)
    if set(sd) != set(expected):
        odd = sorted(set(sd) ^ set(expected))
        raise UserError(f"{path / ADAPTER_WEIGHTS}: tensors do not match the adapted modules ({odd[:3]}...)")
    for k, v in sd.items():
        if v.shape != expected[k].shape:
            raise UserError(f"{path / ADAPTER_WEIGHTS}: {k} has shape {tuple(v.shape)}, this model needs "
                            f"{tuple(expected[k].shape)} (another base model or rank)")
    model.load_state_dict(sd, strict=False)
    return model


def adapter_size(path) -> int:
    """Bytes of the adapter's weight file."""
    return (resolve_adapter(path) / ADAPTER_WEIGHTS).stat().st_size


# ----------------------------------------------------------------------------- a lora run as a model

def _base_of(path: Path, cfg: dict) -> Path:
    """The base checkpoint a LoRA checkpoint names, checked to exist and to be the same weights."""
    from .checkpoint import is_checkpoint, weights_digest

    base = cfg.get("base_model")
    merge = f"`minimind lora merge BASE {path} OUT` with the base it was trained on, then use OUT"
    if not base:
        raise UserError(f"{path}: this LoRA adapter does not record its base model; merge it: {merge}")
    if not is_checkpoint(base):
        raise UserError(f"{path}: its base model {base} is not there any more (moved or deleted); "
                        f"restore it, or {merge}")
    if cfg.get("base_sha256") and weights_digest(base) != cfg["base_sha256"]:
        raise UserError(f"{path}: its base model {base} has changed since the adapter was trained "
                        f"(weights sha256 differs); restore those weights, or {merge}")
    return Path(base)


def check_lora_checkpoint(path) -> None:
    """Raise UserError unless the LoRA checkpoint `path` and the base it names can be loaded."""
    path = Path(path)
    for name in ("config.json", ADAPTER_WEIGHTS, "tokenizer.json"):
        if not (path / name).is_file():
            raise UserError(f"{path}: missing {name}; is this a minimind checkpoint directory?")
    _base_of(path, read_adapter_config(path))


def load_lora_checkpoint(path):
    """(model, tokenizer) of a LoRA checkpoint: its base (loaded on CPU in fp32, as saved) with
    the adapter merged in, W' = W + (alpha/r) B A. The result is a plain model."""
    from .checkpoint import load_checkpoint

    path = Path(path)
    model, tok = load_checkpoint(_base_of(path, read_adapter_config(path)))
    merge_lora(load_adapter(model, path))
    return model, tok
