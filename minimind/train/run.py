"""Glue between the command line and the engine: build model, tokenizer, data and objective.

Every training command (`pretrain`, `sft`, and the post-training ones) calls `run_training`
with its objective; nothing here loops over data — the engine does.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ..checkpoint import check_checkpoint_dir, check_tokenizer_matches, load_weights
from ..config import PRESETS, ModelConfig, get_preset
from ..errors import UserError
from ..model import MiniMindForCausalLM
from ..runtime import Dist, init_distributed, seed_everything
from .engine import TrainConfig, Trainer

# defaults per stage: (lr, batch_size, max_seq_len, warmup, schedule)
STAGE_DEFAULTS = {
    "pretrain": dict(lr=2e-3, batch_size=32, max_seq_len=256, warmup=50, schedule="wsd"),
    "sft": dict(lr=1e-3, batch_size=32, max_seq_len=384, warmup=20, schedule="cosine"),
}


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


def add_train_args(p: argparse.ArgumentParser, stage: str) -> None:
    d = STAGE_DEFAULTS[stage]
    p.add_argument("--data", required=True, help="training JSONL file, or a directory made by `data prepare`")
    p.add_argument("--eval-data", help="held-out JSONL (or prepared dir) for periodic eval loss")
    p.add_argument("--out", required=True, help="run directory: checkpoint/, metrics.jsonl, run.json")
    p.add_argument("--init", help="start from this checkpoint (or run) directory: weights, config, tokenizer")
    p.add_argument("--tokenizer", help="tokenizer directory (needed without --init)")
    add_model_args(p)
    g = p.add_argument_group("optimisation")
    g.add_argument("--max-seq-len", type=int, default=d["max_seq_len"],
                   help=f"tokens per row (pretrain) / longest conversation (default {d['max_seq_len']})")
    g.add_argument("--steps", type=int, help="optimizer steps (default: --epochs worth)")
    g.add_argument("--epochs", type=float, default=1.0, help="passes over the data when --steps is not given")
    g.add_argument("--batch-size", type=int, default=d["batch_size"], help="rows per micro-batch (per process)")
    g.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--lr", type=float, default=d["lr"], help=f"peak learning rate (default {d['lr']})")
    g.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr as a fraction of --lr")
    g.add_argument("--warmup", type=int, default=d["warmup"], help="linear warmup steps")
    g.add_argument("--schedule", default=d["schedule"], choices=["cosine", "wsd", "constant"],
                   help="lr schedule after warmup (wsd = warmup-stable-decay)")
    g.add_argument("--decay-frac", type=float, default=0.2, help="wsd: share of steps spent decaying")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0 = off)")
    g.add_argument("--optimizer", default="adamw", choices=["adamw", "muon"],
                   help="adamw, or muon for hidden matrices (+adamw for the rest)")
    g.add_argument("--muon-lr", type=float, default=0.02, help="with --optimizer muon: lr of the hidden matrices")
    g.add_argument("--dtype", default="auto", help="auto (bf16 where fast), bf16, fp16 (GPU), fp32")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    g.add_argument("--seed", type=int, default=42)
    r = p.add_argument_group("run")
    r.add_argument("--eval-every", type=int, default=0, help="steps between evaluations (0: at the end)")
    r.add_argument("--eval-batches", type=int, default=20)
    r.add_argument("--save-every", type=int, default=0, help="steps between checkpoints (0: at the end)")
    r.add_argument("--log-every", type=int, default=10)
    r.add_argument("--resume", action="store_true", help="continue OUT/checkpoint exactly where it stopped")
    r.add_argument("--target-loss", type=float, default=0.0,
                   help="stop as soon as an evaluation reaches this held-out loss (needs --eval-data)")
    r.add_argument("--stop-after", type=int, default=0,
                   help="stop with a checkpoint after this step (continue later with --resume)")
    r.add_argument("--on-bad-record", default="error", choices=["error", "skip"],
                   help="a malformed JSONL line stops (error) or is skipped and counted (skip)")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--wandb", action="store_true", help="log to Weights & Biases")
    r.add_argument("--swanlab", action="store_true", help="log to SwanLab")
    r.add_argument("--tensorboard", action="store_true", help="log to TensorBoard (OUT/tensorboard)")


def train_config(args, extra: dict | None = None) -> TrainConfig:
    return TrainConfig(
        out_dir=args.out, steps=args.steps or 0, batch_size=args.batch_size, grad_accum=args.grad_accum,
        lr=args.lr, min_lr_ratio=args.min_lr_ratio, warmup=args.warmup, schedule=args.schedule,
        decay_frac=args.decay_frac, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        optimizer=args.optimizer, muon_lr=args.muon_lr, dtype=args.dtype, compile=args.compile, device=args.device,
        seed=args.seed, eval_every=args.eval_every, eval_batches=args.eval_batches,
        save_every=args.save_every, log_every=args.log_every, resume=args.resume, stop_after=args.stop_after,
        target_loss=args.target_loss,
        progress=not args.no_progress, wandb=args.wandb, swanlab=args.swanlab,
        tensorboard=args.tensorboard, extra=extra or {})


def build_model(args, tokenizer=None):
    """(model, tokenizer) from --init, or a fresh model from --preset/shape flags + --tokenizer."""
    from ..tokenizer import Tokenizer

    if args.init:
        ckpt = check_checkpoint_dir(args.init)
        cfg = ModelConfig.load(ckpt / "config.json")
        tok = Tokenizer.load(ckpt)
        check_tokenizer_matches(cfg, tok, where=str(ckpt))
        model = MiniMindForCausalLM(cfg)
        load_weights(model, ckpt / "model.safetensors")
        return model, tok
    if not args.tokenizer:
        raise UserError("pass --tokenizer DIR (from `minimind tokenizer train`) or --init CHECKPOINT")
    tok = tokenizer or Tokenizer.load(args.tokenizer)
    overrides = {k: getattr(args, k, None) for k in (
        "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
        "intermediate_size", "num_experts", "num_experts_per_tok", "num_shared_experts")}
    cfg = get_preset(args.preset, vocab_size=tok.vocab_size, bos_token_id=tok.im_start_id,
                     eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, **overrides)
    if args.hidden_size and not args.head_dim:  # keep head_dim consistent with an overridden width
        cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    if args.hidden_size and not args.intermediate_size:
        cfg.intermediate_size = None
        cfg.moe_intermediate_size = None
        cfg.__post_init__()
    cfg.max_position_embeddings = max(cfg.max_position_embeddings, args.max_seq_len)
    return MiniMindForCausalLM(cfg), tok


def prepared_data(path: str, tok, kind: str, max_seq_len: int, on_bad_record: str, d: Dist, progress=True):
    """A prepared dataset for `path`: used as is if it is a prepared dir, else prepared once (cached)."""
    from ..data.prepare import load_prepared, prepare

    p = Path(path)
    if p.is_dir():
        return load_prepared(p, tok)
    if not p.is_file():
        raise UserError(f"--data {path}: no such file or directory")
    cache = p.parent / "prepared" / f"{p.stem}-{kind}-{tok.fingerprint()[:8]}"
    if d.is_main:
        prepare(p, tok, cache, kind=kind, max_seq_len=None if kind == "pretrain" else max_seq_len,
                on_bad_record=on_bad_record, progress=progress)
    if d.enabled:
        dist.barrier()
    return load_prepared(cache, tok)


def _eval_batch_size(data, args, d: Dist) -> int:
    """A held-out set may be small: shrink the batch so that it still fills one batch per rank."""
    if data.kind == "pretrain":
        available = data.meta["n_tokens"] // (args.max_seq_len + 1)
    else:
        available = len(data)
    return max(1, min(args.batch_size, available // d.world_size))


def run_training(stage: str, args, objective, data_kind: str, extra: dict | None = None,
                 model_and_tok=None) -> dict:
    """Build everything for a training command and run the engine. Returns the final metrics."""
    from ..data.loader import make_loader

    d, device = init_distributed(args.device)
    try:
        seed_everything(args.seed)  # the same initial weights in every process and every run
        model, tok = model_and_tok or build_model(args)
        if args.max_seq_len > model.config.max_position_embeddings:
            raise UserError(f"--max-seq-len {args.max_seq_len} exceeds the model's "
                            f"max_position_embeddings {model.config.max_position_embeddings}")
        progress = not args.no_progress and d.is_main
        data = prepared_data(args.data, tok, data_kind, args.max_seq_len, args.on_bad_record, d, progress)
        loader = make_loader(data, args.batch_size, args.max_seq_len, seed=args.seed, rank=d.rank,
                             world_size=d.world_size)
        eval_loader = None
        if args.eval_data:
            edata = prepared_data(args.eval_data, tok, data_kind, args.max_seq_len, args.on_bad_record, d, progress)
            eval_loader = make_loader(edata, _eval_batch_size(edata, args, d), args.max_seq_len, seed=0,
                                      rank=d.rank, world_size=d.world_size)
        cfg = train_config(args, extra)
        if not cfg.steps:
            per_step = d.world_size * cfg.grad_accum
            cfg.steps = max(1, math.ceil(args.epochs * len(loader) * d.world_size / per_step))
        run_config = {"stage": stage, "model": model.config.to_dict(), "data": str(args.data),
                      "argv": sys.argv[1:]}
        if d.is_main and not args.no_progress:
            c = model.config.param_counts()
            print(f"{stage}: {c['total'] / 1e6:.2f}M parameters ({model.config.name}), "
                  f"{len(data)} records, {cfg.steps} steps x {cfg.batch_size * cfg.grad_accum * d.world_size} rows"
                  f" x {args.max_seq_len} tokens, lr {cfg.lr:g} ({cfg.schedule}) -> {cfg.out_dir}")
        trainer = Trainer(model, objective, loader, tok, cfg, eval_loader=eval_loader, run_config=run_config,
                          dist_info=d, device=device)
        return trainer.fit()
    finally:
        if d.enabled and dist.is_initialized():
            dist.destroy_process_group()
