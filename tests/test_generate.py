"""Generation: batching equals one-by-one, sampling controls, stop conditions, streaming, errors."""

import pytest
import torch

from minimind.config import ModelConfig
from minimind.errors import UserError
from minimind.infer.generate import Generator, SamplingParams, sample_next
from minimind.model import MiniMindForCausalLM


@pytest.fixture(scope="module")
def gen(tok):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512)
    return Generator(MiniMindForCausalLM(cfg).eval(), tok)


def prompts(tok):
    texts = ["The capital of France", "1 + 2 =", "法国的首都是", "Once upon a time, a small robot lived by the sea and"]
    return [tok.encode(t) for t in texts]


@pytest.mark.parametrize("family", ["dense", "moe"])
def test_batched_generation_equals_one_by_one(tok, family):
    torch.manual_seed(1)
    extra = dict(num_experts=4, num_experts_per_tok=2, num_shared_experts=1) if family == "moe" else {}
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, **extra)
    g = Generator(MiniMindForCausalLM(cfg).eval(), tok)
    ps = prompts(tok)
    assert len({len(p) for p in ps}) > 1  # really different lengths
    params = SamplingParams(temperature=0, max_new_tokens=24)
    batched = g.generate(ps, params)
    for p, b in zip(ps, batched):
        alone = g.generate([p], params)[0]
        assert b["ids"] == alone["ids"]
        assert len(b["ids"]) > 0


def test_seeded_sampling_is_deterministic(gen, tok):
    p = [tok.encode("Once upon a time")]
    s = lambda seed: gen.generate(p, SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=30, seed=seed))[0]["ids"]
    assert s(7) == s(7)
    assert s(7) != s(8)


def test_max_new_tokens_is_exact_and_stop_string_cuts(gen, tok):
    p = [tok.encode("hello")]
    out = gen.generate(p, SamplingParams(temperature=0, max_new_tokens=13))[0]
    assert out["finish_reason"] in ("length", "stop")
    if out["finish_reason"] == "length":
        assert len(out["ids"]) == 13
    full = gen.generate(p, SamplingParams(temperature=0, max_new_tokens=40))[0]["text"]
    stop = full[5:8]
    cut = gen.generate(p, SamplingParams(temperature=0, max_new_tokens=40, stop=[stop]))[0]
    assert cut["text"] == full[:full.find(stop)] and cut["finish_reason"] == "stop"


def test_stream_joins_to_generate(gen, tok):
    p = tok.encode("The planet")
    params = SamplingParams(temperature=0, max_new_tokens=30)
    assert "".join(gen.stream(p, params)) == gen.generate([p], params)[0]["text"]
    params = SamplingParams(temperature=0, max_new_tokens=30, stop=["a"])
    assert "".join(gen.stream(p, params)) == gen.generate([p], params)[0]["text"]


def test_top_k_top_p_and_repetition_penalty_math():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, SamplingParams(temperature=1.0, top_k=2), generator=g).item() for _ in range(200)}
    assert draws == {0, 1}
    p = torch.softmax(logits, -1)[0]  # 0.61, 0.22, 0.14, ...
    draws = {sample_next(logits, SamplingParams(temperature=1.0, top_p=float(p[0] + 0.01)), generator=g).item()
             for _ in range(200)}
    assert draws == {0, 1}  # the smallest set reaching the mass: two tokens
    assert sample_next(logits, SamplingParams(temperature=0)).item() == 0
    seen = torch.tensor([[True, False, False, False, False]])
    # penalty 3: 2.0 -> 0.67 < 1.0, so greedy moves to token 1
    assert sample_next(logits, SamplingParams(temperature=0, repetition_penalty=3.0), seen).item() == 1
    seen_neg = torch.tensor([[False, False, False, True, False]])
    z = torch.tensor([[-1.0, -1.5, -5, -1.2, -9]])
    # a negative logit is multiplied: -1.2 * 3 = -3.6 stays below the others
    assert sample_next(z, SamplingParams(temperature=0, repetition_penalty=3.0), seen_neg).item() == 0


@pytest.mark.parametrize("bad,param", [
    (dict(temperature=-1), "temperature"), (dict(top_p=0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(top_k=-2), "top_k"), (dict(max_new_tokens=-1), "max_new_tokens"), (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(repetition_penalty=0), "repetition_penalty"), (dict(temperature="hot"), "temperature"),
    (dict(stop=[""]), "stop"), (dict(seed="x"), "seed"),
])
def test_invalid_sampling_params(bad, param):
    with pytest.raises(UserError) as e:
        SamplingParams(**bad).validate()
    assert e.value.param == param


def test_prompt_longer_than_context_is_user_error(gen):
    with pytest.raises(UserError, match="exceeds the model's context"):
        gen.generate([[5] * 500], SamplingParams(max_new_tokens=100))
