"""Checkpoint directories: round trip, validation of the parts against each other, CLI errors (exit 2)."""

import json
import shutil

import pytest
import torch

from minimind.checkpoint import load_checkpoint, save_checkpoint
from minimind.cli import main
from minimind.config import ModelConfig
from minimind.errors import UserError
from minimind.model import MiniMindForCausalLM


def tiny(tok, **kw):
    return ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=256, **kw)


@pytest.fixture
def ckpt(tok, tmp_path):
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny(tok))
    return save_checkpoint(tmp_path / "ckpt", model, tok), model


@pytest.mark.parametrize("kw", [{}, dict(tie_word_embeddings=False, qk_norm=True, head_dim=24),
                                dict(num_experts=4, num_experts_per_tok=1)])
def test_round_trip_gives_identical_logits(tok, tmp_path, kw):
    torch.manual_seed(0)
    model = MiniMindForCausalLM(tiny(tok, **kw)).eval()
    save_checkpoint(tmp_path / "c", model, tok)
    loaded, tok2 = load_checkpoint(tmp_path / "c")
    x = torch.randint(0, tok.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(x).logits, loaded(x).logits)
    assert tok2.fingerprint() == tok.fingerprint()
    assert {p.name for p in (tmp_path / "c").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                            "tokenizer_config.json"}


def test_overwrite_is_atomic_and_leaves_no_temp_dirs(ckpt, tok, tmp_path):
    path, model = ckpt
    save_checkpoint(path, model, tok)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_missing_files(ckpt):
    path, _ = ckpt
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        broken = path.parent / f"no-{name}"
        shutil.copytree(path, broken)
        (broken / name).unlink()
        with pytest.raises(UserError, match=f"missing {name}"):
            load_checkpoint(broken)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(path.parent / "nowhere")


def test_corrupt_weights_and_config(ckpt):
    path, _ = ckpt
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_checkpoint(path)
    (path / "config.json").write_text("{ not json")
    with pytest.raises(UserError, match=r"config.json:1: config.json is not valid JSON"):
        load_checkpoint(path)


def test_shape_and_vocab_mismatch(ckpt):
    path, _ = ckpt
    cfg = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**cfg, "hidden_size": 128, "head_dim": 32}))
    with pytest.raises(UserError, match="does not match|has shape"):
        load_checkpoint(path)
    (path / "config.json").write_text(json.dumps({**cfg, "vocab_size": cfg["vocab_size"] + 10}))
    with pytest.raises(UserError, match="tokenizer has .* tokens but config.json says vocab_size"):
        load_checkpoint(path)


def test_cli_errors_are_one_line_exit_2(ckpt, tmp_path, capsys):
    path, _ = ckpt
    cases = [
        (["info", "--preset", "huge"], "unknown preset 'huge'"),
        (["generate", str(tmp_path / "nope"), "hi"], "checkpoint directory not found"),
        (["generate", str(path), "hi", "--temperature", "-1"], "temperature: must be >= 0"),
        (["generate", str(path), "hi", "--top-p", "2"], "top_p: must be in (0, 1]"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1 and "Traceback" not in err


def test_info_prints_counts(capsys):
    assert main(["info", "--preset", "minimind3-moe", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert abs(d["total"] / 1e6 - 198) < 4 and abs(d["active"] / 1e6 - 64) < 1.3
    assert d["flops_per_token"] > 6 * d["active"] * 0.9
