"""Training commands: `minimind pretrain | sft | lora | lora merge | dpo | distill`.

Each one builds its models and objective and hands them to the one training engine through
`run_training`; the objectives live in pretrain.py, sft.py, dpo.py, distill.py and lora.py (layers).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError


# ----------------------------------------------------------------------------- pretrain, sft

def cmd_pretrain(args):
    from .pretrain import LanguageModeling
    from .run import run_training

    m = run_training("pretrain", args, LanguageModeling(), data_kind="pretrain")
    _print_final(m, args.out)


def cmd_sft(args):
    from ..runtime import seed_everything
    from .run import build_model, run_training
    from .sft import SupervisedFineTuning

    if not args.init and not args.tokenizer:
        raise UserError("sft: pass --init CHECKPOINT (a pretrained model) or --tokenizer DIR to start from scratch")
    seed_everything(args.seed)
    model, tok = build_model(args)
    weighted = [tok.think_id, tok.end_think_id] if args.reasoning else []
    obj = SupervisedFineTuning(weighted, args.think_weight if args.reasoning else 1.0)
    m = run_training("sft", args, obj, data_kind="sft", extra={"reasoning": args.reasoning,
                     "think_weight": args.think_weight}, model_and_tok=(model, tok))
    _print_final(m, args.out)


def _print_final(m: dict, out: str):
    keys = [k for k in ("loss", "eval_loss", "tokens_per_s", "elapsed_s") if k in m]
    print("done: " + ", ".join(f"{k} {m[k]:.4g}" for k in keys) + f"; checkpoint: {out}/checkpoint")


def add_stage_commands(sub) -> None:
    from .run import add_train_args

    s = sub.add_parser("pretrain", help="pretrain a model from scratch (or continue one) on text")
    add_train_args(s, "pretrain")
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("sft", help="supervised fine-tuning on conversations (loss on assistant tokens)")
    add_train_args(s, "sft")
    s.add_argument("--reasoning", action="store_true",
                   help="reasoning distillation: extra loss weight on <think>/</think> tags")
    s.add_argument("--think-weight", type=float, default=10.0, help="with --reasoning (default 10)")
    s.set_defaults(func=cmd_sft)


# ----------------------------------------------------------------------------- lora

def cmd_lora(args):
    from ..checkpoint import check_checkpoint_dir
    from ..lora import LoRAConfig, adapter_size, inject_lora, save_adapter
    from ..runtime import seed_everything
    from .run import build_model, run_training
    from .sft import SupervisedFineTuning

    if not args.data or not args.out:
        raise UserError("lora: pass --data FILE and --out RUN (or `minimind lora merge BASE ADAPTER OUT`)")
    if not args.init:
        raise UserError("lora: pass --init CHECKPOINT, the base model the adapter is trained on")
    cfg = LoRAConfig(args.rank, args.alpha, args.lora_dropout, args.lora_targets).validate()
    seed_everything(args.seed)  # the same A initialisation every run
    model, tok = build_model(args)
    inject_lora(model, cfg.rank, cfg.alpha, cfg.dropout, cfg.targets)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if not args.no_progress:
        print(f"lora: rank {cfg.rank}, alpha {cfg.alpha:g}: {trained:,} trainable of {total:,} parameters "
              f"({trained / total:.2%})")
    m = run_training("lora", args, SupervisedFineTuning(), data_kind="sft", model_and_tok=(model, tok),
                     extra={"lora": vars(cfg)})
    base = check_checkpoint_dir(args.init)
    adapter = save_adapter(Path(args.out) / "adapter", model, cfg, base=str(base))
    base_bytes = (base / "model.safetensors").stat().st_size
    print(f"done: loss {m['loss']:.4g}" + (f", eval_loss {m['eval_loss']:.4g}" if "eval_loss" in m else "")
          + f"; adapter: {adapter} ({adapter_size(adapter) / 1024:.0f} KB, "
          f"{adapter_size(adapter) / base_bytes:.1%} of the base weights)\n"
          f"merge into a plain checkpoint: minimind lora merge {args.init} {adapter} OUT")


def cmd_lora_merge(args):
    from ..checkpoint import load_checkpoint, save_checkpoint
    from ..lora import load_adapter, merge_lora, resolve_adapter

    model, tok = load_checkpoint(args.base)
    adapter = resolve_adapter(args.adapter)
    merge_lora(load_adapter(model, adapter))
    save_checkpoint(args.out, model, tok, run_config={"stage": "lora merge", "base": str(args.base),
                                                      "adapter": str(adapter)})
    print(f"merged {adapter} into {args.base} -> {args.out}")


def add_lora_commands(sub) -> None:
    from ..lora import DEFAULT_TARGETS
    from .run import add_train_args

    p = sub.add_parser("lora", help="train a LoRA adapter on a frozen model (SFT loss); `lora merge` folds it in",
                       description="Train a LoRA adapter: `minimind lora --init BASE --data FILE --out RUN` "
                                   "(writes RUN/adapter). Fold an adapter into its base: "
                                   "`minimind lora merge BASE ADAPTER OUT`.")
    add_train_args(p, "sft")
    # LoRA trains ~1-2% of the weights from zero: a larger lr, and no decay pulling B back to zero
    p.set_defaults(func=cmd_lora, lr=3e-3, weight_decay=0.0, warmup=10)
    for action in p._actions:  # --data / --out are checked in cmd_lora, so that `lora merge` parses
        if action.dest in ("data", "out"):
            action.required = False
    g = p.add_argument_group("lora")
    g.add_argument("--rank", type=int, default=8, help="rank r of the update B A (default 8)")
    g.add_argument("--alpha", type=float, default=16.0, help="scale alpha: the update is (alpha/r) B A (default 16)")
    g.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapter's input (default 0)")
    g.add_argument("--lora-targets", default=DEFAULT_TARGETS,
                   help=f"regex, full match on module names (default {DEFAULT_TARGETS!r}: attention and MLP "
                        "projections incl. experts)")
    ms = p.add_subparsers(dest="lora_command", metavar="merge", required=False)
    m = ms.add_parser("merge", help="fold an adapter into its base model: a plain checkpoint")
    m.add_argument("base", help="the base checkpoint the adapter was trained on")
    m.add_argument("adapter", help="adapter directory (or the lora run directory holding adapter/)")
    m.add_argument("out", help="output checkpoint directory")
    m.set_defaults(func=cmd_lora_merge)


# ----------------------------------------------------------------------------- dpo

def cmd_dpo(args):
    import copy

    from ..data.loader import DPOLoader
    from .dpo import DirectPreferenceOptimization, preference_accuracy
    from ..runtime import Dist, pick_device, seed_everything
    from .run import build_model, prepared_data, run_training

    if not args.init:
        raise UserError("dpo: pass --init CHECKPOINT (an SFT model: it is both the start and the reference)")
    if args.beta <= 0:
        raise UserError(f"--beta must be positive, got {args.beta}")
    seed_everything(args.seed)
    model, tok = build_model(args)
    objective = DirectPreferenceOptimization(copy.deepcopy(model), args.beta, args.sft_weight, args.ref_mode)
    held_out = None
    if args.eval_data and int(os.environ.get("WORLD_SIZE", "1")) == 1:  # one process: measure before/after
        data = prepared_data(args.eval_data, tok, "dpo", args.max_seq_len, args.on_bad_record, Dist(),
                             progress=not args.no_progress)
        held_out = DPOLoader(data, args.batch_size, args.max_seq_len, seed=0)
        before = preference_accuracy(model.to(pick_device(args.device)), held_out)
        print(f"held-out preference accuracy before: {before['accuracy']:.1%} ({before['pairs']} pairs)")
    m = run_training("dpo", args, objective, data_kind="dpo", model_and_tok=(model, tok),
                     extra={"beta": args.beta, "sft_weight": args.sft_weight, "ref_mode": args.ref_mode})
    line = f"done: loss {m['loss']:.4g}, reward_acc {m['reward_acc']:.2f}, margin {m['reward_margin']:.3g}"
    if held_out is not None:
        after = preference_accuracy(model, held_out)
        line += f"; held-out preference accuracy {before['accuracy']:.1%} -> {after['accuracy']:.1%}"
    print(line + f"; {m['elapsed_s']:.0f} s; checkpoint: {args.out}/checkpoint")


def add_dpo_command(sub) -> None:
    from .dpo import REF_MODES
    from .run import add_train_args

    p = sub.add_parser("dpo", help="direct preference optimization on (chosen, rejected) pairs")
    add_train_args(p, "sft")
    # DPO nudges an SFT model: a small lr; pairs are short, so a moderate batch
    p.set_defaults(func=cmd_dpo, lr=2e-5, batch_size=16, warmup=10, weight_decay=0.0,
                   varying_shapes=True)  # length-bucketed batches: see runtime.pin_malloc_threshold
    g = p.add_argument_group("dpo")
    g.add_argument("--beta", type=float, default=0.1, help="KL strength: how far from the reference (default 0.1)")
    g.add_argument("--sft-weight", type=float, default=0.0, help="add this times the SFT loss on chosen answers")
    g.add_argument("--ref-mode", choices=REF_MODES, default="cache",
                   help="reference log-probs: computed once per pair and cached (default), or every step")


# ----------------------------------------------------------------------------- distill

def cmd_distill(args):
    from ..checkpoint import check_checkpoint_dir, load_checkpoint
    from .distill import Distillation, check_same_vocabulary
    from ..runtime import pick_device, pick_dtype, seed_everything
    from .run import build_model, run_training

    teacher_dir = check_checkpoint_dir(args.teacher)
    device = pick_device(args.device)
    # the teacher only runs forward: bf16 weights where the hardware is fast at it (never fp16 on CPU)
    teacher, teacher_tok = load_checkpoint(teacher_dir, device="cpu", dtype=pick_dtype(args.dtype, device))
    if not args.init and not args.tokenizer:
        args.tokenizer = str(teacher_dir)  # a fresh student shares the teacher's tokenizer
    seed_everything(args.seed)
    model, tok = build_model(args)
    check_same_vocabulary(teacher.config, teacher_tok, model.config, tok, where=f"--teacher {args.teacher}")
    objective = Distillation(teacher, args.alpha, args.temperature)
    m = run_training("distill", args, objective, data_kind="sft", model_and_tok=(model, tok),
                     extra={"teacher": str(teacher_dir), "alpha": args.alpha, "temperature": args.temperature})
    keys = [k for k in ("loss", "ce", "kl", "eval_loss") if k in m]
    print("done: " + ", ".join(f"{k} {m[k]:.4g}" for k in keys) + f"; checkpoint: {args.out}/checkpoint")


def add_distill_command(sub) -> None:
    from .run import add_train_args

    p = sub.add_parser("distill", help="white-box distillation: a student learns a teacher's token distributions")
    add_train_args(p, "sft")
    p.set_defaults(func=cmd_distill)
    g = p.add_argument_group("distillation")
    g.add_argument("--teacher", required=True, help="teacher checkpoint (same tokenizer as the student)")
    g.add_argument("--alpha", type=float, default=0.5, help="weight of the hard-label CE; 1-alpha on the KL")
    g.add_argument("--temperature", type=float, default=2.0, help="softening temperature T (default 2)")


def add_commands(sub) -> None:
    add_stage_commands(sub)
    add_lora_commands(sub)
    add_dpo_command(sub)
    add_distill_command(sub)
