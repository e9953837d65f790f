"""GGUF export: metadata and tensors read back with gguf.GGUFReader; llama.cpp agrees when installed."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minimind.checkpoint import save_checkpoint
from minimind.cli import main
from minimind.config import ModelConfig
from minimind.errors import UserError
from minimind.export.gguf import export_gguf, permute_rotary, unpermute_rotary
from minimind.export.ollama import OLLAMA_TEMPLATE
from minimind.model import MiniMindForCausalLM, apply_rope
from minimind.tokenizer import CHAT_TEMPLATE, render_chat

gguf = pytest.importorskip("gguf")
try:
    import llama_cpp
except ImportError:
    llama_cpp = None
needs_llama_cpp = pytest.mark.skipif(
    llama_cpp is None,
    reason="llama-cpp-python not installed (pip install llama-cpp-python builds llama.cpp from source, several minutes)")


def tiny_model(tok, seed=0, **overrides):
    kw = dict(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(ModelConfig(**kw)).eval()
    with torch.no_grad():  # norms away from 1 and bigger weights: a wrong mapping shows in the logits
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def field(reader, key):
    return reader.fields[key].contents()


def tensor_map(reader):
    return {t.name: t for t in reader.tensors}


def as_float(t):
    """A GGUF tensor as float32 in numpy (row-major, PyTorch) order."""
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(n) for n in reversed(t.shape)])


@pytest.fixture(scope="module")
def dense(tok, tmp_path_factory):
    """A tiny dense Llama-style checkpoint exported as f32, f16 and q8_0."""
    out = tmp_path_factory.mktemp("gguf-dense")
    model = tiny_model(tok)
    save_checkpoint(out / "ckpt", model, tok)
    files = {dt: export_gguf(out / "ckpt", out / f"model-{dt}.gguf", dtype=dt) for dt in ("f32", "f16", "q8_0")}
    return model, files


def test_metadata(dense, tok):
    model, files = dense
    r = gguf.GGUFReader(files["f16"])
    cfg = model.config
    assert field(r, "general.architecture") == "llama"
    assert field(r, "tokenizer.ggml.model") == "gpt2" and field(r, "tokenizer.ggml.pre") == "qwen2"
    tokens = field(r, "tokenizer.ggml.tokens")
    assert len(tokens) == tok.vocab_size and tokens[tok.eos_id] == "<|im_end|>"
    assert tokens[500] == tok.id_to_token(500)  # byte-level form, e.g. 'Ġthe'
    merges = json.loads(tok.backend.to_str())["model"]["merges"]
    assert len(field(r, "tokenizer.ggml.merges")) == len(merges) > 0
    types = field(r, "tokenizer.ggml.token_type")
    assert types[tok.eos_id] == gguf.TokenType.CONTROL and types[tok.think_id] == gguf.TokenType.USER_DEFINED
    assert types[100] == gguf.TokenType.NORMAL
    assert field(r, "tokenizer.ggml.eos_token_id") == tok.eos_id
    assert field(r, "tokenizer.ggml.bos_token_id") == tok.im_start_id
    assert field(r, "tokenizer.ggml.padding_token_id") == tok.pad_id
    assert field(r, "tokenizer.ggml.add_bos_token") is False
    assert field(r, "tokenizer.chat_template") == CHAT_TEMPLATE
    assert field(r, "llama.context_length") == cfg.max_position_embeddings
    assert field(r, "llama.attention.head_count") == 4 and field(r, "llama.attention.head_count_kv") == 2
    assert field(r, "llama.rope.freq_base") == cfg.rope_theta
    assert field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.rms_norm_eps)
    assert field(r, "llama.feed_forward_length") == cfg.intermediate_size


def expected_names(cfg, arch, with_output):
    names = {"token_embd.weight", "output_norm.weight"} | ({"output.weight"} if with_output else set())
    per_layer = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm"]
    per_layer += ["attn_q_norm", "attn_k_norm"] if cfg.qk_norm else []
    per_layer += (["ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"] if cfg.is_moe
                  else ["ffn_gate", "ffn_up", "ffn_down"])
    per_layer += ["ffn_gate_inp_shexp", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"] \
        if cfg.num_shared_experts else []
    names |= {f"blk.{i}.{n}.weight" for i in range(cfg.num_hidden_layers) for n in per_layer}
    # every name is one llama.cpp knows for this architecture
    arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    known = {gguf.TENSOR_NAMES[t].format(bid=i) + ".weight" for t in gguf.MODEL_TENSORS[arch_enum]
             for i in range(cfg.num_hidden_layers)}
    assert names <= known
    return names


@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0"])
def test_tensor_names_types_and_values(dense, dtype):
    model, files = dense
    cfg, sd = model.config, model.state_dict()
    tensors = tensor_map(gguf.GGUFReader(files[dtype]))
    assert set(tensors) == expected_names(cfg, "llama", with_output=False)  # tied: no output.weight
    q = tensors["blk.0.attn_q.weight"]
    assert [int(n) for n in q.shape] == [64, 64]  # GGUF lists dims innermost first: (in, out)
    assert [int(n) for n in tensors["blk.1.attn_k.weight"].shape] == [64, 32]
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # 1-D stays f32
    want = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}[dtype]
    assert q.tensor_type.name == want and tensors["token_embd.weight"].tensor_type.name == want

    def ours(name):
        return sd[name].numpy()

    theirs = {name: as_float(t) for name, t in tensors.items()}
    pairs = [("token_embd.weight", ours("model.embed_tokens.weight")),
             ("output_norm.weight", ours("model.norm.weight")),
             ("blk.1.ffn_down.weight", ours("model.layers.1.mlp.down_proj.weight")),
             ("blk.1.attn_v.weight", ours("model.layers.1.self_attn.v_proj.weight")),
             ("blk.0.attn_q.weight", permute_rotary(ours("model.layers.0.self_attn.q_proj.weight"), 4)),
             ("blk.1.attn_k.weight", permute_rotary(ours("model.layers.1.self_attn.k_proj.weight"), 2))]
    tol = {"f32": 0, "f16": 1e-3, "q8_0": 2e-2}[dtype]
    for name, expected in pairs:
        assert np.abs(theirs[name] - expected).max() <= tol * np.abs(expected).max(), name
    if dtype == "f32":  # exact, and the permutation is the only change to q and k
        q_back = unpermute_rotary(theirs["blk.0.attn_q.weight"], 4)
        assert np.array_equal(q_back, ours("model.layers.0.self_attn.q_proj.weight"))
        k_back = unpermute_rotary(theirs["blk.1.attn_k.weight"], 2)
        assert np.array_equal(k_back, ours("model.layers.1.self_attn.k_proj.weight"))
        assert not np.array_equal(theirs["blk.0.attn_q.weight"], ours("model.layers.0.self_attn.q_proj.weight"))


def test_permutation_turns_rotate_half_into_interleaved_rope():
    """Rotating adjacent pairs (GGML's llama rope) of permuted rows == permuting our rotated rows."""
    n_heads, hd, T = 3, 8, 5
    x = torch.randn(1, T, n_heads, hd)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, hd, 2).float() / hd)
    angles = torch.outer(torch.arange(T).float(), inv_freq)  # (T, hd/2)
    emb = torch.cat([angles, angles], -1)[None, :, None, :]
    ours = apply_rope(x, emb.cos(), emb.sin())  # pairs (i, i + hd/2)
    # GGML: pairs (2i, 2i+1) rotated by angle i
    xp = torch.from_numpy(permute_rotary(x.reshape(T, n_heads * hd).T.numpy(), n_heads)).T.reshape(1, T, n_heads, hd)
    a, b = xp[..., 0::2], xp[..., 1::2]
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
    ggml = torch.stack([a * cos - b * sin, a * sin + b * cos], -1).reshape(1, T, n_heads, hd)
    ours_permuted = permute_rotary(ours.reshape(T, n_heads * hd).T.numpy(), n_heads).T.reshape(1, T, n_heads, hd)
    assert torch.allclose(ggml, torch.from_numpy(np.ascontiguousarray(ours_permuted)), atol=1e-6)


@pytest.mark.parametrize("family,overrides,arch", [
    ("qwen3", dict(head_dim=24, qk_norm=True, tie_word_embeddings=False), "qwen3"),
    ("qwen3_moe", dict(num_experts=4, num_experts_per_tok=1, qk_norm=True, head_dim=24,
                       moe_intermediate_size=32), "qwen3moe"),
    ("qwen2_moe", dict(num_experts=4, num_experts_per_tok=2, num_shared_experts=1, norm_topk_prob=False,
                       moe_intermediate_size=32), "qwen2moe"),
])
def test_other_architectures(family, overrides, arch, tok, tmp_path):
    model = tiny_model(tok, **overrides)
    cfg, sd = model.config, model.state_dict()
    save_checkpoint(tmp_path / "ckpt", model, tok)
    r = gguf.GGUFReader(export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf", dtype="f32"))
    assert field(r, "general.architecture") == arch
    # qwen2moe needs output.weight even when tied; qwen3 here is untied
    tensors = {name: as_float(t) for name, t in tensor_map(r).items()}
    assert set(tensors) == expected_names(cfg, arch, with_output=arch != "qwen3moe")
    # qwen* rope is NEOX (rotate_half): q is stored as is
    assert np.array_equal(tensors["blk.0.attn_q.weight"], sd["model.layers.0.self_attn.q_proj.weight"].numpy())
    if cfg.is_moe:
        assert field(r, f"{arch}.expert_count") == 4
        assert field(r, f"{arch}.expert_used_count") == cfg.num_experts_per_tok
        assert field(r, f"{arch}.expert_feed_forward_length") == 32
        up = tensors["blk.1.ffn_up_exps.weight"]  # (E, f, d)
        assert up.shape == (4, 32, 64)
        assert np.array_equal(up[2], sd["model.layers.1.mlp.experts.2.up_proj.weight"].numpy())
    if cfg.num_shared_experts:
        assert field(r, "qwen2moe.expert_shared_feed_forward_length") == 32
        assert np.array_equal(tensors["blk.0.ffn_gate_inp_shexp.weight"],
                              sd["model.layers.0.mlp.shared_expert_gate.weight"].numpy().reshape(-1))
        assert np.array_equal(tensors["output.weight"], sd["model.embed_tokens.weight"].numpy())


def test_refusals_are_user_errors(tok, tmp_path, capsys):
    # llama.cpp's qwen2moe never renormalises top-k weights: exporting would change the model
    save_checkpoint(tmp_path / "moe", tiny_model(tok, num_experts=4, num_shared_experts=1), tok)
    assert main(["export", "gguf", str(tmp_path / "moe"), str(tmp_path / "x.gguf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minimind: error:") and "renormalises" in err and err.count("\n") == 1
    assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(UserError, match="missing config.json"):
        export_gguf(tmp_path, tmp_path / "y.gguf")


def test_ollama_modelfile(dense, tmp_path, capsys):
    model, files = dense
    ckpt = files["f32"].parent / "ckpt"
    assert main(["export", "ollama", str(ckpt), str(tmp_path / "ollama"), "--temperature", "0.5"]) == 0
    text = (tmp_path / "ollama" / "Modelfile").read_text()
    lines = text.splitlines()
    assert lines[0] == "FROM ./model.gguf"
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|endoftext|>"' in lines
    assert "PARAMETER temperature 0.5" in lines
    assert f'TEMPLATE """{OLLAMA_TEMPLATE}"""' in text
    # the reply starts after the empty think block, as minimind's generation prompt does
    assert OLLAMA_TEMPLATE.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    r = gguf.GGUFReader(tmp_path / "ollama" / "model.gguf")
    assert field(r, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    assert main(["export", "ollama", str(ckpt), str(tmp_path / "o2"), "--temperature", "9"]) == 2


# ---------------------------------------------------------------------- llama.cpp itself

@pytest.fixture(scope="module")
def trained(tok, corpus, tmp_path_factory):
    """A tiny model trained for a few seconds, so its greedy choices are not near-ties."""
    texts = [json.loads(line)["text"] for line in open(corpus / "pretrain.jsonl", encoding="utf-8")]
    data = torch.tensor([i for ids in tok.encode_batch(texts) for i in ids + [tok.eot_id]])
    torch.manual_seed(0)
    model = MiniMindForCausalLM(ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2,
                                            max_position_embeddings=256))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matmuls this small run faster on one thread than on two busy ones
    losses = []
    try:
        for _ in range(160):
            starts = torch.randint(0, len(data) - 65, (16,))
            batch = torch.stack([data[s:s + 65] for s in starts])  # (16, 65)
            loss = F.cross_entropy(model(batch[:, :-1]).logits.flatten(0, 1), batch[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    # it learned something, so greedy choices are clear, not near-ties: the last 20 batches' mean loss
    # (one batch alone varies by +-0.3) well under the uniform guess's ln(V) (6.7; ~3.9 measured)
    assert sum(losses[-20:]) / 20 < 0.7 * math.log(tok.vocab_size)
    model.eval()
    out = tmp_path_factory.mktemp("trained")
    save_checkpoint(out / "ckpt", model, tok)
    return model, out / "ckpt"


def load_llama(path):
    """llama.cpp with an f32 KV cache (its default f16 cache alone costs ~1e-3 in the logits)."""
    return llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False,
                           type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)


def llama_greedy(path, prompt, n):
    llm = load_llama(path)
    llm.eval(prompt)
    prompt_logits = np.array(llm.scores[:len(prompt)])
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return llm, prompt_logits, out


def our_greedy(model, prompt, n):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


@needs_llama_cpp
def test_llama_cpp_greedy_decode_matches(trained, tok, tmp_path):
    model, ckpt = trained
    path = export_gguf(ckpt, tmp_path / "m.gguf", dtype="f32")
    text = "Once upon a time, Nora lived in a small village. One day,"
    prompt = tok.encode(text)
    llm, prompt_logits, theirs = llama_greedy(path, prompt, 32)
    # llama.cpp's tokenizer (gpt2 model, qwen2 pre-tokenizer, our merges) splits text like ours,
    # digits one by one and Chinese included
    for t in [text, "What is 27 + 58? It is 85.", "法国的首都是巴黎。 1234 apples"]:
        assert llm.tokenize(t.encode(), add_bos=False, special=True) == tok.encode(t), t
    chat = render_chat(tok, [{"role": "user", "content": "Hi <think> 3+4?"}], add_generation_prompt=True)[0]
    assert llm.tokenize(tok.decode(chat).encode(), add_bos=False, special=True) == chat
    with torch.no_grad():
        ours_logits = model(torch.tensor([prompt])).logits[0].numpy()
    assert np.abs(prompt_logits - ours_logits).max() <= 1e-4
    assert theirs == our_greedy(model, prompt, 32)


@needs_llama_cpp
@pytest.mark.parametrize("overrides", [
    dict(head_dim=24, qk_norm=True, tie_word_embeddings=False),  # qwen3
    dict(num_experts=4, num_experts_per_tok=1, qk_norm=True, head_dim=24, moe_intermediate_size=32),  # qwen3moe
    dict(num_experts=4, num_experts_per_tok=2, num_shared_experts=1, norm_topk_prob=False,
         moe_intermediate_size=32),  # qwen2moe
    dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),  # llama with experts (Mixtral)
    dict(rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),  # YaRN
], ids=["qwen3", "qwen3moe", "qwen2moe", "llama-moe", "llama-yarn"])
def test_llama_cpp_logits_match_for_every_architecture(overrides, tok, tmp_path):
    model = tiny_model(tok, **overrides)
    save_checkpoint(tmp_path / "ckpt", model, tok)
    path = export_gguf(tmp_path / "ckpt", tmp_path / "m.gguf", dtype="f32")
    prompt = torch.randint(16, tok.vocab_size, (150,), generator=torch.Generator().manual_seed(6)).tolist()
    llm = load_llama(path)
    llm.eval(prompt)
    with torch.no_grad():
        ours = model(torch.tensor([prompt])).logits[0].numpy()
    assert np.abs(ours).max() > 1  # logits big enough for the tolerance to mean something
    assert np.abs(np.array(llm.scores[:len(prompt)]) - ours).max() <= 1e-4
