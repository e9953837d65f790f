"""GGUF export for llama.cpp (and ollama, LM Studio, ... which run llama.cpp).

A GGUF file is one self-contained model: key/value metadata (architecture hyper-parameters, the
tokenizer, the chat template) followed by the tensors, written here with the `gguf` package's
`GGUFWriter` straight from a checkpoint — no detour through llama.cpp's `convert_hf_to_gguf.py`.

Which llama.cpp architecture runs which minimind shape (each computes exactly our function):

    dense, no q/k norm                    llama      (the must: every llama.cpp build runs it)
    dense, q/k norm (MiniMind3)           qwen3
    MoE, no shared expert, q/k norm       qwen3moe   (top-k weights renormalised: norm_topk_prob)
    MoE, no shared expert, no q/k norm    llama      with experts, as Mixtral (renormalised too)
    MoE + shared expert, no q/k norm      qwen2moe   (only with norm_topk_prob=false: llama.cpp's
                                                      qwen2moe never renormalises the top-k weights)

Two details make the numbers agree:

- **Rotary layout.** Our RoPE (like Hugging Face's) rotates pairs (x_i, x_{i+d/2}) of each head
  ("rotate_half", llama.cpp's NEOX mode, used by its qwen* architectures). llama.cpp's `llama`
  architecture rotates adjacent pairs (x_{2i}, x_{2i+1}). So for `llama` the rows of q_proj and
  k_proj are reordered inside every head to interleave the two halves — the permutation of
  `convert_hf_to_gguf.py`'s LlamaModel. Applied to both q and k it leaves every q.k unchanged.
- **Tokenizer.** Our tokenizer is a byte-level BPE whose pre-tokenizer split is Qwen2's regex
  (digits one by one, no prefix space) cut finer (one piece per Chinese character, no punctuation
  mark joined to the letters after it; tokenizers trained before that carry Qwen2's own). BPE
  never learned a merge across those finer cuts, so Qwen2's split gives the same ids
  (tests/test_tokenizer.py). The file says `tokenizer.ggml.model = "gpt2"` and names the existing
  pre-tokenizer "qwen2" (llama.cpp has no hash to recognise a custom tokenizer by, and refuses
  unknown ones; naming a known one that splits to the same ids means nobody patches anything). Tokens are stored in their byte-level form with GPT-2's merges; <|im_start|> &
  co are control tokens, the <think>/<tool_call> tags user-defined (always one token in text, as
  in our tokenizer, and printed when generated).

Weight types: f32 (exact), f16 (the usual), q8_0 (8-bit blocks of 32 with one scale each).
Norm weights and other 1-D tensors stay f32, as llama.cpp expects.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import check_checkpoint_dir, load_checkpoint, state_dict_for_save
from ..config import ModelConfig
from ..errors import UserError

GGUF_DTYPES = ("f32", "f16", "q8_0")

# minimind name (inside model.layers.{i}.) -> GGUF name (inside blk.{i}.); see gguf.TENSOR_NAMES
_LAYER_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.gate.weight": "ffn_gate_inp.weight",  # the router
    "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
    "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",
}
_EXPERT_TENSORS = {"gate_proj": "ffn_gate_exps.weight", "up_proj": "ffn_up_exps.weight",
                   "down_proj": "ffn_down_exps.weight"}
_GLOBAL_TENSORS = {"model.embed_tokens.weight": "token_embd.weight",
                   "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}


def _gguf():
    """The gguf package (an optional dependency), imported when first needed."""
    try:
        import gguf
    except ImportError:
        raise UserError("export gguf needs the gguf package: pip install gguf") from None
    return gguf


def gguf_arch(cfg: ModelConfig) -> str:
    """The llama.cpp architecture that computes exactly what this config computes."""
    if not cfg.is_moe:
        return "qwen3" if cfg.qk_norm else "llama"
    if cfg.num_shared_experts:
        if cfg.qk_norm:
            raise UserError("export gguf: llama.cpp has no architecture with both q/k norm and a "
                            "shared expert (qwen2moe has the shared expert, qwen3moe the q/k norm)")
        if cfg.norm_topk_prob:
            raise UserError("export gguf: llama.cpp's qwen2moe (the architecture with a gated shared "
                            "expert) never renormalises the top-k routing weights, and this model does "
                            "(norm_topk_prob=true), so the GGUF would compute a different model; "
                            "use `minimind export hf` (Qwen2MoeForCausalLM) for this model instead")
        if cfg.num_attention_heads * cfg.head_dim != cfg.hidden_size:
            raise UserError("export gguf: llama.cpp's qwen2moe needs num_attention_heads * head_dim "
                            "== hidden_size")
        return "qwen2moe"
    if not cfg.norm_topk_prob:
        raise UserError("export gguf: llama.cpp's MoE architectures without a shared expert always "
                        "renormalise the top-k routing weights; this model has norm_topk_prob=false")
    return "qwen3moe" if cfg.qk_norm else "llama"


def permute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of q/k (per head: first half, second half) -> GGML's interleaved rotary pairs.

    Per head, row j of the first half (x_j) and row j of the second half (x_{j+d/2}) form one
    rotary pair; GGML's llama rope rotates rows (2j, 2j+1). Works for weights (rows, d) and
    biases (rows,).
    """
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rotary(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of `permute_rotary` (GGML interleaved pairs -> rotate_half halves)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(cfg: ModelConfig, sd: dict, arch: str):
    """Yield (GGUF name, float32 numpy array) for every tensor, in llama.cpp's layout."""
    def arr(t):
        return t.detach().to(torch.float32).cpu().numpy()

    yield "token_embd.weight", arr(sd["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        prefix = f"model.layers.{i}."
        for ours, theirs in _LAYER_TENSORS.items():
            if prefix + ours not in sd:
                continue
            w = arr(sd[prefix + ours])
            if arch == "llama" and ours.startswith("self_attn.q_proj"):
                w = permute_rotary(w, cfg.num_attention_heads)
            elif arch == "llama" and ours.startswith("self_attn.k_proj"):
                w = permute_rotary(w, cfg.num_key_value_heads)
            elif ours == "mlp.shared_expert_gate.weight":
                w = w.reshape(-1)  # (1, d) -> (d,): llama.cpp's shape for the shared-expert gate
            yield f"blk.{i}.{theirs}", w
        if cfg.is_moe:  # experts stacked into one 3-D tensor: (E, f, d) / (E, d, f)
            for kind, theirs in _EXPERT_TENSORS.items():
                w = np.stack([arr(sd[f"{prefix}mlp.experts.{e}.{kind}.weight"]) for e in range(cfg.num_experts)])
                yield f"blk.{i}.{theirs}", w
    yield "output_norm.weight", arr(sd["model.norm.weight"])
    # A tied head is not stored (llama.cpp reuses token_embd), except where an arch requires it.
    if not cfg.tie_word_embeddings:
        yield "output.weight", arr(sd["lm_head.weight"])
    elif arch == "qwen2moe":
        yield "output.weight", arr(sd["model.embed_tokens.weight"])


def _add_hparams(w, cfg: ModelConfig, arch: str) -> None:
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    # llama.cpp's llama arch reads the expert width from feed_forward_length
    mixtral = arch == "llama" and cfg.is_moe
    w.add_feed_forward_length(cfg.moe_intermediate_size if mixtral else cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_rope_freq_base(float(cfg.rope_theta))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(cfg.vocab_size)
    if cfg.rope_scaling:  # llama.cpp's YaRN: same ramp, attention factor 0.1 ln(s) + 1 built in
        gguf = _gguf()
        rs = cfg.rope_scaling
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(rs["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(rs.get("original_max_position_embeddings", 2048)))
        w.add_rope_scaling_yarn_beta_fast(float(rs.get("beta_fast", 32.0)))
        w.add_rope_scaling_yarn_beta_slow(float(rs.get("beta_slow", 1.0)))
    if cfg.is_moe:
        w.add_expert_count(cfg.num_experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)
        if not mixtral:
            w.add_expert_feed_forward_length(cfg.moe_intermediate_size)
        if cfg.num_shared_experts:
            w.add_expert_shared_feed_forward_length(cfg.moe_intermediate_size * cfg.num_shared_experts)


def _add_tokenizer(w, tok) -> None:
    """GPT-2 style BPE vocabulary, merges, special ids and the chat template."""
    from ..tokenizer import CHAT_TEMPLATE

    gguf = _gguf()
    added = tok.backend.get_added_tokens_decoder()  # id -> AddedToken
    tokens, types = [], []
    for i in range(tok.vocab_size):
        text = tok.id_to_token(i)
        if text is None:
            raise UserError(f"export gguf: the tokenizer has no token with id {i}; its ids must be contiguous")
        tokens.append(text)
        if i in added:
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = json.loads(tok.backend.to_str())["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]  # newer files store pairs
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")  # llama.cpp's Qwen2 regex, the split our tokenizer uses
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.im_start_id)
    w.add_eos_token_id(tok.eos_id)
    w.add_pad_token_id(tok.pad_id)
    w.add_add_bos_token(False)  # prompts are rendered by the chat template, which opens turns itself
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)


def _add_tensor(w, name: str, data: np.ndarray, dtype: str) -> None:
    gguf = _gguf()
    if data.ndim == 1 or dtype == "f32":
        w.add_tensor(name, data.astype(np.float32))
    elif dtype == "q8_0" and data.shape[-1] % 32 == 0:
        q = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:  # f16, or a q8_0 row length that is no multiple of the 32-element block
        w.add_tensor(name, data.astype(np.float16))


def export_gguf(checkpoint, out_file, dtype: str = "f16", name: str | None = None) -> Path:
    """Write one GGUF file (written to a temporary name, then renamed)."""
    gguf = _gguf()
    if dtype not in GGUF_DTYPES:
        raise UserError(f"export gguf: --dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}",
                        param="dtype")
    ckpt = check_checkpoint_dir(checkpoint)
    out = Path(out_file)
    if out.is_dir():
        raise UserError(f"{out}: is a directory; give the path of the .gguf file to write")
    model, tok = load_checkpoint(ckpt)
    cfg = model.config
    arch = gguf_arch(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype]
    try:
        w = gguf.GGUFWriter(str(tmp), arch)
        w.add_name(name or f"minimind-{cfg.name}")
        w.add_file_type(int(file_type))
        if dtype == "q8_0":
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _add_hparams(w, cfg, arch)
        _add_tokenizer(w, tok)
        for tensor_name, data in gguf_tensors(cfg, state_dict_for_save(model), arch):
            _add_tensor(w, tensor_name, data, dtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
