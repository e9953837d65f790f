"""The fast decode path: the weight format chosen per machine (and cached), both machine classes
(forced by environment), the compiled step against the eager one, the fallback, int8 decoding."""

import json

import pytest
import torch

from minimind.checkpoint import save_checkpoint
from minimind.config import ModelConfig
from minimind.infer import decode
from minimind.infer.engine import Engine, SamplingParams
from minimind.infer.generate import load_engine
from minimind.model import MiniMindForCausalLM


def tiny(tok, layers=2, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False)
    model = MiniMindForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight[:16] = 0  # rows run to max_new_tokens
    return model


def prompts(tok):
    return [tok.encode(t) for t in ("The capital of France", "1 + 2 =", "Once upon a time, a small robot lived")]


def test_decode_weights_are_measured_once_and_cached(tok, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMIND_CACHE", str(tmp_path))
    monkeypatch.delenv("MINIMIND_DECODE_WEIGHTS", raising=False)
    model = tiny(tok)
    measured = []
    real = decode.gemv_seconds
    monkeypatch.setattr(decode, "gemv_seconds", lambda *a, **k: measured.append(a[0]) or real(*a, **k))
    choice = decode.choose_decode_weights(model, "auto")
    assert choice in ("fp32", "bf16") and set(measured) == {torch.float32, torch.bfloat16}
    cached = json.loads((tmp_path / "decode_weights.json").read_text())
    (entry,) = cached.values()
    assert entry["choice"] == choice and entry["seconds"][choice] == min(entry["seconds"].values())
    measured.clear()
    assert decode.choose_decode_weights(model, "auto") == choice and measured == []  # from the cache
    assert decode.choose_decode_weights(model.to(torch.bfloat16), "auto") == "model"  # bf16 already: no copy
    monkeypatch.setenv("MINIMIND_DECODE_WEIGHTS", "int8")
    assert decode.choose_decode_weights(model, "auto") == "int8"


def test_streamed_weights_count_what_one_decode_step_reads(tok):
    """Every matrix once: the untied embedding is gathered (one row), not streamed; a tied one is
    the output head; of a MoE layer's routed experts only num_experts_per_tok are read."""
    untied = tiny(tok)
    h, inter, v, L = 64, untied.config.intermediate_size, tok.vocab_size, 2
    kv = untied.config.num_key_value_heads * untied.config.head_dim
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter
    assert decode.streamed_weights(untied) == L * per_layer + v * h
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True, num_experts=4, num_experts_per_tok=1)
    moe = MiniMindForCausalLM(cfg)
    f = cfg.moe_intermediate_size
    assert decode.streamed_weights(moe) == L * (2 * h * h + 2 * h * kv + 3 * h * f + 4 * h) + v * h  # 1 of 4 experts + router


def test_decode_weights_are_timed_over_the_models_size(tok, tmp_path, monkeypatch):
    """The products are timed over as many weights as the model has (in matrices of its widest
    layer): one hot matrix sits in the cache, where fp32 can win on a CPU that bf16 weights would
    make faster for a model that streams from memory. A model of another size is measured again."""
    monkeypatch.setenv("MINIMIND_CACHE", str(tmp_path))
    monkeypatch.delenv("MINIMIND_DECODE_WEIGHTS", raising=False)
    calls = []
    monkeypatch.setattr(decode, "gemv_seconds", lambda dtype, rows, cols, count: calls.append((rows, cols, count))
                        or (1.0 if dtype == torch.float32 else 0.5))
    small, large = tiny(tok, layers=2), tiny(tok, layers=8)
    for model in (small, large):
        assert decode.choose_decode_weights(model, "auto") == "bf16"
    shape = (small.config.intermediate_size, 64)
    want = [round(decode.streamed_weights(m) / (shape[0] * shape[1])) for m in (small, large)]
    assert want[1] > want[0] >= 1
    assert calls == [(*shape, want[0])] * 2 + [(*shape, want[1])] * 2
    assert len(json.loads((tmp_path / "decode_weights.json").read_text())) == 2


@pytest.mark.parametrize("bf16_matmul,want", [("slow", torch.float32), ("fast", torch.bfloat16)])
def test_machine_class_can_be_forced(monkeypatch, bf16_matmul, want):
    monkeypatch.setenv("MINIMIND_BF16_MATMUL", bf16_matmul)
    assert decode.inference_dtype("cpu") == want


def test_fp32_prefill_with_bf16_decode_weights(tok, tokenizer_dir, tmp_path, monkeypatch):
    """The class without fast bf16 matmuls: prefill in fp32, decode with a bf16 copy of the weights
    and a bf16 KV cache; the sampled tokens' log-probs stay within bf16 rounding of the fp32 model."""
    monkeypatch.setenv("MINIMIND_BF16_MATMUL", "slow")
    monkeypatch.setenv("MINIMIND_DECODE_WEIGHTS", "bf16")
    model = tiny(tok)
    ckpt = save_checkpoint(tmp_path / "ckpt", model, tok)
    engine = load_engine(ckpt, "cpu", compile="off", kv_memory_mb=8)
    assert next(engine.model.parameters()).dtype == torch.float32  # prefill
    assert next(engine.decode_model.parameters()).dtype == torch.bfloat16 and engine.kv_dtype == torch.bfloat16
    assert engine.stats()["decode_weights"] == "bf16"
    ps = prompts(tok)
    results = engine.generate(ps, SamplingParams(temperature=1.0, seed=0, max_new_tokens=70))
    for p, r in zip(ps, results):
        assert len(r.tokens) == 70
        with torch.no_grad():
            logits = model(torch.tensor([p + r.tokens])).logits[0, len(p) - 1:-1].log_softmax(-1)
        exact = logits.gather(-1, torch.tensor(r.tokens)[:, None])[:, 0]
        assert (torch.tensor(r.logprobs) - exact).abs().max().item() < 0.05
        assert r.logprobs[0] == pytest.approx(exact[0].item(), abs=1e-4)  # the first token: fp32 prefill


def test_int8_decodes_from_a_copy_and_prefill_keeps_the_weights(tok, tmp_path):
    model = tiny(tok)
    ckpt = save_checkpoint(tmp_path / "ckpt", model, tok)
    engine = load_engine(ckpt, "cpu", dtype="fp32", quantize="int8", compile="off", kv_memory_mb=8)
    assert isinstance(engine.model.lm_head, torch.nn.Linear)
    assert type(engine.decode_model.lm_head).__name__ == "Int8Linear"
    ref = Engine(model, tok, kv_memory_mb=8)
    params = SamplingParams(temperature=0, max_new_tokens=30)
    for p in prompts(tok):
        r = engine.generate([p], params)[0]
        assert r.tokens[0] == ref.generate([p], params)[0].tokens[0]  # from the unquantized prefill
        with torch.no_grad():
            logits = model(torch.tensor([p + r.tokens])).logits[0, len(p) - 1:-1].log_softmax(-1)
        exact = logits.gather(-1, torch.tensor(r.tokens)[:, None])[:, 0]
        assert (torch.tensor(r.logprobs) - exact).abs().max().item() < 0.1  # int8 rounding, not garbage


@pytest.mark.slow
def test_compiled_step_equals_the_eager_step(tok):
    """torch.compile of the decode step (one layer: compiling costs ~15 s on 2 cores): same greedy
    tokens as eager, batched and alone, across a KV block boundary."""
    model = tiny(tok, layers=1, seed=2)
    eager = Engine(model, tok, kv_memory_mb=8)
    fast = Engine(model, tok, kv_memory_mb=8, compile="on")
    assert fast.step_fn.name == "compiled"
    fast.warmup()
    ps = prompts(tok)
    params = SamplingParams(temperature=0, max_new_tokens=70)
    want = [r.tokens for r in eager.generate(ps, params)]
    assert [r.tokens for r in fast.generate(ps, params)] == want
    assert [fast.generate([p], params)[0].tokens for p in ps] == want
    assert fast.stats()["decode"] == "compiled"  # no fallback happened


@pytest.mark.slow
def test_a_lone_row_takes_its_own_graph_only_where_it_is_exact(tok):
    """int8 decode weights, compiled: the first lone row checks whether the batch-1 graph computes
    bitwise what the batched graph does (decode.py); either way a request's greedy tokens are the
    same alone as in a batch, and equal the eager int8 step's."""
    model = tiny(tok, layers=1, seed=3)
    eager = Engine(model, tok, kv_memory_mb=8, decode_weights="int8")
    fast = Engine(model, tok, kv_memory_mb=8, decode_weights="int8", compile="on")
    assert fast.step_fn.lone_exact is None
    ps = prompts(tok)
    params = SamplingParams(temperature=0, max_new_tokens=70)
    alone = [fast.generate([p], params)[0].tokens for p in ps]
    assert fast.step_fn.lone_exact in (True, False)  # checked on the first lone row
    assert [r.tokens for r in fast.generate(ps, params)] == alone
    assert [r.tokens for r in eager.generate(ps, params)] == alone
    assert fast.stats()["decode"] == "compiled"


def test_a_failing_fast_step_falls_back_to_eager(tok, caplog):
    model = tiny(tok)
    eager = Engine(model, tok, kv_memory_mb=8)
    fast = Engine(model, tok, kv_memory_mb=8)

    class Broken(decode.EagerStep):
        name = "compiled"

        def __call__(self, *args):
            raise RuntimeError("no C++ compiler (simulated)")

    fast.step_fn = Broken(model, fast.cache)
    params = SamplingParams(temperature=0, max_new_tokens=20)
    assert fast.generate(prompts(tok), params)[0].tokens == eager.generate(prompts(tok), params)[0].tokens
    assert fast.stats()["decode"] == "eager" and "falling back to eager" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_step_equals_eager(tok):
    model = tiny(tok).cuda()
    eager = Engine(model, tok, kv_memory_mb=8)
    fast = Engine(model, tok, kv_memory_mb=8, compile="on")
    assert fast.step_fn.name == "cuda-graph"
    params = SamplingParams(temperature=0, max_new_tokens=70)
    ps = prompts(tok)
    assert [r.tokens for r in fast.generate(ps, params)] == [r.tokens for r in eager.generate(ps, params)]


@pytest.mark.parametrize("family", ["dense", "moe"])
def test_fused_projections_compute_the_same_function(tok, family):
    from minimind.model import fuse_projections

    torch.manual_seed(4)
    extra = dict(num_experts=4, num_experts_per_tok=2, num_shared_experts=1) if family == "moe" else {}
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, attention_bias=True, **extra)
    model = MiniMindForCausalLM(cfg).eval()
    fused = MiniMindForCausalLM(cfg).eval()
    fused.load_state_dict(model.state_dict())
    fuse_projections(fused)
    assert sum(p.numel() for p in fused.parameters()) == sum(p.numel() for p in model.parameters())
    assert not hasattr(fused.model.layers[0].self_attn, "q_proj")
    ids = torch.randint(0, tok.vocab_size, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
