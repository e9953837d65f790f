"""LoRA: exact start and merge, frozen base, adapter size and files, dense and MoE, the CLI."""

import json

import pytest
from safetensors.torch import load_file
import torch

from minimind.checkpoint import load_checkpoint, save_checkpoint
from minimind.cli import main
from minimind.config import ModelConfig, get_preset
from minimind.errors import UserError
from minimind.lora import (LoRALinear, inject_lora, load_adapter, lora_modules, lora_state_dict, merge_lora,
                           save_adapter)
from minimind.model import MiniMindForCausalLM
from minimind.train.engine import TrainConfig, build_optimizer

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny(vocab=97, hidden=64, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, **kw)
    return MiniMindForCausalLM(cfg).eval()


def randomize_b(model, seed=1):
    """B starts at zero; give it values so that the adapter changes the model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_modules(model).values():
            m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.05)


def ids(vocab=97, B=2, T=12):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("moe", [False, True])
def test_adapter_starts_at_base_and_merge_is_exact(moe):
    kw = dict(num_experts=4, num_experts_per_tok=2, num_shared_experts=1) if moe else {}
    model = tiny(**kw)
    x = ids()
    with torch.no_grad():
        base = model(x).logits
        inject_lora(model, rank=4, alpha=8)
        assert torch.equal(model(x).logits, base)  # B = 0: exactly the base model
        randomize_b(model)
        adapted = model(x).logits
        assert (adapted - base).abs().max() > 1e-3  # the adapter does change the output
        merge_lora(model)
        merged = model(x).logits
    assert not lora_modules(model)
    assert all(type(m) is not LoRALinear for m in model.modules())
    assert (merged - adapted).abs().max().item() <= 1e-5
    assert all(p.requires_grad for p in model.parameters())


def test_targets_dense_and_moe():
    dense = inject_lora(tiny(), rank=2)
    names = sorted(lora_modules(dense))
    assert len(names) == 2 * 7
    assert {n.rsplit(".", 1)[1] for n in names} == set(PROJ)
    moe = inject_lora(tiny(num_experts=4, num_experts_per_tok=2, num_shared_experts=1), rank=2)
    names = set(lora_modules(moe))
    # per layer: q, k, v, o + 3 projections in each of 4 routed experts and the shared expert
    assert len(names) == 2 * (4 + 3 * 5)
    assert "model.layers.1.mlp.experts.3.down_proj" in names
    assert "model.layers.0.mlp.shared_expert.gate_proj" in names
    assert not any(n.endswith(("mlp.gate", "shared_expert_gate", "lm_head")) for n in names)  # router, head
    only_attn = inject_lora(tiny(), rank=2, targets=r".*self_attn\.(q|v)_proj")
    assert sorted(lora_modules(only_attn)) == [f"model.layers.{i}.self_attn.{p}" for i in (0, 1)
                                                for p in ("q_proj", "v_proj")]


def test_only_lora_parameters_train():
    model = inject_lora(tiny(), rank=4)
    model.train()
    lora = {id(p) for n, p in model.named_parameters() if ".lora_" in n}
    opt = build_optimizer(model, TrainConfig(), torch.device("cpu"))
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == lora and len(lora) == 2 * 2 * 7  # A and B of 14 layers
    x = ids()
    loss = torch.nn.functional.cross_entropy(model(x).logits.flatten(0, 1), x.roll(-1, 1).flatten())
    loss.backward()
    for n, p in model.named_parameters():
        if ".lora_" in n:
            assert p.grad is not None
        else:
            assert p.grad is None and not p.requires_grad, n
    # with B = 0 only B gets a non-zero gradient (dL/dA = scale * B^T dL/dy = 0)
    assert all(m.lora_B.weight.grad.abs().sum() > 0 for m in lora_modules(model).values())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".lora_" in n for n in changed)  # the base weights never move


def test_adapter_is_small_for_minimind2_small(tmp_path):
    model = MiniMindForCausalLM(get_preset("minimind2-small"))
    inject_lora(model, rank=8, alpha=16)
    out = save_adapter(tmp_path / "adapter", model)
    cfg = model.config
    # r * (in + out) for each adapted projection, from the shapes alone
    d, q, kv, f = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim, \
        cfg.intermediate_size
    per_layer = 8 * ((d + q) + 2 * (d + kv) + (q + d) + 3 * (d + f))
    n_adapter = sum(v.numel() for v in lora_state_dict(model).values())
    assert n_adapter == cfg.num_hidden_layers * per_layer
    base_bytes = cfg.param_counts()["total"] * 4  # fp32 checkpoint, tied head stored once
    file_bytes = (out / "adapter_model.safetensors").stat().st_size
    assert file_bytes == pytest.approx(n_adapter * 4, rel=0.02)
    assert file_bytes < 0.05 * base_bytes
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["rank"], config["alpha"], len(config["modules"])) == (8, 16.0, 8 * 7)
    assert config["base_shapes"]["hidden_size"] == 512


def test_save_load_roundtrip_and_mismatch(tmp_path):
    model = inject_lora(tiny(), rank=4, alpha=8)
    randomize_b(model)
    x = ids()
    with torch.no_grad():
        want = model(x).logits
    save_adapter(tmp_path / "a", model)
    fresh = load_adapter(tiny(), tmp_path / "a")  # same base weights (seeded), adapter injected and loaded
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, want)
    with pytest.raises(UserError, match="hidden_size 64 vs 32"):
        load_adapter(tiny(hidden=32), tmp_path / "a")
    with pytest.raises(UserError, match="missing adapter_config.json"):
        load_adapter(tiny(), tmp_path)
    with pytest.raises(UserError, match="already has LoRA"):
        inject_lora(fresh)
    with pytest.raises(UserError, match="matches no linear layer"):
        inject_lora(tiny(), targets="nothing_here")


def test_cli_train_and_merge(corpus, tok, tmp_path):
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tok.im_start_id,
                      eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "base", MiniMindForCausalLM(cfg), tok)
    argv = ["lora", "--init", str(tmp_path / "base"), "--data", str(corpus / "lora_identity.jsonl"),
            "--out", str(tmp_path / "run"), "--steps", "3", "--batch-size", "4", "--max-seq-len", "64",
            "--dtype", "fp32", "--no-progress", "--rank", "4"]
    assert main(argv) == 0
    adapter = tmp_path / "run" / "adapter"
    assert (adapter / "adapter_model.safetensors").stat().st_size < 0.2 * (
        tmp_path / "base" / "model.safetensors").stat().st_size
    assert main(["lora", "merge", str(tmp_path / "base"), str(tmp_path / "run"), str(tmp_path / "merged")]) == 0
    merged, _ = load_checkpoint(tmp_path / "merged")  # a plain checkpoint: loads with no LoRA code
    base, _ = load_checkpoint(tmp_path / "base")
    adapted = load_adapter(load_checkpoint(tmp_path / "base")[0], adapter)
    x = torch.tensor([tok.encode("What is your name?")])
    with torch.no_grad():
        assert (merged(x).logits - adapted(x).logits).abs().max() <= 1e-5
        assert (merged(x).logits - base(x).logits).abs().max() > 0  # 3 steps moved it off the base
    assert main(["lora", "--init", str(tmp_path / "base")]) == 2  # no --data / --out: one-line error


def lora_base(tok, tmp_path):
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tok.im_start_id,
                      eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "base", MiniMindForCausalLM(cfg), tok)


def lora_argv(corpus, base, out, *extra):
    return ["lora", "--init", str(base), "--data", str(corpus / "lora_identity.jsonl"), "--out", str(out),
            "--batch-size", "4", "--max-seq-len", "64", "--dtype", "fp32", "--no-progress", "--rank", "4",
            "--log-every", "1", *extra]


def test_lora_run_is_a_model_for_chat_eval_and_export(corpus, tok, tmp_path, capsys):
    """Checkpoints of a LoRA run hold the adapter only; every loader merges it onto its base."""
    from minimind.checkpoint import resolve_checkpoint
    from minimind.infer.generate import load_for_inference

    base = lora_base(tok, tmp_path)
    run = tmp_path / "run"
    assert main(lora_argv(corpus, base, run, "--steps", "4", "--save-every", "2")) == 0
    assert "chat, serve, eval and export load the run directly" in capsys.readouterr().out
    ckpt = resolve_checkpoint(run)
    assert ckpt.name == "step-0000004" and not (ckpt / "model.safetensors").exists()
    assert (ckpt / "adapter_model.safetensors").stat().st_size < 0.2 * (base / "model.safetensors").stat().st_size
    merged, _ = load_checkpoint(run)  # what chat, serve, eval and export call
    by_hand = merge_lora(load_adapter(load_checkpoint(base)[0], run / "adapter"))
    x = torch.tensor([tok.encode("What is your name?")])
    with torch.no_grad():
        assert torch.equal(merged(x).logits, by_hand(x).logits)
        assert (merged(x).logits - load_checkpoint(base)[0](x).logits).abs().max() > 0
    served, _ = load_for_inference(run, "cpu", "fp32")  # what chat, generate and serve call
    with torch.no_grad():
        assert torch.equal(served(x).logits, merged(x).logits)
    assert main(["export", "hf", str(run), str(tmp_path / "hf")]) == 0
    assert main(["eval", "tasks", str(run), "--data", str(corpus / "eval" / "heldout.jsonl"), "--limit", "1",
                 "--max-new-tokens", "4"]) == 0
    assert main(["lora", "merge", str(base), str(run), str(tmp_path / "merged")]) == 0
    with torch.no_grad():
        assert torch.equal(load_checkpoint(tmp_path / "merged")[0](x).logits, merged(x).logits)


def test_lora_run_says_what_to_do_when_its_base_is_gone_or_changed(corpus, tok, tmp_path, capsys):
    base = lora_base(tok, tmp_path)
    run = tmp_path / "run"
    assert main(lora_argv(corpus, base, run, "--steps", "2")) == 0
    capsys.readouterr()
    torch.manual_seed(1)
    save_checkpoint(base, MiniMindForCausalLM(load_checkpoint(base)[0].config), tok)  # other weights
    assert main(["info", "--checkpoint", str(run)]) == 2
    err = capsys.readouterr().err
    assert "has changed since the adapter was trained" in err and "minimind lora merge BASE" in err
    base.rename(tmp_path / "moved")
    assert main(["export", "hf", str(run), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "is not there any more" in err and str(base) in err and err.count("\n") == 1


def test_lora_resume_is_exact_and_a_finished_run_resumes(corpus, tok, tmp_path, capsys):
    from tests.test_engine import losses

    base = lora_base(tok, tmp_path)
    assert main(lora_argv(corpus, base, tmp_path / "a", "--steps", "6")) == 0
    assert main(lora_argv(corpus, base, tmp_path / "b", "--steps", "6", "--stop-after", "3")) == 0
    assert main(lora_argv(corpus, base, tmp_path / "b", "--steps", "6", "--resume")) == 0
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    a, b = (load_file(str(tmp_path / r / "adapter" / "adapter_model.safetensors")) for r in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert main(lora_argv(corpus, base, tmp_path / "b", "--steps", "6", "--resume")) == 0  # once more: finished
    assert "done: loss" in capsys.readouterr().out
