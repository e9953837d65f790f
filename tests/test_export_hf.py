"""Hugging Face export/import: stock transformers classes compute our logits; round trips are exact."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from minimind.checkpoint import load_checkpoint, save_checkpoint
from minimind.cli import main
from minimind.config import ModelConfig
from minimind.errors import UserError
from minimind.export.hf import export_hf, import_hf
from minimind.model import MiniMindForCausalLM
from minimind.tokenizer import render_chat

transformers = pytest.importorskip("transformers")

FAMILIES = {  # name: (config overrides, transformers class)
    "llama": (dict(), "LlamaForCausalLM"),
    "qwen3": (dict(head_dim=24, qk_norm=True, tie_word_embeddings=False), "Qwen3ForCausalLM"),
    "qwen2_moe": (dict(num_experts=4, num_experts_per_tok=2, num_shared_experts=1,
                       moe_intermediate_size=32), "Qwen2MoeForCausalLM"),
    "qwen3_moe": (dict(num_experts=4, num_experts_per_tok=1, qk_norm=True, head_dim=24,
                       moe_intermediate_size=32), "Qwen3MoeForCausalLM"),
    "mixtral": (dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32), "MixtralForCausalLM"),
}


def tiny_model(tok, seed=0, **overrides):
    """A random model whose norm weights are not all ones (so a misplaced norm would show)."""
    kw = dict(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256)
    kw.update(overrides)
    torch.manual_seed(seed)
    model = MiniMindForCausalLM(ModelConfig(**kw)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def load_hf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_export_matches_transformers_and_imports_back(family, tok, tmp_path):
    overrides, cls = FAMILIES[family]
    model = tiny_model(tok, **overrides)
    save_checkpoint(tmp_path / "ckpt", model, tok)
    export_hf(tmp_path / "ckpt", tmp_path / "hf")

    hf = load_hf(tmp_path / "hf")
    assert type(hf).__name__ == cls and hf.config.model_type == family
    ids = torch.randint(0, tok.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    ours = logits(model, ids)
    assert ours.std() > 0.1  # not a degenerate model: the comparison means something
    assert (ours - logits(hf, ids)).abs().max().item() <= 1e-4

    back, notes = import_hf(tmp_path / "hf", tmp_path / "back")
    assert notes == []
    model2, _ = load_checkpoint(back)
    sd, sd2 = model.state_dict(), model2.state_dict()
    assert sd.keys() == sd2.keys()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    expected = model.config
    if family == "mixtral":  # Mixtral has one FFN width (the experts'); the unused dense width is lost
        expected = dataclasses.replace(expected, intermediate_size=expected.moe_intermediate_size)
    assert model2.config == expected


def test_yarn_rope_scaling_matches_transformers(tok, tmp_path):
    yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
            "beta_fast": 32.0, "beta_slow": 1.0}
    model = tiny_model(tok, rope_scaling=yarn)
    save_checkpoint(tmp_path / "ckpt", model, tok)
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["rope_parameters"]["rope_type"] == "yarn"
    assert config["rope_scaling"]["factor"] == 4.0  # for transformers < 5, vLLM, llama.cpp's converter
    hf = load_hf(tmp_path / "hf")
    ids = torch.randint(0, tok.vocab_size, (1, 200), generator=torch.Generator().manual_seed(2))
    ours = logits(model, ids)
    without_yarn = MiniMindForCausalLM(dataclasses.replace(model.config, rope_scaling=None)).eval()
    without_yarn.load_state_dict(model.state_dict())
    assert (ours - logits(without_yarn, ids)).abs().max() > 1e-2  # YaRN really changes the function
    assert (ours - logits(hf, ids)).abs().max().item() <= 1e-4
    back, _ = import_hf(tmp_path / "hf", tmp_path / "back")
    assert load_checkpoint(back)[0].config.rope_scaling == yarn


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are minimind."}, {"role": "user", "content": "hi"},
     {"role": "assistant", "content": "Hello!", "reasoning_content": "greet back"},
     {"role": "user", "content": "12*7?"}],
    [{"role": "system", "content": "Use tools.",
      "tools": [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}]},
     {"role": "user", "content": "3+4"},
     {"role": "assistant", "content": "", "tool_calls": [{"name": "calc", "arguments": {"x": "3+4"}}]},
     {"role": "tool", "content": "7"}],
]


@pytest.fixture(scope="module")
def exported_llama(tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("llama")
    save_checkpoint(out / "ckpt", tiny_model(tok), tok)
    return export_hf(out / "ckpt", out / "hf")


@pytest.mark.parametrize("i", range(len(CONVERSATIONS)))
def test_exported_tokenizer_renders_our_chat_ids(i, tok, exported_llama):
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(exported_llama))
    for gen in (False, True):
        got = hf_tok.apply_chat_template(CONVERSATIONS[i], tokenize=True, add_generation_prompt=gen)
        got = got["input_ids"] if hasattr(got, "keys") else got  # transformers 5: a BatchEncoding
        assert list(got) == render_chat(tok, CONVERSATIONS[i], add_generation_prompt=gen)[0]


def test_generation_config_and_special_ids(tok, exported_llama):
    gen = transformers.GenerationConfig.from_pretrained(str(exported_llama))
    assert gen.eos_token_id == [tok.eos_id, tok.eot_id]  # <|im_end|> first, then <|endoftext|>
    assert (gen.pad_token_id, gen.bos_token_id) == (tok.pad_id, tok.im_start_id)
    config = json.loads((exported_llama / "config.json").read_text())
    assert config["eos_token_id"] == tok.eos_id == tok.token_to_id("<|im_end|>")
    assert config["tie_word_embeddings"] is True and config["attention_bias"] is False
    assert config["head_dim"] == 16


# ---------------------------------------------------------------------- original MiniMind format

def write_minimind_folder(path, model, tok, config: dict, tied_as="embed"):
    """A folder as the MiniMind project saves it: its own config keys, Llama-style tensor names."""
    path.mkdir(parents=True)
    sd = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:  # MiniMind ties embed_tokens to lm_head: one tensor stored
        sd.pop("model.embed_tokens.weight" if tied_as == "lm_head" else "lm_head.weight")
    save_file(sd, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "minimind",
                                                   "architectures": ["MiniMindForCausalLM"], **config}))
    tok.save(path)


def test_import_minimind2_dense_is_exact(tok, tmp_path):
    model = tiny_model(tok, rms_norm_eps=1e-5, rope_theta=1e4, intermediate_size=128)
    write_minimind_folder(tmp_path / "src", model, tok, {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": tok.vocab_size, "rope_theta": 1e4, "rms_norm_eps": 1e-5, "intermediate_size": None,
        "max_position_embeddings": 256, "use_moe": False, "n_routed_experts": 4, "n_shared_experts": 1,
        "num_experts_per_tok": 2, "flash_attn": True, "dropout": 0.0})
    back, notes = import_hf(tmp_path / "src", tmp_path / "ckpt")
    imported, _ = load_checkpoint(back)
    assert notes == [] and imported.config.intermediate_size == 128 and not imported.config.qk_norm
    ids = torch.randint(0, tok.vocab_size, (2, 32), generator=torch.Generator().manual_seed(3))
    assert torch.equal(logits(imported, ids), logits(model, ids))


def test_import_accepts_a_tokenizer_without_our_tags(tmp_path):
    """MiniMind2's tokenizer has only <|endoftext|>, <|im_start|>, <|im_end|>: no <think> & co."""
    from tokenizers import Tokenizer as RustTokenizer, decoders, models, pre_tokenizers, trainers

    from minimind.tokenizer import Tokenizer

    backend = RustTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(["Once upon a time, Nora lived in a small village."] * 20, trainer)
    old_tok = Tokenizer(backend)
    model = tiny_model(old_tok, rms_norm_eps=1e-5)  # MiniMind2's default eps: the key is left out below
    write_minimind_folder(tmp_path / "src", model, old_tok, {
        "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": old_tok.vocab_size, "max_position_embeddings": 256, "use_moe": False})
    imported, tok2 = load_checkpoint(import_hf(tmp_path / "src", tmp_path / "ckpt")[0])
    assert tok2.think_id is None and tok2.eos_id == 2 and tok2.vocab_size == old_tok.vocab_size
    ids = torch.tensor([tok2.encode("Once upon a time")])
    assert torch.equal(logits(imported, ids), logits(model, ids))


def test_import_minimind3_qk_norm_and_moe_are_exact(tok, tmp_path):
    ids = torch.randint(0, tok.vocab_size, (2, 32), generator=torch.Generator().manual_seed(4))
    common = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "head_dim": 24, "vocab_size": tok.vocab_size, "rope_theta": 1e6, "rms_norm_eps": 1e-6,
              "max_position_embeddings": 256, "tie_word_embeddings": True, "inference_rope_scaling": True}
    dense = tiny_model(tok, head_dim=24, qk_norm=True, intermediate_size=224)
    write_minimind_folder(tmp_path / "dense", dense, tok, {**common, "intermediate_size": 224}, tied_as="lm_head")
    back, notes = import_hf(tmp_path / "dense", tmp_path / "dense-ckpt")
    assert torch.equal(logits(load_checkpoint(back)[0], ids), logits(dense, ids))
    assert len(notes) == 1 and "YaRN" in notes[0]  # told, not silently changed

    moe = tiny_model(tok, head_dim=24, qk_norm=True, num_experts=4, num_experts_per_tok=1,
                     moe_intermediate_size=32)
    write_minimind_folder(tmp_path / "moe", moe, tok, {
        **common, "use_moe": True, "num_experts": 4, "num_experts_per_tok": 1, "norm_topk_prob": True,
        "moe_intermediate_size": 32})
    back, _ = import_hf(tmp_path / "moe", tmp_path / "moe-ckpt")
    imported = load_checkpoint(back)[0]
    assert imported.config.num_experts == 4 and imported.config.norm_topk_prob
    assert torch.equal(logits(imported, ids), logits(moe, ids))


def test_import_minimind2_moe_semantics(tok, tmp_path):
    """MiniMind2 renormalises top-k weights only for k > 1; shared experts are refused (no gate)."""
    moe = tiny_model(tok, num_experts=4, num_experts_per_tok=1, norm_topk_prob=False, moe_intermediate_size=32)
    config = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "vocab_size": tok.vocab_size, "rms_norm_eps": 1e-6, "max_position_embeddings": 256,
              "use_moe": True, "n_routed_experts": 4, "n_shared_experts": 0, "num_experts_per_tok": 1,
              "norm_topk_prob": True, "scoring_func": "softmax", "aux_loss_alpha": 0.1}
    write_minimind_folder(tmp_path / "top1", moe, tok, config)
    imported = load_checkpoint(import_hf(tmp_path / "top1", tmp_path / "top1-ckpt")[0])[0]
    assert imported.config.norm_topk_prob is False
    ids = torch.randint(0, tok.vocab_size, (1, 24), generator=torch.Generator().manual_seed(5))
    assert torch.equal(logits(imported, ids), logits(moe, ids))

    write_minimind_folder(tmp_path / "shared", moe, tok, {**config, "n_shared_experts": 1})
    with pytest.raises(UserError, match="sigmoid"):
        import_hf(tmp_path / "shared", tmp_path / "shared-ckpt")
    assert not (tmp_path / "shared-ckpt").exists()


# ---------------------------------------------------------------------- bad input

def run_cli(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_bad_inputs_exit_2_with_one_line(tok, tmp_path, capsys, exported_llama):
    bad = tmp_path / "bad"
    bad.mkdir()
    cases = {"directory not found": ["import", "hf", str(tmp_path / "nope"), str(tmp_path / "o1")],
             "missing config.json": ["import", "hf", str(bad), str(tmp_path / "o2")]}
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text('{"model_type": "gpt2"}')
    save_file({"x": torch.zeros(1)}, str(tmp_path / "gpt2" / "model.safetensors"))
    cases["model_type 'gpt2' is not supported"] = ["import", "hf", str(tmp_path / "gpt2"), str(tmp_path / "o3")]

    wrong = tmp_path / "wrong-shape"  # config says 4 KV heads, tensors hold 2
    wrong.mkdir()
    for f in exported_llama.iterdir():
        (wrong / f.name).write_bytes(f.read_bytes())
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "num_key_value_heads": 4}))
    cases["k_proj.weight has shape"] = ["import", "hf", str(wrong), str(tmp_path / "o4")]

    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tok / name).write_bytes((exported_llama / name).read_bytes())
    cases["missing tokenizer.json"] = ["import", "hf", str(no_tok), str(tmp_path / "o5")]
    cases["missing config.json; is this a minimind checkpoint"] = ["export", "hf", str(bad), str(tmp_path / "o6")]

    for expected, argv in cases.items():
        code, err = run_cli(argv, capsys)
        assert code == 2, (expected, err)
        assert err.startswith("minimind: error:") and "\n" not in err and expected in err, (expected, err)


def test_export_refuses_to_overwrite_its_checkpoint(tok, tmp_path, capsys):
    save_checkpoint(tmp_path / "ckpt", tiny_model(tok), tok)
    code, err = run_cli(["export", "hf", str(tmp_path / "ckpt"), str(tmp_path / "ckpt")], capsys)
    assert code == 2 and "is the checkpoint itself" in err
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["model_type"] == "minimind"


@pytest.mark.parametrize("escape", ["../outside.safetensors", "/ABS/outside.safetensors", "sub/../../outside.safetensors"])
def test_import_refuses_shards_outside_the_folder(tmp_path, capsys, exported_llama, escape):
    """An index.json from the internet must not make the import read files elsewhere."""
    src = tmp_path / "model"
    src.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (src / name).write_bytes((exported_llama / name).read_bytes())
    (tmp_path / "outside.safetensors").write_bytes((exported_llama / "model.safetensors").read_bytes())
    name = escape.replace("/ABS", str(tmp_path))
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"model.norm.weight": name}}))
    code, err = run_cli(["import", "hf", str(src), str(tmp_path / "out")], capsys)
    assert code == 2 and "points outside" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
    # the same weights as an in-folder shard import fine
    (src / "outside.safetensors").write_bytes((exported_llama / "model.safetensors").read_bytes())
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"model.norm.weight":
                                                                               "outside.safetensors"}}))
    code, err = run_cli(["import", "hf", str(src), str(tmp_path / "out")], capsys)
    assert code == 0, err
