"""Training commands: `minimind pretrain | sft | lora | lora merge | dpo | distill`.

Each one turns its arguments into a RunConfig (run.run_config), builds its models and objective
and hands them to the one training engine through `run_training`; the objectives live in
pretrain.py, sft.py, dpo.py, distill.py and lora.py (layers).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


# ----------------------------------------------------------------------------- pretrain, sft

def cmd_pretrain(args):
    from .pretrain import LanguageModeling
    from .run import run_config, run_training

    m = run_training(run_config(args, "pretrain"), LanguageModeling(), data_kind="pretrain")
    _print_final(m, args.out)


def cmd_sft(args):
    from ..runtime import seed_everything
    from .run import build_model, run_config, run_training
    from .sft import SupervisedFineTuning

    if not args.init and not args.tokenizer:
        raise UserError("sft: pass --init CHECKPOINT (a pretrained model) or --tokenizer DIR to start from scratch")
    cfg = run_config(args, "sft", extra={"reasoning": args.reasoning, "think_weight": args.think_weight})
    seed_everything(args.seed)
    model, tok = build_model(cfg)
    weighted = [tok.think_id, tok.end_think_id] if args.reasoning else []
    obj = SupervisedFineTuning(weighted, args.think_weight if args.reasoning else 1.0)
    m = run_training(cfg, obj, data_kind="sft", model_and_tok=(model, tok))
    _print_final(m, args.out)


def _print_final(m: dict, out: str, keys=("loss", "eval_loss", "tokens_per_s", "elapsed_s"), tail: str = ""):
    from ..checkpoint import resolve_checkpoint

    shown = [k for k in keys if isinstance(m.get(k), (int, float))]
    skipped = f", {m['skipped_steps']} non-finite steps skipped" if m.get("skipped_steps") else ""
    if m.get("budget_s"):
        skipped += f", {m['spent_s']:.1f} s of the {m['budget_s']:g} s budget"
    print("done: " + ", ".join(f"{k} {m[k]:.4g}" for k in shown) + skipped + tail
          + f"; checkpoint: {resolve_checkpoint(out)}")


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
    from ..lora import LoRAConfig, adapter_size, inject_lora, save_adapter, set_base
    from ..runtime import Dist, seed_everything
    from .run import build_model, run_config, run_training
    from .sft import SupervisedFineTuning

    if not args.data or not args.out:
        raise UserError("lora: pass --data FILE and --out RUN (or `minimind lora merge BASE ADAPTER OUT`)")
    if not args.init:
        raise UserError("lora: pass --init CHECKPOINT, the base model the adapter is trained on")
    lcfg = LoRAConfig(args.rank, args.alpha, args.lora_dropout, args.lora_targets).validate()
    cfg = run_config(args, "lora", extra={"lora": vars(lcfg)})
    base = check_checkpoint_dir(args.init)
    seed_everything(args.seed)  # the same A initialisation every run
    model, tok = build_model(cfg)
    inject_lora(model, lcfg.rank, lcfg.alpha, lcfg.dropout, lcfg.targets)
    set_base(model, base)  # checkpoints hold the adapter only, naming this base
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if not args.no_progress:
        print(f"lora: rank {lcfg.rank}, alpha {lcfg.alpha:g}: {trained:,} trainable of {total:,} parameters "
              f"({trained / total:.2%})")
    m = run_training(cfg, SupervisedFineTuning(), data_kind="sft", model_and_tok=(model, tok))
    if not Dist.from_env().is_main:
        return  # only rank 0 writes
    adapter = save_adapter(Path(args.out) / "adapter", model, lcfg)
    share = adapter_size(adapter) / sum(p.numel() * p.element_size() for p in model.parameters())
    _print_final(m, args.out, keys=("loss", "eval_loss"),
                 tail=f"; adapter: {adapter} ({adapter_size(adapter) / 1024:.0f} KB, {share:.1%} of the weights)")
    print(f"chat, serve, eval and export load the run directly (base + adapter, merged); or merge into a "
          f"plain checkpoint: minimind lora merge {args.init} {adapter} OUT")


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
    from .run import build_model, prepared_data, run_config, run_training

    if not args.init:
        raise UserError("dpo: pass --init CHECKPOINT (an SFT model: it is both the start and the reference)")
    if args.beta <= 0:
        raise UserError(f"--beta must be positive, got {args.beta}")
    cfg = run_config(args, "dpo", extra={"beta": args.beta, "sft_weight": args.sft_weight, "ref_mode": args.ref_mode})
    seed_everything(args.seed)
    model, tok = build_model(cfg)
    objective = DirectPreferenceOptimization(copy.deepcopy(model), args.beta, args.sft_weight, args.ref_mode)
    held_out = None
    if args.eval_data and not Dist.from_env().enabled:  # one process: measure before/after
        data = prepared_data(args.eval_data, tok, "dpo", args.max_seq_len, args.on_bad_record, args.cache_dir,
                             progress=not args.no_progress)
        held_out = DPOLoader(data, args.batch_size, args.max_seq_len, seed=0)
        before = preference_accuracy(model.to(pick_device(args.device)), held_out)
        print(f"held-out preference accuracy before: {before['accuracy']:.1%} ({before['pairs']} pairs)")
    m = run_training(cfg, objective, data_kind="dpo", model_and_tok=(model, tok))
    tail = ""
    if held_out is not None:
        after = preference_accuracy(model, held_out)
        tail = f"; held-out preference accuracy {before['accuracy']:.1%} -> {after['accuracy']:.1%}"
    _print_final(m, args.out, keys=("loss", "reward_acc", "reward_margin", "eval_loss", "elapsed_s"), tail=tail)


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
    from .run import build_model, run_config, run_training

    teacher_dir = check_checkpoint_dir(args.teacher)
    device = pick_device(args.device)
    # the teacher only runs forward: bf16 weights where the hardware is fast at it (never fp16 on CPU)
    teacher, teacher_tok = load_checkpoint(teacher_dir, device="cpu", dtype=pick_dtype(args.dtype, device))
    cfg = run_config(args, "distill", extra={"teacher": str(teacher_dir), "alpha": args.alpha,
                                             "temperature": args.temperature})
    if not cfg.init and not cfg.tokenizer:
        cfg.tokenizer = str(teacher_dir)  # a fresh student shares the teacher's tokenizer
    seed_everything(args.seed)
    model, tok = build_model(cfg)
    check_same_vocabulary(teacher.config, teacher_tok, model.config, tok, where=f"--teacher {args.teacher}")
    objective = Distillation(teacher, args.alpha, args.temperature)
    m = run_training(cfg, objective, data_kind="sft", model_and_tok=(model, tok))
    _print_final(m, args.out, keys=("loss", "ce", "kl", "eval_loss"))


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
