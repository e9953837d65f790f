"""Hugging Face transformers: export a checkpoint, import a model folder.

**Export** writes a folder that stock `transformers` loads with
`AutoModelForCausalLM.from_pretrained(folder)` — no `trust_remote_code` — because every shape
minimind builds is an existing transformers architecture:

    minimind config                                transformers class        model_type
    dense, no q/k norm (MiniMind2)                 LlamaForCausalLM          llama
    dense, q/k norm (MiniMind3)                    Qwen3ForCausalLM          qwen3
    MoE + shared expert, no q/k norm (MiniMind2)   Qwen2MoeForCausalLM       qwen2_moe
    MoE, no shared expert, q/k norm (MiniMind3)    Qwen3MoeForCausalLM       qwen3_moe
    MoE, no shared expert, no q/k norm             MixtralForCausalLM        mixtral

Parameter names already are those classes' names, so the weights are written unchanged, with
three exceptions: Mixtral calls its MoE block `block_sparse_moe` and its expert matrices
w1 (gate), w3 (up), w2 (down); Llama / Qwen3 put a bias on o_proj whenever `attention_bias` is
set (minimind has none, so a zero bias is written); a tied lm_head is not stored (transformers
ties it on load). Experts are stored one tensor per expert (`mlp.experts.{e}.gate_proj.weight`),
the layout of the published Qwen MoE checkpoints: transformers >= 5 fuses them into 3-D tensors
on load (its conversion mapping), older versions, vLLM and llama.cpp's converter read them as
they are.

config.json states RoPE twice, for both generations of readers: `rope_parameters` (transformers
>= 5) and `rope_theta` + `rope_scaling` (older transformers, vLLM, llama.cpp's converter). YaRN
is the same function in both codebases (floor/ceil-truncated ramp between beta_fast and
beta_slow rotations, attention factor 0.1 ln(s) + 1), so it is exported as plain parameters.

**Import** reads those five layouts back — also with fused 3-D expert tensors — and the original
MiniMind project's own format (`model_type: "minimind"`, loaded there with trust_remote_code).
Dense MiniMind models import exactly. MiniMind MoE models with shared experts do not: MiniMind
adds its shared experts unscaled, while minimind's shared expert is Qwen2-MoE style and scaled
by a learned sigmoid gate that cannot be made constant, so such an import is refused with an
explanation rather than silently producing a different model.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch

from ..checkpoint import (check_checkpoint_dir, check_tokenizer_matches, load_checkpoint,
                          save_checkpoint, state_dict_for_save)
from ..config import ModelConfig
from ..errors import UserError

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "mixtral": "MixtralForCausalLM",
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# transformers' own defaults for keys a config.json may leave out (its config classes)
_HF_DEFAULTS = {
    "llama": dict(rope_theta=10000.0, rms_norm_eps=1e-6),
    "qwen3": dict(rope_theta=10000.0, rms_norm_eps=1e-6),
    "qwen2_moe": dict(rope_theta=10000.0, rms_norm_eps=1e-6),
    "qwen3_moe": dict(rope_theta=10000.0, rms_norm_eps=1e-6),
    "mixtral": dict(rope_theta=1e6, rms_norm_eps=1e-5),
}

# Mixtral's names for the MoE block and its expert matrices
_MIXTRAL_NAMES = [(".mlp.gate.", ".block_sparse_moe.gate."),
                  (".mlp.experts.", ".block_sparse_moe.experts."),
                  (".gate_proj.", ".w1."), (".up_proj.", ".w3."), (".down_proj.", ".w2.")]


# ============================================================================ export

def hf_model_type(cfg: ModelConfig) -> str:
    """The transformers model_type that computes exactly what this config computes."""
    if not cfg.is_moe:
        return "qwen3" if cfg.qk_norm else "llama"
    if cfg.num_shared_experts:
        if cfg.qk_norm:
            raise UserError("export hf: no transformers class has both q/k norm and a shared expert "
                            "(Qwen2-MoE has the shared expert, Qwen3-MoE the q/k norm), so this model "
                            "cannot be exported; models with only one of the two can")
        return "qwen2_moe"
    if cfg.qk_norm:
        return "qwen3_moe"
    if not cfg.norm_topk_prob or cfg.attention_bias:
        raise UserError("export hf: an MoE model without q/k norm and shared expert maps to Mixtral, "
                        "which always renormalises the top-k weights and has no attention bias; this "
                        "config has norm_topk_prob=false or attention_bias=true")
    return "mixtral"


def _rope_keys(cfg: ModelConfig) -> dict:
    """RoPE settings for new (`rope_parameters`) and old (`rope_theta`, `rope_scaling`) readers."""
    keys = {"rope_theta": float(cfg.rope_theta),
            "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_theta)}}
    rs = cfg.rope_scaling
    if rs:
        yarn = {"factor": float(rs["factor"]),
                "original_max_position_embeddings": int(rs.get("original_max_position_embeddings", 2048)),
                "beta_fast": float(rs.get("beta_fast", 32.0)),
                "beta_slow": float(rs.get("beta_slow", 1.0))}
        keys["rope_parameters"] = {"rope_type": "yarn", "rope_theta": float(cfg.rope_theta), **yarn}
        keys["rope_scaling"] = {"rope_type": "yarn", "type": "yarn", **yarn}
    return keys


def hf_config(cfg: ModelConfig, dtype: str = "float32") -> dict:
    """config.json for the transformers class that matches `cfg`."""
    mt = hf_model_type(cfg)
    if mt == "llama" and cfg.hidden_size % cfg.num_attention_heads:
        raise UserError(f"export hf: transformers' LlamaConfig requires hidden_size ({cfg.hidden_size}) "
                        f"to be a multiple of num_attention_heads ({cfg.num_attention_heads})")
    d = {
        "architectures": [ARCHITECTURES[mt]], "model_type": mt,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_position_embeddings, "rms_norm_eps": cfg.rms_norm_eps,
        **_rope_keys(cfg),
        "attention_bias": cfg.attention_bias, "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_word_embeddings, "initializer_range": cfg.initializer_range,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id, "use_cache": True,
        "torch_dtype": dtype, "dtype": dtype,  # the key name changed in transformers 5
    }
    if cfg.num_labels:  # a reward model: the scalar head is transformers' `score` (one label)
        d["architectures"] = [d["architectures"][0].replace("ForCausalLM", "ForSequenceClassification")]
        d.update(num_labels=cfg.num_labels, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    if mt == "llama":
        d["mlp_bias"] = False
    if mt.startswith("qwen"):
        d.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_hidden_layers)
    if cfg.is_moe:
        d.update(num_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok,
                 moe_intermediate_size=cfg.moe_intermediate_size, norm_topk_prob=cfg.norm_topk_prob,
                 router_aux_loss_coef=cfg.router_aux_loss_coef, output_router_logits=False,
                 decoder_sparse_step=1, mlp_only_layers=[])
    if mt == "qwen2_moe":  # minimind's shared expert is one SwiGLU, num_shared_experts experts wide
        d["shared_expert_intermediate_size"] = cfg.moe_intermediate_size * cfg.num_shared_experts
        d["qkv_bias"] = d.pop("attention_bias")  # Qwen2-MoE's name; o_proj never has a bias there
    if mt == "mixtral":  # every layer is MoE and intermediate_size is the expert width
        for key in ("num_experts", "moe_intermediate_size", "norm_topk_prob", "decoder_sparse_step",
                    "mlp_only_layers"):
            d.pop(key)
        d.update(num_local_experts=cfg.num_experts, intermediate_size=cfg.moe_intermediate_size,
                 sliding_window=None, router_jitter_noise=0.0)
    return d


def hf_state_dict(cfg: ModelConfig, sd: dict) -> dict:
    """minimind tensors (tied lm_head already dropped) -> the transformers class's tensors."""
    mt = hf_model_type(cfg)
    out = {}
    for name, t in sd.items():
        if mt == "mixtral" and ".mlp." in name:
            for ours, theirs in _MIXTRAL_NAMES:
                name = name.replace(ours, theirs)
        out[name] = t
    if cfg.attention_bias and mt != "qwen2_moe":  # their o_proj gets a bias too: make it zero
        dtype = sd["model.embed_tokens.weight"].dtype
        for i in range(cfg.num_hidden_layers):
            out[f"model.layers.{i}.self_attn.o_proj.bias"] = torch.zeros(cfg.hidden_size, dtype=dtype)
    return out


def generation_config(tok) -> dict:
    """generation_config.json: stop at <|im_end|> (end of a chat turn) or <|endoftext|> (end of a
    document, what a raw continuation ends with), sampling as `minimind chat` does by default."""
    return {"bos_token_id": tok.im_start_id, "eos_token_id": [tok.eos_id, tok.eot_id],
            "pad_token_id": tok.pad_id, "do_sample": True, "temperature": 0.7, "top_p": 0.9}


def export_hf(checkpoint, out_dir, dtype: str = "float32") -> Path:
    """Write a transformers model folder (config, weights, tokenizer, generation config)."""
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise UserError(f"export hf: --dtype must be one of {', '.join(DTYPES)}, got {dtype!r}", param="dtype")
    ckpt = check_checkpoint_dir(checkpoint)
    out = Path(out_dir)
    _check_output_dir(out, ckpt)
    if ModelConfig.load(ckpt / "config.json").num_labels:  # a reward model: *ForSequenceClassification
        from ..reward.model import load_reward_model

        model, tok, _ = load_reward_model(ckpt)
    else:  # a language model, or a likelihood reward model (a language model with a reward.json)
        model, tok = load_checkpoint(ckpt)
    cfg = model.config
    config = hf_config(cfg, dtype)  # validates the mapping before anything is written
    from ..reward.model import META_FILE, read_reward_meta

    meta = read_reward_meta(ckpt)  # {} for a language model
    tensors = hf_state_dict(cfg, {k: v.to(DTYPES[dtype]).contiguous()
                                  for k, v in state_dict_for_save(model).items()})
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", config)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    tok.save(out, model_max_length=cfg.max_position_embeddings)
    _write_json(out / "generation_config.json", generation_config(tok))
    if meta:  # a reward model's kind, beta and score centre travel with it
        _write_json(out / META_FILE, meta)
    return out


def _check_output_dir(out: Path, ckpt: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; choose another output path")
    if out.resolve() == ckpt.resolve():
        raise UserError(f"{out}: is the checkpoint itself; export into another directory")


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ============================================================================ import

def import_hf(src_dir, out_dir) -> tuple[Path, list[str]]:
    """Convert a transformers (or original MiniMind) folder into a minimind checkpoint.

    Returns (checkpoint path, notes): notes say what the user should know about the result.
    """
    from ..model import MiniMindForCausalLM
    from ..tokenizer import Tokenizer

    src = Path(src_dir)
    if not src.is_dir():
        raise UserError(f"{src}: directory not found")
    if Path(out_dir).resolve() == src.resolve():
        raise UserError(f"{out_dir}: is the source folder; import into another directory")
    d = _read_config(src / "config.json")
    mt = d.get("model_type")
    weights = _read_weights(src)
    if mt == "minimind":
        kw, notes = _minimind_config(d, weights, str(src))
    elif mt in ARCHITECTURES:
        kw, notes = _transformers_config(d, mt, weights, str(src / "config.json"))
        weights = _weights_from_transformers(weights, mt, str(src))
    else:
        raise UserError(f"{src / 'config.json'}: model_type {mt!r} is not supported; import reads "
                        f"{', '.join(sorted(ARCHITECTURES))} and minimind")
    kw["tie_word_embeddings"] = _resolve_tie(weights, kw["tie_word_embeddings"], str(src))
    if not (src / "tokenizer.json").is_file():
        raise UserError(f"{src}: missing tokenizer.json; copy the model's tokenizer files into the folder")
    tok = Tokenizer.load(src)
    kw.update(bos_token_id=tok.im_start_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    cfg = ModelConfig(**kw)
    check_tokenizer_matches(cfg, tok, where=str(src))
    model = MiniMindForCausalLM(cfg)
    _load_checked(model, weights, str(src))
    model.eval()
    return save_checkpoint(out_dir, model, tok), notes


def _read_config(path: Path) -> dict:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing config.json; is this a Hugging Face model folder?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: must hold a JSON object")
    return d


def _read_weights(src: Path) -> dict:
    """All tensors of a folder: model.safetensors, sharded safetensors or pytorch_model.bin."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index = src / index_name
        if index.is_file():
            shards = sorted(set(_read_config(index).get("weight_map", {}).values()))
            files = [_shard_path(src, s, index) for s in shards]
        elif (src / single).is_file():
            files = [src / single]
        else:
            continue
        weights = {}
        for f in files:
            try:
                if f.suffix == ".safetensors":
                    weights.update(load_file(str(f)))
                else:
                    weights.update(torch.load(f, map_location="cpu", weights_only=True))
            except (SafetensorError, OSError, RuntimeError, ValueError, TypeError, EOFError,
                    pickle.UnpicklingError):
                raise UserError(f"{f}: cannot read weights; the file is corrupt, truncated or not a "
                                "plain state dict of tensors") from None
        return weights
    raise UserError(f"{src}: no weights found (model.safetensors, model.safetensors.index.json "
                    "or pytorch_model.bin)")


def _shard_path(src: Path, name, index: Path) -> Path:
    """A shard named by an index file, refused unless it lies inside the import folder (no ../, no
    absolute path, no link leading out): a downloaded index must not read files elsewhere."""
    if not isinstance(name, str) or not name:
        raise UserError(f"{index}: weight_map values must be shard file names, got {name!r}")
    path = (src / name).resolve()
    if not path.is_relative_to(src.resolve()):
        raise UserError(f"{index}: shard {name!r} points outside {src}; refusing to read it "
                        f"(shards must be files inside the model folder)")
    return path


def _get(d: dict, key: str, default=None, where: str = ""):
    """d[key], or the default when missing or null; no default means the key is required."""
    value = d.get(key)
    if value is None:
        if default is None:
            raise UserError(f"{where}: config.json has no {key!r}")
        return default
    return value


def _rope_from_hf(d: dict, mt: str, where: str) -> tuple[float, dict | None]:
    """(rope_theta, minimind rope_scaling) from `rope_parameters` or `rope_theta`/`rope_scaling`."""
    params = d.get("rope_parameters") or d.get("rope_scaling") or {}
    theta = float(params.get("rope_theta") or d.get("rope_theta") or _HF_DEFAULTS[mt]["rope_theta"])
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return theta, None
    if kind != "yarn":
        raise UserError(f"{where}: rope type {kind!r} is not supported (minimind has plain RoPE and YaRN)")
    if params.get("attention_factor") is not None or params.get("mscale") or params.get("truncate") is False:
        raise UserError(f"{where}: YaRN with attention_factor / mscale / truncate=false is not supported; "
                        "minimind's YaRN uses attention factor 0.1*ln(factor)+1 and a truncated ramp")
    original = params.get("original_max_position_embeddings") or _get(d, "max_position_embeddings", where=where)
    factor = params.get("factor") or _get(d, "max_position_embeddings", where=where) / original
    return theta, {"type": "yarn", "factor": float(factor), "original_max_position_embeddings": int(original),
                   "beta_fast": float(params.get("beta_fast") or 32.0),
                   "beta_slow": float(params.get("beta_slow") or 1.0)}


def _transformers_config(d: dict, mt: str, weights: dict, where: str) -> tuple[dict, list[str]]:
    """ModelConfig keywords from a llama / qwen3 / qwen2_moe / qwen3_moe / mixtral config.json."""
    def unsupported(ok: bool, what: str):
        if not ok:
            raise UserError(f"{where}: {what} is not supported by minimind's model")

    unsupported(d.get("hidden_act", "silu") == "silu", f"hidden_act {d.get('hidden_act')!r}")
    unsupported(not d.get("mlp_bias"), "mlp_bias")
    unsupported(not d.get("use_sliding_window") and (mt != "mixtral" or d.get("sliding_window") is None),
                "sliding-window attention")
    unsupported(d.get("partial_rotary_factor", 1.0) == 1.0, "partial rotary embeddings")
    heads, hidden = _get(d, "num_attention_heads", where=where), _get(d, "hidden_size", where=where)
    theta, scaling = _rope_from_hf(d, mt, where)
    kw = dict(vocab_size=_get(d, "vocab_size", where=where), hidden_size=hidden,
              num_hidden_layers=_get(d, "num_hidden_layers", where=where), num_attention_heads=heads,
              num_key_value_heads=_get(d, "num_key_value_heads", heads),
              head_dim=_get(d, "head_dim", hidden // heads),
              intermediate_size=_get(d, "intermediate_size", where=where),
              max_position_embeddings=_get(d, "max_position_embeddings", 2048),
              rope_theta=theta, rope_scaling=scaling,
              rms_norm_eps=_get(d, "rms_norm_eps", _HF_DEFAULTS[mt]["rms_norm_eps"]),
              qk_norm=mt in ("qwen3", "qwen3_moe"),
              tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
              initializer_range=_get(d, "initializer_range", 0.02), name=f"imported-{mt}")
    # Qwen2-MoE names the q/k/v bias qkv_bias (default true); the others attention_bias
    kw["attention_bias"] = bool(d.get("qkv_bias", True) if mt == "qwen2_moe" else d.get("attention_bias", False))
    if mt in ("qwen2_moe", "qwen3_moe", "mixtral"):
        kw.update(_moe_from_hf(d, mt, where))
    return kw, []


def _moe_from_hf(d: dict, mt: str, where: str) -> dict:
    if mt != "mixtral":
        if d.get("decoder_sparse_step", 1) != 1 or d.get("mlp_only_layers"):
            raise UserError(f"{where}: dense layers between MoE layers (decoder_sparse_step / "
                            "mlp_only_layers) are not supported; minimind's MoE models are MoE in every layer")
    if mt == "mixtral":
        experts, width, norm = _get(d, "num_local_experts", where=where), d["intermediate_size"], True
    else:
        experts, width = _get(d, "num_experts", where=where), _get(d, "moe_intermediate_size", where=where)
        norm = bool(d.get("norm_topk_prob", False))
    kw = dict(num_experts=experts, num_experts_per_tok=_get(d, "num_experts_per_tok", where=where),
              moe_intermediate_size=width, norm_topk_prob=norm,
              router_aux_loss_coef=_get(d, "router_aux_loss_coef", 0.001))
    if mt == "qwen2_moe":
        shared = _get(d, "shared_expert_intermediate_size", where=where)
        if shared % width:
            raise UserError(f"{where}: shared_expert_intermediate_size ({shared}) is not a multiple of "
                            f"moe_intermediate_size ({width}); minimind's shared expert is S experts wide")
        kw["num_shared_experts"] = shared // width
    return kw


def _weights_from_transformers(weights: dict, mt: str, where: str) -> dict:
    """Rename a transformers checkpoint's tensors to minimind's names."""
    out = {}
    for name, t in weights.items():
        if name.endswith("rotary_emb.inv_freq"):  # a buffer some old checkpoints stored
            continue
        if name.endswith("self_attn.o_proj.bias"):
            if torch.count_nonzero(t):
                raise UserError(f"{where}: {name} is not zero; minimind's attention output has no bias")
            continue
        if mt == "mixtral":
            for ours, theirs in reversed(_MIXTRAL_NAMES):
                name = name.replace(theirs, ours)
        fused = re.fullmatch(r"(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)", name)
        if fused:  # transformers >= 5 layout: (E, 2f, d) gate and up stacked, (E, d, f) down
            prefix, kind = fused.groups()
            for e, w in enumerate(t):
                if kind == "down_proj":
                    out[f"{prefix}.{e}.down_proj.weight"] = w
                else:
                    gate, up = w.chunk(2, dim=0)
                    out[f"{prefix}.{e}.gate_proj.weight"], out[f"{prefix}.{e}.up_proj.weight"] = gate, up
            continue
        out[name] = t
    return out


# MiniMind's defaults when its config.json leaves a key out: v2 (no q/k norm) and v3 (q/k norm)
_MINIMIND_DEFAULTS = {
    2: dict(num_attention_heads=8, num_key_value_heads=2, rms_norm_eps=1e-5, num_experts=4,
            num_experts_per_tok=2),
    3: dict(num_attention_heads=8, num_key_value_heads=4, rms_norm_eps=1e-6, num_experts=4,
            num_experts_per_tok=1),
}


def _minimind_config(d: dict, weights: dict, where: str) -> tuple[dict, list[str]]:
    """ModelConfig keywords from the original MiniMind project's config.json (+ weight shapes).

    MiniMind2 has no q/k norm and names its MoE keys n_routed_experts / n_shared_experts;
    MiniMind3 has q/k norm and num_experts. The version is read off the weights.
    """
    qk_norm = "model.layers.0.self_attn.q_norm.weight" in weights
    defaults = _MINIMIND_DEFAULTS[3 if qk_norm else 2]
    hidden = _get(d, "hidden_size", where=where)
    heads = _get(d, "num_attention_heads", defaults["num_attention_heads"])
    notes = []
    kw = dict(vocab_size=_get(d, "vocab_size", 6400), hidden_size=hidden,
              num_hidden_layers=_get(d, "num_hidden_layers", where=where), num_attention_heads=heads,
              num_key_value_heads=_get(d, "num_key_value_heads", defaults["num_key_value_heads"]),
              head_dim=_get(d, "head_dim", hidden // heads),
              max_position_embeddings=_get(d, "max_position_embeddings", 32768),
              rope_theta=float(_get(d, "rope_theta", 1e6)),
              rms_norm_eps=_get(d, "rms_norm_eps", defaults["rms_norm_eps"]),
              qk_norm=qk_norm, tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
              name="imported-minimind")
    if d.get("hidden_act", "silu") != "silu":
        raise UserError(f"{where}: hidden_act {d['hidden_act']!r} is not supported (minimind uses silu)")
    if d.get("inference_rope_scaling"):
        notes.append("the source turns on YaRN at inference (inference_rope_scaling) with attention "
                     "factor 1.0, which minimind's YaRN (factor 0.1*ln(s)+1) does not reproduce; "
                     "imported with plain RoPE, as the model was trained")
    if d.get("use_moe"):
        kw.update(_minimind_moe(d, weights, defaults, where))
        kw["intermediate_size"] = _get(d, "intermediate_size", kw["moe_intermediate_size"])
    else:  # MiniMind may save intermediate_size as null: the weights know it
        kw["intermediate_size"] = (d.get("intermediate_size")
                                   or _shape0(weights, "model.layers.0.mlp.gate_proj.weight", where))
    return kw, notes


def _minimind_moe(d: dict, weights: dict, defaults: dict, where: str) -> dict:
    shared = int(d.get("n_shared_experts") or 0)
    if shared:
        raise UserError(
            f"{where}: this MiniMind MoE model has {shared} shared expert(s), which MiniMind adds to the "
            "output unscaled; minimind's shared expert is Qwen2-MoE style, scaled by a learned sigmoid "
            "gate that cannot be made constant, so importing would change the model. Dense MiniMind "
            "models and MoE models without shared experts import exactly")
    if d.get("scoring_func", "softmax") != "softmax":
        raise UserError(f"{where}: scoring_func {d['scoring_func']!r} is not supported (softmax only)")
    top_k = _get(d, "num_experts_per_tok", defaults["num_experts_per_tok"])
    norm = bool(d.get("norm_topk_prob", True))
    if "n_routed_experts" in d and "num_experts" not in d:
        norm = norm and top_k > 1  # MiniMind2 renormalises only when it keeps more than one expert
    return dict(num_experts=_get(d, "num_experts", _get(d, "n_routed_experts", defaults["num_experts"])),
                num_experts_per_tok=top_k, norm_topk_prob=norm,
                moe_intermediate_size=_shape0(weights, "model.layers.0.mlp.experts.0.gate_proj.weight", where),
                router_aux_loss_coef=float(d.get("router_aux_loss_coef", d.get("aux_loss_alpha", 0.01))))


def _shape0(weights: dict, name: str, where: str) -> int:
    if name not in weights:
        raise UserError(f"{where}: weights have no {name}; the weights do not match config.json")
    return int(weights[name].shape[0])


def _resolve_tie(weights: dict, tie: bool, where: str) -> bool:
    """Decide tied embeddings from the stored tensors; leaves model.embed_tokens.weight in place."""
    emb, head = weights.get("model.embed_tokens.weight"), weights.get("lm_head.weight")
    if emb is None and head is not None and tie:  # tied the other way round (MiniMind): embed = lm_head
        weights["model.embed_tokens.weight"] = weights.pop("lm_head.weight")
        return True
    if head is None:
        return True  # only the embedding is stored: the head is tied to it
    if tie:
        if emb is not None and not torch.equal(emb, head):
            raise UserError(f"{where}: config.json says tie_word_embeddings but lm_head.weight differs "
                            "from model.embed_tokens.weight; set tie_word_embeddings to false")
        weights.pop("lm_head.weight")
    return tie


def _load_checked(model, weights: dict, where: str) -> None:
    """Load renamed tensors into the model after checking names and shapes against it."""
    expected = {k: v for k, v in model.state_dict().items()
                if not (model.config.tie_word_embeddings and k == "lm_head.weight")}
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise UserError(f"{where}: weights do not match config.json (missing {missing[:3]}"
                        f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
                        f"{'...' if len(unexpected) > 3 else ''})")
    for k, v in weights.items():
        if v.shape != expected[k].shape:
            raise UserError(f"{where}: tensor {k} has shape {tuple(v.shape)} but config.json implies "
                            f"{tuple(expected[k].shape)}")
    float_dtypes = {v.dtype for v in weights.values() if v.is_floating_point()}
    if len(float_dtypes) == 1:  # keep the source precision (a bf16 model stays bf16)
        dtype = float_dtypes.pop()
        model.to(dtype)
        model.config.torch_dtype = str(dtype).removeprefix("torch.")
    model.load_state_dict(weights, strict=False)
