"""Int8 weight-only inference: close logits, same greedy text, MoE and tied heads, CLI flag."""

import pytest
import torch

from minimind.config import ModelConfig
from minimind.errors import UserError
from minimind.infer.engine import Engine, SamplingParams
from minimind.infer.quant import Int8Linear, apply_quantization, quantize_int8
from minimind.model import MiniMindForCausalLM


def model(family: str, vocab: int, dtype=torch.float32):
    torch.manual_seed(3)
    extra = dict(num_experts=4, num_experts_per_tok=2, num_shared_experts=1) if family == "moe" else {}
    cfg = ModelConfig(vocab_size=vocab, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, **extra)
    return MiniMindForCausalLM(cfg).eval().to(dtype)


def copy_of(m):
    c = MiniMindForCausalLM(m.config).eval().to(next(m.parameters()).dtype)
    c.load_state_dict(m.state_dict())
    return c


def test_int8_linear_matches_the_formula():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=True)
    q = Int8Linear(lin, torch.float32)
    s = lin.weight.abs().amax(1) / 127
    assert q.qweight.dtype == torch.int8 and int(q.qweight.abs().max()) == 127
    w_hat = q.qweight.float() * s[:, None]  # dequantized weights
    assert (w_hat - lin.weight).abs().max() <= s.max() / 2 + 1e-7  # rounding error at most half a step
    x = torch.randn(5, 3, 64)
    torch.testing.assert_close(q(x), x @ w_hat.T + lin.bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["dense", "moe"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantized_model_logits_close_and_greedy_text_equal(tok, family, dtype):
    ref = model(family, tok.vocab_size, dtype)
    q = copy_of(ref)
    n = quantize_int8(q)
    # per layer q,k,v,o + gate/up/down (MoE: of 4 experts and the shared expert; router kept), + head
    assert n == 2 * (4 + 3 * (5 if family == "moe" else 1)) + 1
    assert not any(isinstance(m, torch.nn.Linear) and not name.endswith("gate")
                   for name, m in q.named_modules())
    ids = torch.tensor([tok.encode("The capital of France is Paris. 法国的首都是巴黎。")])
    a, b = ref(ids).logits.float(), q(ids).logits.float()
    rel = ((a - b).norm() / a.norm()).item()
    # the products run on bf16 activations (fp32 models too); MoE: a random router's
    # probabilities are nearly tied, so rounding flips a few top-k choices
    bound = 0.03 * (5 if family == "moe" else 1)
    assert rel < bound, rel
    # greedy continuation of a real prompt: identical for a good stretch
    p = SamplingParams(temperature=0, max_new_tokens=16)
    prompt = [tok.encode("Once upon a time")]
    assert Engine(q, tok).generate(prompt, p)[0].tokens[:8] == Engine(ref, tok).generate(prompt, p)[0].tokens[:8]


def test_fp32_model_keeps_fp32_activations(tok):
    m = model("dense", tok.vocab_size)
    quantize_int8(m)
    out = m(torch.tensor([tok.encode("hello")]))
    assert out.logits.dtype == torch.float32 and next(m.parameters()).dtype == torch.float32
    # inside, the int8 products run on bf16 activations: the kernel's fp32 path is 3-8.5x slower
    assert {q.scale.dtype for q in m.modules() if isinstance(q, Int8Linear)} == {torch.bfloat16}


def test_tied_embeddings_stay_exact(tok):
    m = model("dense", tok.vocab_size)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    before = m.model.embed_tokens.weight.detach().clone()
    quantize_int8(m)
    assert isinstance(m.lm_head, Int8Linear)
    assert torch.equal(m.model.embed_tokens.weight, before)  # the input table is not rounded


def test_unknown_mode_is_a_user_error(tok):
    with pytest.raises(UserError, match="--quantize 'int4'"):
        apply_quantization(model("dense", tok.vocab_size), "int4")


def test_cli_generate_with_int8(tok, tokenizer_dir, tmp_path, capsys):
    from minimind.checkpoint import save_checkpoint
    from minimind.cli import main
    from minimind.tokenizer import Tokenizer

    save_checkpoint(tmp_path / "ckpt", model("dense", tok.vocab_size), Tokenizer.load(tokenizer_dir))
    out = {}
    for mode in ("none", "int8"):
        assert main(["generate", str(tmp_path / "ckpt"), "Once upon a time", "--raw", "--temperature", "0",
              "--max-new-tokens", "8", "--dtype", "fp32", "--quantize", mode]) == 0
        out[mode] = capsys.readouterr().out
    assert out["int8"].strip() and out["int8"] == out["none"]
