"""Glue between the command line and the engine: build model, tokenizer, data and objective.

Every training command (`pretrain`, `sft`, and the post-training ones) turns its arguments into a
`RunConfig` (`run_config(args, stage)`, the only place that reads the argparse namespace) and calls
`run_training` with it and its objective; nothing here loops over data, the engine does. From
Python or a benchmark, build a RunConfig directly:

    cfg = RunConfig(stage="pretrain", data="data/pretrain.jsonl", tokenizer="runs/tok",
                    train=TrainConfig(out_dir="runs/pt", steps=100, batch_size=16))
    run_training(cfg, LanguageModeling(), data_kind="pretrain")
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch.distributed as dist

from ..config import PRESETS, get_preset
from ..errors import UserError
from ..model import MiniMindForCausalLM
from ..runtime import Dist, join_process_group, pick_dtype, process_device, seed_everything
from .budget import parse_duration
from .engine import TrainConfig, Trainer

# defaults per stage: (lr, batch_size, max_seq_len, warmup, schedule)
STAGE_DEFAULTS = {
    "pretrain": dict(lr=2e-3, batch_size=32, max_seq_len=256, warmup=50, schedule="wsd"),
    # fine-tuning keeps the embedding rows of tokens its data never reads (embed_rows.py, docs/training.md)
    "sft": dict(lr=1e-3, batch_size=32, max_seq_len=384, warmup=20, schedule="cosine", embed_rows="seen"),
}
MODEL_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
              "intermediate_size", "num_experts", "num_experts_per_tok", "num_shared_experts")


@dataclass
class RunConfig:
    """Everything a training command needs besides its objective (typed, callable from Python)."""

    stage: str
    data: str
    train: TrainConfig
    eval_data: str | None = None
    init: str | None = None  # checkpoint or run directory to start from (weights, config, tokenizer)
    tokenizer: str | None = None  # needed without init
    preset: str = "nano"
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields over the preset
    max_seq_len: int = 256
    epochs: float | None = None  # passes over the data (steps from it when train.steps is 0)
    on_bad_record: str = "error"
    cache_dir: str | None = None  # where prepared data goes (default: beside the input, else a user cache)
    auto_batch: bool = False  # train.batch_size * train.grad_accum rows per step, micro-batch fitted to memory
    argv: list = field(default_factory=list)  # the command line, saved with the run
    probe_prompts: str | None = None  # a text file of prompts: greedy replies at every evaluation (probes.py)


# ----------------------------------------------------------------------------- arguments

def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model (ignored with --init: the checkpoint decides)")
    g.add_argument("--preset", default="nano", help=f"named shape: {', '.join(PRESETS)} (default: nano)")
    g.add_argument("--hidden-size", type=int, help="override the preset's hidden size")
    g.add_argument("--num-layers", type=int, dest="num_hidden_layers", help="number of decoder layers")
    g.add_argument("--num-heads", type=int, dest="num_attention_heads", help="attention heads")
    g.add_argument("--num-kv-heads", type=int, dest="num_key_value_heads", help="key/value heads (GQA)")
    g.add_argument("--head-dim", type=int, help="per-head width (default hidden/heads)")
    g.add_argument("--intermediate-size", type=int, help="SwiGLU width")
    g.add_argument("--num-experts", type=int, help="routed experts (0 = dense)")
    g.add_argument("--experts-per-tok", type=int, dest="num_experts_per_tok", help="top-k experts per token")
    g.add_argument("--shared-experts", type=int, dest="num_shared_experts", help="shared experts")


class BatchSizeAction(argparse.Action):
    """--batch-size N, or --batch-size auto: keep (default batch size x --grad-accum) rows per step
    and fit the micro-batch to the device's memory (the command's default is read at parse time,
    after any set_defaults)."""

    def __call__(self, parser, ns, value, option_string=None):
        if value == "auto":
            ns.batch_size, ns.auto_batch = self.default, True
            return
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            parser.error(f"argument --batch-size: a positive integer or 'auto', got {value!r}")
        ns.batch_size, ns.auto_batch = n, False


def add_train_args(p: argparse.ArgumentParser, stage: str) -> None:
    d = STAGE_DEFAULTS[stage]
    p.add_argument("--data", required=True, help="training JSONL file, or a directory made by `data prepare`")
    p.add_argument("--eval-data", help="held-out JSONL (or prepared dir) for periodic eval loss")
    p.add_argument("--out", required=True, help="run directory: checkpoint/, metrics.jsonl")
    p.add_argument("--init", help="start from this checkpoint (or run) directory: weights, config, tokenizer")
    p.add_argument("--tokenizer", help="tokenizer directory (needed without --init)")
    p.add_argument("--cache-dir", help="where prepared (tokenized) data goes; default: a prepared/ folder beside "
                                       "the input, or ~/.cache/minimind/prepared when that folder is not writable")
    add_model_args(p)
    g = p.add_argument_group("optimisation")
    g.add_argument("--max-seq-len", type=int, default=d["max_seq_len"],
                   help="tokens per row (pretrain) / longest conversation (default %(default)s)")
    g.add_argument("--steps", type=int, help="optimizer steps (default: --epochs worth; with --time-budget: a cap)")
    g.add_argument("--epochs", type=float, help="passes over the data when --steps is not given (default 1; "
                                                "with --time-budget: a cap only when given)")
    g.add_argument("--time-budget", help="train for this long, e.g. 90s, 6m, 1h or plain seconds: the steps "
                                         "(and the lr schedule over them) are planned from measured speed so the "
                                         "command ends on time (docs/training.md)")
    g.add_argument("--batch-size", action=BatchSizeAction, default=d["batch_size"],
                   help="rows of --max-seq-len tokens per micro-batch per process (default %(default)s); "
                        "conversation data fills that budget with as many whole conversations (or pairs) as fit, "
                        "so short ones mean more per step; 'auto': keep the default x --grad-accum rows per step "
                        "and use the largest micro-batch that fits memory")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=d["lr"], help="peak learning rate (default %(default)s)")
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr as a fraction of --lr")
    g.add_argument("--warmup", type=int, default=d["warmup"],
                   help="linear warmup steps (default %(default)s; under --time-budget at most a quarter of "
                        "the planned steps)")
    g.add_argument("--schedule", default=d["schedule"], choices=["cosine", "wsd", "constant"],
                   help="lr schedule after warmup (wsd = warmup-stable-decay)")
    g.add_argument("--decay-frac", type=float, default=0.2, help="wsd: share of steps spent decaying")
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decoupled weight decay on matrices")
    g.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0 = off)")
    g.add_argument("--embed-rows", default=d.get("embed_rows", "all"), choices=["all", "seen"],
                   help="seen: each step changes only the embedding rows of tokens its batches read, so words "
                        "the data never uses keep what pretraining taught (default %(default)s; docs/training.md)")
    g.add_argument("--optimizer", default="adamw", choices=["adamw", "muon"],
                   help="adamw, or muon for hidden matrices (+adamw for the rest)")
    g.add_argument("--muon-lr", type=float, default=0.02, help="with --optimizer muon: lr of the hidden matrices")
    g.add_argument("--dtype", default="auto",
                   help="auto (bf16 where fast), bf16, fp16 (GPU, with a gradient scaler), fp32")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    g.add_argument("--seed", type=int, default=42, help="initial weights, data order and dropout")
    r = p.add_argument_group("run")
    r.add_argument("--eval-every", type=int, default=0, help="steps between evaluations (0: at the end)")
    r.add_argument("--eval-batches", type=int, default=20, help="held-out batches per evaluation (per process)")
    r.add_argument("--probe-prompts", help="text file, one prompt per line: greedy replies printed and logged "
                                           "(metrics.jsonl probe/N) at every evaluation, to watch the model learn")
    r.add_argument("--save-every", type=int, default=0, help="steps between checkpoints (0: at the end)")
    r.add_argument("--keep-checkpoints", type=int, default=3,
                   help="step directories kept in OUT/checkpoint (default 3; 0 keeps all)")
    r.add_argument("--log-every", type=int, default=10, help="steps between metrics.jsonl rows")
    r.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint/latest if there is one, else start fresh (says which)")
    r.add_argument("--resume-from", help="continue from this checkpoint (a step directory or a run directory)")
    r.add_argument("--target-loss", type=float, default=0.0,
                   help="stop as soon as an evaluation reaches this held-out loss (needs --eval-data)")
    r.add_argument("--stop-after", type=int, default=0,
                   help="stop with a checkpoint after this step (continue later with --resume)")
    r.add_argument("--max-bad-steps", type=int, default=20,
                   help="non-finite steps are skipped; stop after this many in a row (default 20, 0: never)")
    r.add_argument("--on-bad-record", default="error", choices=["error", "skip"],
                   help="a malformed JSONL line stops (error) or is skipped and counted (skip)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--wandb", action="store_true", help="log to Weights & Biases")
    r.add_argument("--swanlab", action="store_true", help="log to SwanLab")
    r.add_argument("--tensorboard", action="store_true", help="log to TensorBoard (OUT/tensorboard)")
    p.set_defaults(auto_batch=False)


# (flag, attribute, lowest allowed, open interval at the lowest?, highest allowed or None)
_RANGES = [("--lr", "lr", 0.0, True, None), ("--min-lr-ratio", "min_lr_ratio", 0.0, False, 1.0),
           ("--warmup", "warmup", 0, False, None), ("--steps", "steps", 0, False, None),
           ("--epochs", "epochs", 0.0, True, None), ("--weight-decay", "weight_decay", 0.0, False, None),
           ("--grad-clip", "grad_clip", 0.0, False, None), ("--decay-frac", "decay_frac", 0.0, False, 1.0),
           ("--muon-lr", "muon_lr", 0.0, True, None), ("--max-seq-len", "max_seq_len", 1, False, None),
           ("--eval-every", "eval_every", 0, False, None), ("--eval-batches", "eval_batches", 1, False, None),
           ("--think-weight", "think_weight", 0.0, False, None)]


def _check_numbers(args) -> None:
    """One line for a number outside what the flag means (a negative lr or step count, a final lr ratio
    above 1, ...), before anything runs."""
    for flag, attr, lo, open_lo, hi in _RANGES:
        v = getattr(args, attr, None)
        if v is None:
            continue
        if (v <= lo if open_lo else v < lo) or (hi is not None and v > hi):
            want = (f"{'above' if open_lo else 'at least'} {lo}" + (f" and at most {hi}" if hi is not None else ""))
            raise UserError(f"{flag} {v}: must be {want}")


def run_config(args, stage: str, extra: dict | None = None) -> RunConfig:
    """The argparse namespace of a training command -> RunConfig (the boundary)."""
    if args.grad_accum < 1:
        raise UserError(f"--grad-accum must be a positive integer, got {args.grad_accum}")
    _check_numbers(args)
    for flag, path in (("--data", args.data), ("--eval-data", getattr(args, "eval_data", None))):
        if path and not Path(path).exists():
            raise UserError(f"{flag} {path}: no such file or directory")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"--out {args.out}: a file of that name exists; --out is a run directory")
    budget = parse_duration(args.time_budget) if args.time_budget else 0.0
    train = TrainConfig(
        out_dir=args.out, steps=args.steps or 0, batch_size=args.batch_size, grad_accum=args.grad_accum,
        lr=args.lr, min_lr_ratio=args.min_lr_ratio, warmup=args.warmup, schedule=args.schedule,
        decay_frac=args.decay_frac, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        embed_rows=getattr(args, "embed_rows", "all"),
        optimizer=args.optimizer, muon_lr=args.muon_lr, dtype=args.dtype, compile=args.compile, device=args.device,
        seed=args.seed, eval_every=args.eval_every, eval_batches=args.eval_batches,
        save_every=args.save_every, keep_checkpoints=args.keep_checkpoints, log_every=args.log_every,
        resume=args.resume, resume_from=args.resume_from or "", stop_after=args.stop_after,
        target_loss=args.target_loss, time_budget=budget, max_bad_steps=args.max_bad_steps,
        progress=not args.no_progress, wandb=args.wandb, swanlab=args.swanlab,
        tensorboard=args.tensorboard, extra=extra or {})
    return RunConfig(
        stage=stage, data=args.data, train=train, eval_data=args.eval_data, init=args.init,
        tokenizer=args.tokenizer, preset=args.preset,
        model_overrides={k: getattr(args, k) for k in MODEL_KEYS if getattr(args, k, None) is not None},
        max_seq_len=args.max_seq_len, epochs=args.epochs, on_bad_record=args.on_bad_record,
        cache_dir=args.cache_dir, auto_batch=args.auto_batch, argv=sys.argv[1:],
        probe_prompts=getattr(args, "probe_prompts", None))


# ----------------------------------------------------------------------------- model

def build_model(cfg: RunConfig, tokenizer=None):
    """(model, tokenizer) from cfg.init (any checkpoint, run or LoRA run), or a fresh model from the
    preset and shape overrides with cfg.tokenizer."""
    from ..checkpoint import load_checkpoint
    from ..tokenizer import Tokenizer

    if cfg.init:
        return load_checkpoint(cfg.init)
    if not cfg.tokenizer:
        raise UserError("pass --tokenizer DIR (from `minimind tokenizer train`) or --init CHECKPOINT")
    tok = tokenizer or Tokenizer.load(cfg.tokenizer)
    over = cfg.model_overrides
    mcfg = get_preset(cfg.preset, vocab_size=tok.vocab_size, bos_token_id=tok.im_start_id,
                      eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, **over)
    if over.get("hidden_size") and not over.get("head_dim"):  # keep head_dim consistent with a new width
        mcfg.head_dim = mcfg.hidden_size // mcfg.num_attention_heads
    if over.get("hidden_size") and not over.get("intermediate_size"):
        mcfg.intermediate_size = None
        mcfg.moe_intermediate_size = None
        mcfg.__post_init__()
    mcfg.max_position_embeddings = max(mcfg.max_position_embeddings, cfg.max_seq_len)
    return MiniMindForCausalLM(mcfg), tok


# ----------------------------------------------------------------------------- data

def user_cache_dir() -> Path:
    """$MINIMIND_CACHE, else $XDG_CACHE_HOME/minimind, else ~/.cache/minimind."""
    if os.environ.get("MINIMIND_CACHE"):
        return Path(os.environ["MINIMIND_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "minimind"


def _writable(folder: Path) -> bool:
    """Can files be created in `folder` (made if missing)? Tried, not guessed from permission bits."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def cache_path(src: Path, kind: str, tok, cache_dir: str | None = None, say=print) -> Path:
    """Where the prepared form of `src` lives: --cache-dir, else prepared/ beside the input, else (the
    input's folder is read-only) the user cache, named with a hash of the input's path."""
    name = f"{src.stem}-{kind}-{tok.fingerprint()[:8]}"
    if cache_dir:
        return Path(cache_dir) / name
    beside = src.parent / "prepared"
    if _writable(beside):
        return beside / name
    digest = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:8]
    cache = user_cache_dir() / "prepared" / f"{name}-{digest}"
    say(f"note: {src.parent} is not writable; prepared data goes to {cache} (choose with --cache-dir)")
    return cache


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock on `path` (created if needed), released on exit or when the process dies.
    Waits as long as it takes: no collective timeout while another process tokenizes a big file."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (one process at a time is then up to the user)
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepared_data(path: str, tok, kind: str, max_seq_len: int, on_bad_record: str = "error",
                  cache_dir: str | None = None, progress: bool = True, verbose: bool = True):
    """A prepared dataset for `path`: used as is if it is a prepared dir, else prepared once (cached).

    Safe to call from every process of a torchrun job at once (before the process group exists):
    the first to take the lock tokenizes, the others wait and then find it up to date."""
    from ..data.prepare import load_prepared, prepare

    p = Path(path)
    if p.is_dir():
        return load_prepared(p, tok)
    if not p.is_file():
        raise UserError(f"--data {path}: no such file or directory")
    cache = cache_path(p, kind, tok, cache_dir, say=print if verbose else (lambda _: None))
    try:
        with file_lock(cache.parent / f".{cache.name}.lock"):
            prepare(p, tok, cache, kind=kind, max_seq_len=None if kind == "pretrain" else max_seq_len,
                    on_bad_record=on_bad_record, progress=progress, verbose=verbose)
    except PermissionError as e:
        raise UserError(f"{cache}: cannot write prepared data there ({e.strerror}); choose a writable "
                        f"folder with --cache-dir") from None
    return load_prepared(cache, tok)


def _eval_batch_size(data, cfg: RunConfig, d: Dist) -> int:
    """A held-out set may be small: shrink the batch so that it still fills one batch per rank."""
    if data.kind == "pretrain":
        available = data.meta["n_tokens"] // (cfg.max_seq_len + 1)
    else:
        available = len(data)
    return max(1, min(cfg.train.batch_size, available // d.world_size))


def _data_note(data) -> str:
    """Records cut to max_seq_len and records dropped for having nothing to train on, if any."""
    m = data.meta
    notes = [f"{m[k]} {what}" for k, what in (("truncated", "cut to --max-seq-len"),
                                               ("dropped_no_target", "dropped: no trained token left"))
             if m.get(k)]
    return f" ({', '.join(notes)})" if notes else ""


# ----------------------------------------------------------------------------- the run

def _plan_steps(cfg: RunConfig, n_batches: int, world_size: int) -> int:
    """--steps; else --epochs worth (default 1); under --time-budget only a cap given explicitly."""
    t = cfg.train
    if t.steps:
        return t.steps
    if t.time_budget and cfg.epochs is None:
        return 0  # no cap: the budget decides
    per_step = world_size * t.grad_accum
    epochs = 1.0 if cfg.epochs is None else cfg.epochs
    return max(1, math.ceil(epochs * n_batches * world_size / per_step))


def run_training(cfg: RunConfig, objective, data_kind: str, model_and_tok=None) -> dict:
    """Build everything for a training command and run the engine. Returns the final metrics."""
    from ..data.loader import make_loader

    started = time.monotonic()  # the time budget counts from here
    d = Dist.from_env()
    device = process_device(d, cfg.train.device)
    t = cfg.train
    try:
        seed_everything(t.seed)  # the same initial weights in every process and every run
        model, tok = model_and_tok or build_model(cfg)
        if cfg.max_seq_len > model.config.max_position_embeddings:
            raise UserError(f"--max-seq-len {cfg.max_seq_len} exceeds the model's "
                            f"max_position_embeddings {model.config.max_position_embeddings}")
        progress = t.progress and d.is_main
        # tokenize before joining the process group: a collective would time out on a big file
        data = prepared_data(cfg.data, tok, data_kind, cfg.max_seq_len, cfg.on_bad_record, cfg.cache_dir,
                             progress, verbose=d.is_main)
        edata = None
        if cfg.eval_data:
            edata = prepared_data(cfg.eval_data, tok, data_kind, cfg.max_seq_len, cfg.on_bad_record,
                                  cfg.cache_dir, progress, verbose=d.is_main)
        join_process_group(d, device)
        if cfg.auto_batch:
            from .autobatch import fit_batch_size

            t.batch_size, t.grad_accum = fit_batch_size(model, objective, t.batch_size * t.grad_accum,
                                                        cfg.max_seq_len, data_kind, device,
                                                        pick_dtype(t.dtype, device), say=print if progress else None)
        loader = make_loader(data, t.batch_size, cfg.max_seq_len, seed=t.seed, rank=d.rank, world_size=d.world_size)
        eval_loader = None
        if edata is not None:
            eval_loader = make_loader(edata, _eval_batch_size(edata, cfg, d), cfg.max_seq_len, seed=0,
                                      rank=d.rank, world_size=d.world_size)
        t.steps = _plan_steps(cfg, len(loader), d.world_size)
        run_cfg = {"stage": cfg.stage, "model": model.config.to_dict(), "data": str(cfg.data),
                   "max_seq_len": cfg.max_seq_len, "argv": cfg.argv}
        if progress:
            c = model.config.param_counts()
            steps = f"{t.steps} steps" if t.steps else "steps by time"
            print(f"{cfg.stage}: {c['total'] / 1e6:.2f}M parameters ({model.config.name}), "
                  f"{len(data)} records{_data_note(data)}, {steps} x {t.batch_size * t.grad_accum * d.world_size} "
                  f"rows x {cfg.max_seq_len} tokens, lr {t.lr:g} ({t.schedule}) -> {t.out_dir}")
        evaluators = []
        if cfg.probe_prompts:
            from .probes import load_probes, probe_evaluator

            evaluators.append(probe_evaluator(tok, load_probes(cfg.probe_prompts), chat=cfg.stage != "pretrain",
                                              say=print if progress else None))
        trainer = Trainer(model, objective, loader, tok, t, eval_loader=eval_loader, run_config=run_cfg,
                          dist_info=d, device=device, started_at=started, evaluators=evaluators)
        return trainer.fit()
    finally:
        if d.enabled and dist.is_initialized():
            dist.destroy_process_group()
