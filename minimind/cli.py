"""`minimind <command>`: every stage from an empty directory to a served model.

Mistakes in input (flags, files, records) print one line `minimind: error: ...` and exit with
code 2; they never end in a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import UserError


# ----------------------------------------------------------------------------- commands

def cmd_info(args):
    from .config import get_preset
    from .checkpoint import check_checkpoint_dir
    from .config import ModelConfig

    if args.checkpoint:
        cfg = ModelConfig.load(check_checkpoint_dir(args.checkpoint) / "config.json")
    else:
        cfg = get_preset(args.preset)
    c = cfg.param_counts()
    rows = [("preset", cfg.name), ("layers", cfg.num_hidden_layers), ("hidden", cfg.hidden_size),
            ("heads / kv heads / head_dim", f"{cfg.num_attention_heads} / {cfg.num_key_value_heads} / {cfg.head_dim}"),
            ("intermediate", cfg.moe_intermediate_size if cfg.is_moe else cfg.intermediate_size),
            ("experts", f"{cfg.num_experts} routed (top-{cfg.num_experts_per_tok}), {cfg.num_shared_experts} shared"
             if cfg.is_moe else "dense"),
            ("total parameters", f"{c['total']:,} ({c['total'] / 1e6:.2f}M)"),
            ("active parameters / token", f"{c['active']:,} ({c['active'] / 1e6:.2f}M)"),
            ("embedding parameters", f"{c['embedding']:,} ({'tied' if cfg.tie_word_embeddings else 'untied'})"),
            (f"training FLOPs / token (seq {args.seq_len})", f"{cfg.flops_per_token(args.seq_len) / 1e6:.1f}M")]
    if args.json:
        print(json.dumps({**c, "flops_per_token": cfg.flops_per_token(args.seq_len), "config": cfg.to_dict()}))
        return
    w = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")


def cmd_tokenizer_train(args):
    from .tokenizer import train_tokenizer

    tok = train_tokenizer(args.data, args.out, vocab_size=args.vocab_size, max_docs=args.max_docs,
                          progress=not args.no_progress)
    print(f"tokenizer with {tok.vocab_size} tokens saved to {args.out}")


def cmd_data_synth(args):
    from .data.synth import synth_corpus

    files = synth_corpus(args.out, seed=args.seed, size=args.size, progress=not args.no_progress)
    for name, path in files.items():
        print(f"{name:<28} {path}")


def cmd_data_prepare(args):
    from .data.prepare import prepare

    info = prepare(args.input, args.tokenizer, args.out, kind=args.kind, max_seq_len=args.max_seq_len,
                   on_bad_record=args.on_bad_record, progress=not args.no_progress)
    state = "up to date" if info.up_to_date else "written"
    print(f"{info.out_dir}: {info.kind}, {info.n_records} records, {info.n_tokens} tokens, "
          f"{info.skipped} skipped ({state})")


def cmd_pretrain(args):
    from .train.pretrain import LanguageModeling
    from .train.run import run_training

    m = run_training("pretrain", args, LanguageModeling(), data_kind="pretrain")
    _print_final(m, args.out)


def cmd_sft(args):
    from .train.run import build_model, run_training
    from .train.sft import SupervisedFineTuning

    if not args.init and not args.tokenizer:
        raise UserError("sft: pass --init CHECKPOINT (a pretrained model) or --tokenizer DIR to start from scratch")
    from .runtime import seed_everything

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


def cmd_chat(args):
    from .infer.chat import chat_loop

    chat_loop(args)


def cmd_generate(args):
    from .infer.chat import generate_once

    generate_once(args)


def cmd_eval_tasks(args):
    from .eval.tasks import run_eval_tasks

    run_eval_tasks(args)


def cmd_plot(args):
    from .train.plot import plot_run

    out = plot_run(args.run_dir, args.out)
    print(f"wrote {out}")


def cmd_demo(args):
    from .demo import run_demo

    run_demo(args)


# ----------------------------------------------------------------------------- parser

# modules adding their own subcommands (serve, export/import, lora/dpo/distill)
COMMAND_MODULES = ["minimind.infer.server_cli", "minimind.export.cli", "minimind.train.commands"]

def add_sampling_args(p):
    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (1 = off)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    g.add_argument("--max-new-tokens", type=int, default=256)
    g.add_argument("--seed", type=int, default=None, help="sampling seed (same seed, same reply)")
    g.add_argument("--think", choices=["on", "off"], default="off",
                   help="open a <think> block before answering (adaptive thinking switch)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    g.add_argument("--dtype", default="auto", help="auto (bf16 where fast), bf16, fp32")
    add_quantize_arg(g)


def add_quantize_arg(g):
    g.add_argument("--quantize", default="none", choices=["none", "int8"],
                   help="int8: int8 weights for the linear layers, ~1.7x faster batch-1 decoding on CPU "
                        "(see bench/RESULTS.md)")


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS

    p = argparse.ArgumentParser(prog="minimind", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Start with `minimind demo`; `minimind COMMAND --help` for details.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("demo", help="the whole pipeline on the built-in corpus in minutes (start here)")
    s.add_argument("--out", default="runs/demo", help="working directory (default runs/demo)")
    s.add_argument("--preset", default="nano", help="model shape (default nano)")
    s.add_argument("--size", type=float, default=1.0, help="built-in corpus size multiplier")
    s.add_argument("--pretrain-steps", type=int, default=None, help="default: tuned for ~10 minutes on 2 cores")
    s.add_argument("--sft-steps", type=int, default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--quick", action="store_true", help="a tiny run to check the pipeline (about a minute)")
    s.add_argument("--long", action="store_true",
                   help="pretrain 6x longer, fine-tune at lr 2e-3 (~34 min on 2 cores); see README for what that buys")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("info", help="parameter counts and FLOPs of a preset or checkpoint")
    s.add_argument("--preset", default="minimind2-small", help=f"one of: {', '.join(PRESETS)}")
    s.add_argument("--checkpoint", help="describe this checkpoint instead of a preset")
    s.add_argument("--seq-len", type=int, default=512, help="sequence length for the FLOPs estimate")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)

    tk = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer").add_subparsers(
        dest="sub", metavar="SUBCOMMAND", required=True)
    s = tk.add_parser("train", help="train from JSONL files (text, conversations or DPO records)")
    s.add_argument("--data", nargs="+", required=True, help="JSONL file(s)")
    s.add_argument("--out", required=True, help="output directory (tokenizer.json, tokenizer_config.json)")
    s.add_argument("--vocab-size", type=int, default=6400)
    s.add_argument("--max-docs", type=int, default=None, help="use at most this many records")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_tokenizer_train)

    dt = sub.add_parser("data", help="built-in corpus and data preparation").add_subparsers(
        dest="sub", metavar="SUBCOMMAND", required=True)
    s = dt.add_parser("synth", help="write the built-in bilingual corpus (all stages + held-out eval)")
    s.add_argument("--out", default="data/builtin")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=float, default=1.0, help="size multiplier (1.0 ~ a few MB of text)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_data_synth)
    s = dt.add_parser("prepare", help="validate and tokenize a JSONL file once into memory-mapped token files")
    s.add_argument("input", help="JSONL file (pretrain text, conversations or DPO pairs)")
    s.add_argument("--tokenizer", required=True, help="tokenizer or checkpoint directory")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--kind", choices=["pretrain", "sft", "dpo"], help="default: detected from the first record")
    s.add_argument("--max-seq-len", type=int, default=None, help="cut conversations to this many tokens")
    s.add_argument("--on-bad-record", default="error", choices=["error", "skip"])
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_data_prepare)

    from .train.run import add_train_args

    s = sub.add_parser("pretrain", help="pretrain a model from scratch (or continue one) on text")
    add_train_args(s, "pretrain")
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("sft", help="supervised fine-tuning on conversations (loss on assistant tokens)")
    add_train_args(s, "sft")
    s.add_argument("--reasoning", action="store_true",
                   help="reasoning distillation: extra loss weight on <think>/</think> tags")
    s.add_argument("--think-weight", type=float, default=10.0, help="with --reasoning (default 10)")
    s.set_defaults(func=cmd_sft)

    s = sub.add_parser("chat", help="chat with a checkpoint in the terminal")
    s.add_argument("checkpoint", help="checkpoint directory (or a run directory)")
    s.add_argument("--system", default=None, help="system prompt")
    s.add_argument("--no-history", action="store_true", help="each message starts a new conversation")
    add_sampling_args(s)
    s.set_defaults(func=cmd_chat)

    s = sub.add_parser("generate", help="one reply (or raw continuation) for a prompt, printed as it streams")
    s.add_argument("checkpoint")
    s.add_argument("prompt")
    s.add_argument("--raw", action="store_true", help="continue the text as is (no chat template)")
    add_sampling_args(s)
    s.set_defaults(func=cmd_generate)

    ev = sub.add_parser("eval", help="evaluation").add_subparsers(dest="sub", metavar="SUBCOMMAND", required=True)
    s = ev.add_parser("tasks", help="exact-match accuracy per task family on a held-out split")
    s.add_argument("checkpoint")
    s.add_argument("--data", default="data/builtin/eval/heldout.jsonl", help="held-out JSONL")
    s.add_argument("--limit", type=int, default=None, help="at most this many records per family")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--think", choices=["on", "off"], default="off")
    s.add_argument("--max-new-tokens", type=int, default=96)
    s.add_argument("--device", default="auto")
    s.add_argument("--json", help="also write the results to this JSON file")
    add_quantize_arg(s)
    s.set_defaults(func=cmd_eval_tasks)

    # commands that live next to their code: each module has add_commands(subparsers)
    import importlib

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        module.add_commands(sub)

    s = sub.add_parser("plot", help="draw loss and lr curves of a run to a PNG")
    s.add_argument("run_dir")
    s.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    s.set_defaults(func=cmd_plot)
    return p


def _pin_malloc_threshold() -> None:
    """glibc raises its mmap threshold each time a large block is freed, after which tensors of
    changing shapes (DPO's length-bucketed batches, a server's requests) are carved from the heap
    and fragment it: resident memory grew ~60 MB per step of variable-shape batches. A fixed
    threshold returns big blocks to the OS, at a price: every large tensor is then a fresh mmap
    whose pages the kernel zeroes, which cost 26% of pretraining and ~50% of packed-SFT throughput
    (bench/RESULTS.md). So only commands whose shapes vary set `varying_shapes` and pin it;
    pretraining and packed SFT have fixed shapes and keep glibc's default.
    MINIMIND_MMAP_THRESHOLD=BYTES overrides the threshold (0: never pin)."""
    import ctypes

    threshold = int(os.environ.get("MINIMIND_MMAP_THRESHOLD", 1 << 17))
    if threshold <= 0:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "varying_shapes", False):
        _pin_malloc_threshold()
    try:
        args.func(args)
    except UserError as e:
        print(f"minimind: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
