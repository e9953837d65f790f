"""`minimind eval ...`: evaluation commands."""

from __future__ import annotations


def cmd_eval_tasks(args):
    from .tasks import run_eval_tasks

    run_eval_tasks(args)


def add_commands(sub) -> None:
    from ..cli import command_group
    from ..infer.quant import add_quantize_arg

    ev = command_group(sub, "eval", "evaluation")
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
