import math

import pytest
import torch

from minimind.config import PRESETS, ModelConfig, get_preset
from minimind.errors import UserError
from minimind.model import KVCache, MiniMindForCausalLM, MoE, padded_mask, rope_frequencies


def tiny(**kw):
    base = dict(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256)
    base.update(kw)
    return ModelConfig(**base)


FAMILIES = {
    "dense": tiny(),
    "qwen3": tiny(head_dim=24, qk_norm=True, tie_word_embeddings=False),
    "moe-shared": tiny(num_experts=4, num_experts_per_tok=2, num_shared_experts=1),
    "moe-top1": tiny(num_experts=4, num_experts_per_tok=1, qk_norm=True, head_dim=24),
}


# Expected sizes from the issue (millions), checked within 2%
@pytest.mark.parametrize("name,total,active", [
    ("minimind2-small", 26, 26), ("minimind2", 104, 104), ("minimind2-moe", 145, None),
    ("minimind3", 64, 64), ("minimind3-moe", 198, 64),
])
def test_preset_parameter_counts(name, total, active):
    cfg = get_preset(name)
    c = cfg.param_counts()
    assert abs(c["total"] / 1e6 - total) / total < 0.02
    if active:
        assert abs(c["active"] / 1e6 - active) / active < 0.02


@pytest.mark.parametrize("name", ["nano", "minimind2-moe", "minimind3"])
def test_param_count_formula_matches_module(name):
    cfg = get_preset(name)
    assert MiniMindForCausalLM(cfg).num_params() == cfg.param_counts()["total"]


def test_nano_is_demo_sized():
    assert 3e6 <= get_preset("nano").param_counts()["total"] <= 8e6
    assert 5e5 <= get_preset("pico").param_counts()["total"] <= 2e6  # the 10-minute demo's model


def test_unknown_preset_is_user_error():
    with pytest.raises(UserError, match="unknown preset 'tiny'"):
        get_preset("tiny")


def test_flops_per_token_is_six_n_plus_attention():
    cfg = get_preset("minimind2-small")
    c = cfg.param_counts()
    n_matmul = c["total"] - c["embedding"] + c["lm_head"] - (2 * 8 + 1) * 512
    assert cfg.flops_per_token(512) == 6 * n_matmul + 6 * 8 * 8 * 64 * 512


@pytest.mark.parametrize("family", list(FAMILIES))
def test_kv_cache_decoding_equals_full_forward(family):
    torch.manual_seed(0)
    cfg = FAMILIES[family]
    m = MiniMindForCausalLM(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (3, 40))
    with torch.no_grad():
        full = m(x).logits
        cache = KVCache(cfg, 3, 64)
        parts = [m(x[:, :17], cache=cache).logits]  # prefill
        parts += [m(x[:, t:t + 1], cache=cache).logits for t in range(17, 30)]  # one at a time
        parts.append(m(x[:, 30:], cache=cache).logits)  # a chunk after the cache
    inc = torch.cat(parts, dim=1)
    assert (full - inc).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", list(FAMILIES))
def test_causality(family):
    torch.manual_seed(1)
    cfg = FAMILIES[family]
    m = MiniMindForCausalLM(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 24))
    y = x.clone()
    y[:, 15:] = (y[:, 15:] + 1) % cfg.vocab_size
    with torch.no_grad():
        a, b = m(x).logits, m(y).logits
    # MoE regroups tokens by expert, so matmul blocking (not information) differs: float noise only
    assert (a[:, :15] - b[:, :15]).abs().max().item() <= 1e-5
    assert (a[:, 15:] - b[:, 15:]).abs().max() > 1e-3  # the change does reach later positions


def test_left_padding_with_mask_equals_unpadded():
    torch.manual_seed(2)
    cfg = FAMILIES["moe-shared"]
    m = MiniMindForCausalLM(cfg).eval()
    x = torch.randint(1, cfg.vocab_size, (1, 10))
    padded = torch.cat([torch.zeros(1, 5, dtype=torch.long), x], dim=1)
    valid = torch.cat([torch.zeros(1, 5, dtype=torch.bool), torch.ones(1, 10, dtype=torch.bool)], 1)
    pos = (valid.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = m(x).logits
        out = m(padded, position_ids=pos, mask=padded_mask(valid, 15)).logits[:, 5:]
    assert (ref - out).abs().max().item() <= 1e-4


def test_moe_routes_each_token_to_exactly_k_experts():
    torch.manual_seed(3)
    cfg = tiny(num_experts=6, num_experts_per_tok=2)
    moe = MoE(cfg)
    x = torch.randn(50, cfg.hidden_size)
    w, idx, probs = moe.route(x)
    assert idx.shape == (50, 2)
    assert all(len(set(r)) == 2 for r in idx.tolist())  # k distinct experts per token
    assert torch.allclose(w.sum(-1), torch.ones(50))  # normalised top-k weights
    # the output equals the explicit per-token weighted sum of the chosen experts
    y, _ = moe(x[None])
    ref = torch.stack([sum(w[n, j] * moe.experts[idx[n, j]](x[n]) for j in range(2)) for n in range(50)])
    assert (y[0] - ref).abs().max().item() < 1e-5


def test_moe_aux_loss_minimal_for_uniform_router():
    cfg = tiny(num_experts=4, num_experts_per_tok=1, router_aux_loss_coef=0.1)
    moe = MoE(cfg)
    n = 400
    uniform = torch.full((n, 4), 0.25)
    balanced_idx = torch.arange(n).remainder(4)[:, None]
    aux_uniform = moe.aux_loss(balanced_idx, uniform).item()
    assert math.isclose(aux_uniform, 0.1, rel_tol=1e-6)  # = alpha exactly
    skewed = torch.tensor([0.7, 0.1, 0.1, 0.1]).expand(n, 4)
    aux_skewed = moe.aux_loss(torch.zeros(n, 1, dtype=torch.long), skewed).item()
    assert aux_skewed > aux_uniform * 2
    # and the training forward adds it: the model's aux is the sum over layers
    m = MiniMindForCausalLM(cfg).train()
    out = m(torch.randint(0, cfg.vocab_size, (2, 16)))
    assert out.aux_loss is not None and out.aux_loss.item() > 0
    assert out.aux_loss.requires_grad


def test_yarn_off_equals_plain_rope_and_on_changes_long_range_only():
    inv, scale = rope_frequencies(64, 1e6, None)
    ref = 1.0 / 1e6 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    assert scale == 1.0 and torch.allclose(inv, ref.float())
    yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096,
            "beta_fast": 32.0, "beta_slow": 1.0}
    inv_y, scale_y = rope_frequencies(64, 1e6, yarn)
    assert math.isclose(scale_y, 0.1 * math.log(4) + 1)
    assert torch.allclose(inv_y[:6], inv[:6])  # highest frequencies (> 32 turns in 4096) kept
    assert torch.allclose(inv_y[-1], inv[-1] / 4)  # lowest frequencies interpolated by the factor
    # model-level switch: turning YaRN on and off again restores the exact logits
    torch.manual_seed(4)
    cfg = tiny()
    m = MiniMindForCausalLM(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (1, 32))
    with torch.no_grad():
        a = m(x).logits
        m.model.set_rope_scaling(yarn)
        b = m(x).logits
        m.model.set_rope_scaling(None)
        c = m(x).logits
    assert torch.equal(a, c) and not torch.allclose(a, b)


def test_tied_embeddings_share_storage():
    m = MiniMindForCausalLM(tiny())
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    m2 = MiniMindForCausalLM(tiny(tie_word_embeddings=False))
    assert m2.lm_head.weight.data_ptr() != m2.model.embed_tokens.weight.data_ptr()


def test_hf_parameter_names():
    names = set(MiniMindForCausalLM(FAMILIES["moe-shared"]).state_dict())
    for n in ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
              "model.layers.1.mlp.experts.3.down_proj.weight", "model.layers.0.mlp.gate.weight",
              "model.layers.0.mlp.shared_expert.up_proj.weight", "model.layers.0.mlp.shared_expert_gate.weight",
              "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
              "model.norm.weight"]:
        assert n in names, n
    q3 = set(MiniMindForCausalLM(FAMILIES["qwen3"]).state_dict())
    assert "model.layers.0.self_attn.q_norm.weight" in q3 and "lm_head.weight" in q3


def test_bad_config_values_are_user_errors():
    with pytest.raises(UserError, match="num_key_value_heads"):
        tiny(num_key_value_heads=3)
    with pytest.raises(UserError, match="num_experts_per_tok"):
        tiny(num_experts=2, num_experts_per_tok=3)
    with pytest.raises(UserError, match="unknown keys"):
        ModelConfig.from_dict({"hidden_size": 64, "n_layers": 2})


def test_all_presets_construct_configs():
    for name in PRESETS:
        cfg = get_preset(name)
        assert cfg.vocab_size == 6400


def test_segment_mask_equals_separate_sequences():
    """Two sequences packed in one row give exactly the logits of each run alone."""
    from minimind.model import segment_mask

    torch.manual_seed(5)
    cfg = FAMILIES["qwen3"]
    m = MiniMindForCausalLM(cfg).eval()
    a, b = torch.randint(0, cfg.vocab_size, (1, 7)), torch.randint(0, cfg.vocab_size, (1, 5))
    row = torch.cat([a, b, torch.zeros(1, 3, dtype=torch.long)], dim=1)  # + 3 padding
    seg = torch.tensor([[0] * 7 + [1] * 5 + [-1] * 3])
    pos, mask = segment_mask(seg)
    assert pos.tolist() == [list(range(7)) + list(range(5)) + [0, 1, 2]]
    with torch.no_grad():
        packed = m(row, position_ids=pos, mask=mask).logits
        assert (packed[:, :7] - m(a).logits).abs().max() < 1e-5
        assert (packed[:, 7:12] - m(b).logits).abs().max() < 1e-5
