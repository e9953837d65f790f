"""Checkpoints are directories, and a run keeps several of them.

    CKPT/config.json          ModelConfig (HF-style keys)
    CKPT/model.safetensors    weights (tied lm_head stored once, as embed_tokens)
    CKPT/tokenizer.json, tokenizer_config.json
    CKPT/train_state.pt       optional: optimizer, scheduler, every rank's RNG and data position (resume)
    CKPT/run.json             optional: the full run configuration

A LoRA run saves only its adapter: CKPT/adapter_model.safetensors + adapter_config.json (which
names the base checkpoint and the sha256 of its weights) instead of model.safetensors. Loading
such a checkpoint loads the base and merges the adapter into it (lora.load_lora_checkpoint), so
everything that reads checkpoints (chat, serve, eval, export, --init) accepts a LoRA run too.

A training run writes RUN/checkpoint/step-XXXXXXX/ directories, keeps the newest K, and points
at the newest complete one with RUN/checkpoint/latest (a one-line text file, replaced atomically).
`resolve_checkpoint` turns any of RUN, RUN/checkpoint, a step directory or the old single-directory
layout (RUN/checkpoint/ holding the files itself) into the checkpoint directory to read.

Every write goes to a temporary sibling, is fsync'd and renamed into place, so a crash (even
kill -9 in the middle of a save) never leaves a half-written checkpoint under a final name, and
`latest` always names a complete one. Loading checks the parts against each other (tensor names
and shapes vs. config, tokenizer vocabulary vs. config) and unpickles train state with
weights_only=True (tensors and plain Python values only, never arbitrary objects).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .errors import UserError
from .model import MiniMindForCausalLM

CHECKPOINTS = "checkpoint"  # RUN/checkpoint/
LATEST = "latest"  # RUN/checkpoint/latest: the name of the newest complete step directory
STEP_DIR = re.compile(r"step-(\d+)")
TRAIN_STATE = "train_state.pt"
WEIGHTS = "model.safetensors"
ADAPTER = "adapter_config.json"  # a LoRA checkpoint: adapter only, the base named inside


def state_dict_for_save(model) -> dict:
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)  # same storage as model.embed_tokens.weight
    return sd


# ----------------------------------------------------------------------------- durable writes

def fsync_dir(path) -> None:
    """Make a rename or a new entry in directory `path` durable (where the OS supports it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename is still atomic
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(folder)


def write_text_atomic(path, text: str) -> None:
    """Replace file `path` by `text` in one rename: readers see the old or the new file, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_dir(path):
    """Yield a temporary sibling directory to fill; on success it is fsync'd and replaces `path` in
    one rename (an old `path` is moved aside first, then deleted), on any error it is removed and
    `path` is left as it was. Used for checkpoints, LoRA adapters and prepared datasets."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        if path.exists():  # replace: move the old one aside first, then swap in the new one
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------- one checkpoint

def save_checkpoint(path, model, tokenizer, train_state: dict | None = None,
                    run_config: dict | None = None) -> Path:
    """Write a checkpoint directory atomically (temp dir + fsync + rename).

    A model with LoRA layers is saved as its adapter only (plus config, tokenizer and state):
    the frozen base weights are already on disk, in the checkpoint the adapter names.
    """
    path = Path(path)
    model = getattr(model, "module", model)  # unwrap DDP
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    with atomic_dir(path) as tmp:
        model.config.save(tmp / "config.json")
        if getattr(model, "lora_config", None) is not None:
            from .lora import write_adapter

            write_adapter(tmp, model)
        else:
            save_file(state_dict_for_save(model), tmp / WEIGHTS, metadata={"format": "pt"})
        tokenizer.save(tmp)
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE)
        if run_config is not None:
            (tmp / "run.json").write_text(json.dumps(run_config, indent=2, default=str))
    return path


def is_checkpoint(path) -> bool:
    """Does `path` hold a complete checkpoint (config and full weights or a LoRA adapter)?"""
    path = Path(path)
    return (path / "config.json").is_file() and ((path / WEIGHTS).is_file() or (path / ADAPTER).is_file())


def is_lora_checkpoint(path) -> bool:
    path = Path(path)
    return (path / ADAPTER).is_file() and not (path / WEIGHTS).is_file()


_digests: dict[tuple, str] = {}  # (path, size, mtime) -> sha256: loading a LoRA run checks its base more than once


def weights_digest(ckpt) -> str:
    """sha256 of a checkpoint's weight file (its adapter file for a LoRA checkpoint)."""
    ckpt = Path(ckpt)
    file = ckpt / WEIGHTS if (ckpt / WEIGHTS).is_file() else ckpt / "adapter_model.safetensors"
    st = file.stat()
    key = (str(file.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        h = hashlib.sha256()
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _digests[key] = h.hexdigest()
    return _digests[key]


# ----------------------------------------------------------------------------- a run's checkpoints

def step_dirs(root) -> list[tuple[int, Path]]:
    """(step, directory) of the step-XXXXXXX directories under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.fullmatch(p.name))]
    return sorted(found)


def latest_checkpoint(root) -> Path | None:
    """The newest complete checkpoint under a run's checkpoint folder `root`, or None.

    `latest` names it; if that file is missing or names something incomplete (it never should),
    the newest complete step directory is used; then the old layout, `root` itself.
    """
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        if STEP_DIR.fullmatch(name) and is_checkpoint(root / name):
            return root / name
    complete = [d for _, d in step_dirs(root) if is_checkpoint(d)]
    if complete:
        return complete[-1]
    return root if is_checkpoint(root) else None


def resolve_checkpoint(path) -> Path:
    """The checkpoint directory meant by `path`: a checkpoint itself, a step directory, a run's
    checkpoint folder (its latest) or a run directory (RUN/checkpoint's latest). Paths that are
    none of these are returned as they are (check_checkpoint_dir then says what is missing)."""
    path = Path(path)
    for root in (path, path / CHECKPOINTS):
        if root.is_dir() and (found := latest_checkpoint(root)) is not None:
            return found
    return path


class RunCheckpoints:
    """RUN/checkpoint/: step-XXXXXXX directories, the newest `keep` kept (0 = all), and `latest`.

    Only the main process writes. A save writes the step directory (atomically), then points
    `latest` at it (atomically), then prunes; a crash between any two leaves a readable run.
    The first save of a run also removes step directories that are not part of its history:
    all of them for a fresh run (a new run replaces the old one in the same directory), those
    after the resumed step for a resumed run (a timeline that was abandoned). An old
    single-directory checkpoint (files directly in RUN/checkpoint/) is read but never deleted.
    """

    def __init__(self, root, keep: int = 3):
        self.root, self.keep = Path(root), keep
        self.first_save = True
        self.fresh = True  # set False by the trainer when it resumes

    def latest(self) -> Path | None:
        return latest_checkpoint(self.root)

    def save(self, step: int, model, tokenizer, train_state: dict, run_config: dict) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        path = save_checkpoint(self.root / f"step-{step:07d}", model, tokenizer, train_state, run_config)
        write_text_atomic(self.root / LATEST, path.name + "\n")
        self._prune(step)
        self.first_save = False
        return path

    def _prune(self, step: int) -> None:
        dirs = step_dirs(self.root)
        if self.first_save and self.fresh:
            drop = [d for s, d in dirs if s != step]
        else:
            drop = [d for s, d in dirs if s > step]  # an abandoned future (resumed from an earlier step)
            kept = [d for s, d in dirs if s <= step]
            if self.keep > 0:
                drop += kept[:-self.keep]
        for d in drop:
            shutil.rmtree(d, ignore_errors=True)

    def _remove_leftovers(self) -> None:
        """Temporary directories of saves that were killed half-way (hidden names, never read)."""
        for p in self.root.iterdir():
            if p.name.startswith(".step-") or p.name.startswith(f".{LATEST}.tmp-"):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)


def _legacy_numpy_types() -> list:
    """What a train_state.pt written before RNG states became tensors holds besides tensors: a
    numpy array (the numpy RNG keys). Array reconstruction is data only; nothing else is allowed."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_train_state(ckpt) -> dict:
    """The resume state of a checkpoint (tensors and plain values only: weights_only=True)."""
    file = Path(ckpt) / TRAIN_STATE
    if not file.is_file():
        raise UserError(f"{ckpt}: no {TRAIN_STATE}; this checkpoint cannot be resumed (it has weights only)")
    try:
        with torch.serialization.safe_globals(_legacy_numpy_types()):
            return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, never a traceback
        raise UserError(f"{file}: cannot read the resume state ({type(e).__name__}: {str(e)[:200]}); "
                        f"resume from an earlier checkpoint with --resume-from") from None


# ----------------------------------------------------------------------------- loading

def check_checkpoint_dir(path) -> Path:
    path = resolve_checkpoint(path)
    if not path.is_dir():
        raise UserError(f"{path}: checkpoint directory not found")
    if is_lora_checkpoint(path):
        from .lora import check_lora_checkpoint

        check_lora_checkpoint(path)
        return path
    for name in ("config.json", WEIGHTS, "tokenizer.json"):
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


def load_model_state(model, ckpt) -> None:
    """Load a checkpoint's trained weights into `model` as it is: the full weights, or (for a LoRA
    checkpoint) the adapter into a model that already has LoRA layers. Used by resume."""
    ckpt = Path(ckpt)
    if is_lora_checkpoint(ckpt):
        from .lora import load_adapter

        load_adapter(model, ckpt)
    else:
        load_weights(model, ckpt / WEIGHTS)


def load_checkpoint(path, device="cpu", dtype=None):
    """Load (model, tokenizer) from a checkpoint (or run) directory, validating the parts against
    each other. A LoRA checkpoint comes back as its base with the adapter merged in."""
    from .tokenizer import Tokenizer

    path = check_checkpoint_dir(path)
    if is_lora_checkpoint(path):
        from .lora import load_lora_checkpoint

        model, tok = load_lora_checkpoint(path)
    else:
        cfg = ModelConfig.load(path / "config.json")
        tok = Tokenizer.load(path)
        check_tokenizer_matches(cfg, tok, where=str(path))
        model = MiniMindForCausalLM(cfg)
        load_weights(model, path / WEIGHTS)
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
