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


# ----------------------------------------------------------------------------- a run's checkpoints

def save_steps(root, tok, steps, keep=3, fresh=True):
    from minimind.checkpoint import RunCheckpoints

    runs = RunCheckpoints(root, keep=keep)
    runs.fresh = fresh
    model = MiniMindForCausalLM(tiny(tok))
    for s in steps:
        runs.save(s, model, tok, {"step": s}, {"stage": "test"})
    return runs


def names(root):
    return sorted(p.name for p in root.iterdir())


def test_keeps_the_newest_k_and_points_latest_at_the_newest(tok, tmp_path):
    from minimind.checkpoint import resolve_checkpoint

    root = tmp_path / "run" / "checkpoint"
    save_steps(root, tok, [10, 20, 30, 40, 50], keep=3)
    assert names(root) == ["latest", "step-0000030", "step-0000040", "step-0000050"]
    assert (root / "latest").read_text() == "step-0000050\n"
    for where in (tmp_path / "run", root, root / "step-0000050"):
        assert resolve_checkpoint(where) == root / "step-0000050"
    assert resolve_checkpoint(root / "step-0000030") == root / "step-0000030"
    load_checkpoint(tmp_path / "run")  # a run directory loads as its latest checkpoint
    save_steps(tmp_path / "all", tok, [1, 2, 3, 4], keep=0)
    assert len(names(tmp_path / "all")) == 5  # keep 0: all of them


def test_latest_falls_back_to_the_newest_complete_checkpoint(tok, tmp_path):
    from minimind.checkpoint import latest_checkpoint

    root = tmp_path / "checkpoint"
    save_steps(root, tok, [1, 2])
    (root / "step-0000002" / "model.safetensors").unlink()  # incomplete (never happens by itself)
    assert latest_checkpoint(root) == root / "step-0000001"
    (root / "latest").unlink()
    assert latest_checkpoint(root) == root / "step-0000001"
    (root / "latest").write_text("../../etc\n")  # nonsense in the pointer is ignored
    assert latest_checkpoint(root) == root / "step-0000001"
    assert latest_checkpoint(tmp_path / "nothing") is None


def test_old_single_directory_layout_still_loads(ckpt, tok, tmp_path):
    from minimind.checkpoint import resolve_checkpoint

    path, model = ckpt
    run = tmp_path / "oldrun"
    shutil.copytree(path, run / "checkpoint")
    assert resolve_checkpoint(run) == run / "checkpoint"
    loaded, _ = load_checkpoint(run)
    x = torch.randint(0, tok.vocab_size, (1, 8))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model.eval()(x).logits)
    save_steps(run / "checkpoint", tok, [5], fresh=False)  # continued in the new layout: the new one wins,
    assert resolve_checkpoint(run) == run / "checkpoint" / "step-0000005"
    assert (run / "checkpoint" / "model.safetensors").is_file()  # and the old files are never deleted


def test_a_fresh_run_replaces_a_resumed_run_drops_its_abandoned_future(tok, tmp_path):
    root = tmp_path / "checkpoint"
    save_steps(root, tok, [10, 20, 30])
    save_steps(root, tok, [5])  # a new run in the same directory: the old steps go at its first save
    assert names(root) == ["latest", "step-0000005"]
    save_steps(root, tok, [10, 20, 30])
    save_steps(root, tok, [25], fresh=False)  # resumed from step 20: step 30 was an abandoned future
    assert names(root) == ["latest", "step-0000010", "step-0000020", "step-0000025"]


def test_leftovers_of_a_killed_save_are_cleaned_and_never_read(tok, tmp_path):
    from minimind.checkpoint import latest_checkpoint

    root = tmp_path / "checkpoint"
    save_steps(root, tok, [1])
    (root / ".step-0000002.tmp-abc").mkdir()  # a save killed half-way
    (root / ".step-0000002.tmp-abc" / "config.json").write_text("{}")
    (root / ".latest.tmp-123").write_text("step-0000002\n")
    assert latest_checkpoint(root) == root / "step-0000001"
    save_steps(root, tok, [2], fresh=False)
    assert names(root) == ["latest", "step-0000001", "step-0000002"]


def test_train_state_is_loaded_with_weights_only(tok, tmp_path):
    """RNG states are stored as tensors and plain values: torch.load(weights_only=True) reads them,
    and an object smuggled into train_state.pt is refused with a clear error."""
    import random

    import numpy as np

    from minimind.checkpoint import load_train_state
    from minimind.runtime import rng_state, set_rng_state

    root = tmp_path / "checkpoint"
    runs = save_steps(root, tok, [1])
    path = runs.latest()
    torch.save({"rng": rng_state()}, path / "train_state.pt")
    st = load_train_state(path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(st["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected

    torch.save({"rng": {**rng_state(), "numpy": np.random.get_state()}}, path / "train_state.pt")
    x = np.random.rand()
    set_rng_state(load_train_state(path)["rng"])  # written by an older version (a numpy array): still reads
    assert np.random.rand() == x

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, path / "train_state.pt")
    with pytest.raises(UserError, match="cannot read the resume state"):
        load_train_state(path)
