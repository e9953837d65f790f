"""Checkpoints are directories.

    CKPT/config.json          ModelConfig (HF-style keys)
    CKPT/model.safetensors    weights (tied lm_head stored once, as embed_tokens)
    CKPT/tokenizer.json, tokenizer_config.json
    CKPT/train_state.pt       optional: optimizer, scheduler, RNG, data position (for --resume)
    CKPT/run.json             optional: the full run configuration

A checkpoint is written into a temporary sibling directory and renamed into place, so a crash
never leaves a half-written checkpoint under the final name. Loading checks the three parts
against each other (tensor names and shapes vs. config, tokenizer vocabulary vs. config).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .errors import UserError
from .model import MiniMindForCausalLM


def state_dict_for_save(model) -> dict:
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)  # same storage as model.embed_tokens.weight
    return sd


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary sibling directory to fill; on success it replaces `path` in one rename
    (an old `path` is moved aside first, then deleted), on any error it is removed and `path`
    is left as it was. Used for checkpoints and LoRA adapters."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        if path.exists():  # replace: move the old one aside first, then swap in the new one
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_checkpoint(path, model, tokenizer, train_state: dict | None = None,
                    run_config: dict | None = None) -> Path:
    """Write a checkpoint directory atomically (temp dir + rename)."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        model = getattr(model, "module", model)  # unwrap DDP
        model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
        model.config.save(tmp / "config.json")
        save_file(state_dict_for_save(model), tmp / "model.safetensors", metadata={"format": "pt"})
        tokenizer.save(tmp)
        if train_state is not None:
            torch.save(train_state, tmp / "train_state.pt")
        if run_config is not None:
            (tmp / "run.json").write_text(json.dumps(run_config, indent=2, default=str))
    return path


def resolve_checkpoint(path) -> Path:
    """A checkpoint directory, or a run directory holding one in `checkpoint/`."""
    path = Path(path)
    if not (path / "config.json").is_file() and (path / "checkpoint" / "config.json").is_file():
        return path / "checkpoint"
    return path


def check_checkpoint_dir(path) -> Path:
    path = resolve_checkpoint(path)
    if not path.is_dir():
        raise UserError(f"{path}: checkpoint directory not found")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (path / name).is_file():
            raise UserError(f"{path}: missing {name}; is this a minimind checkpoint directory?")
    return path


def load_weights(model, file) -> None:
    try:
        sd = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{file}: cannot read weights ({e}); the file is corrupt or truncated") from None
    expected = model.state_dict()
    if model.config.tie_word_embeddings:
        expected = {k: v for k, v in expected.items() if k != "lm_head.weight"}
        sd.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise UserError(f"{file}: weights do not match config.json "
                        f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                        f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})")
    for k, v in sd.items():
        if v.shape != expected[k].shape:
            raise UserError(f"{file}: tensor {k} has shape {tuple(v.shape)} but config.json implies "
                            f"{tuple(expected[k].shape)}")
    model.load_state_dict(sd, strict=False)


def load_checkpoint(path, device="cpu", dtype=None):
    """Load (model, tokenizer) from a checkpoint directory, validating the parts against each other."""
    from .tokenizer import Tokenizer

    path = check_checkpoint_dir(path)
    cfg = ModelConfig.load(path / "config.json")
    tok = Tokenizer.load(path)
    check_tokenizer_matches(cfg, tok, where=str(path))
    model = MiniMindForCausalLM(cfg)
    load_weights(model, path / "model.safetensors")
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    return model, tok


def check_tokenizer_matches(cfg: ModelConfig, tok, where: str) -> None:
    if tok.vocab_size != cfg.vocab_size:
        raise UserError(f"{where}: tokenizer has {tok.vocab_size} tokens but config.json says "
                        f"vocab_size={cfg.vocab_size}; the tokenizer files belong to another model")
    if tok.eos_id != cfg.eos_token_id or tok.pad_id != cfg.pad_token_id:
        raise UserError(f"{where}: tokenizer special ids (eos {tok.eos_id}, pad {tok.pad_id}) differ from "
                        f"config.json (eos {cfg.eos_token_id}, pad {cfg.pad_token_id})")
