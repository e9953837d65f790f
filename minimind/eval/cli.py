"""`minimind eval ...`: evaluation commands."""

from __future__ import annotations

import argparse

from ..cli import output_file, positive_int


def cmd_eval_tasks(args):
    from .tasks import run_eval_tasks

    run_eval_tasks(args)


def cmd_eval_ppl(args):
    from .ppl import run_eval_ppl

    run_eval_ppl(args)


def cmd_eval_mc(args):
    from .mc import run_eval_mc

    run_eval_mc(args)


def cmd_eval_length(args):
    from .length import run_eval_length

    run_eval_length(args)


def cmd_eval_copy(args):
    from .copy import run_eval_copy

    run_eval_copy(args)


def cmd_eval_report(args):
    from .report import run_eval_report

    run_eval_report(args)


def cmd_eval_lm_eval_task(args):
    from .lm_eval_task import run_lm_eval_task

    run_lm_eval_task(args)


def _scoring_args(s, batch_size: int, json: bool = True) -> None:
    """Flags every log-likelihood command shares."""
    s.add_argument("--batch-size", type=_positive, default=batch_size, help=f"rows per forward pass (default {batch_size})")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    s.add_argument("--dtype", default="auto", help="matmul precision: auto (bf16 where the hardware is fast "
                   "at it, else fp32), bf16, fp32; weights stay fp32")
    if json:
        s.add_argument("--json", type=output_file, help="also write the results to this JSON file")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")


_positive = positive_int


def _factor(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value!r}") from None
    if not f >= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number >= 1 (YaRN stretches positions), got {value}")
    return f


def _count(value: str) -> int:
    return _positive(value) if value.strip() != "0" else 0


def _lengths(value: str) -> list[int]:
    return [_positive(v.strip()) for v in value.split(",") if v.strip()]


def _range(value: str) -> list[int]:
    """"4-16" -> [4, 16]; "8" -> [8, 8]."""
    parts = value.split("-")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"expected N or MIN-MAX, got {value!r}")
    lo, hi = _positive(parts[0].strip()), _positive(parts[-1].strip())
    if lo > hi:
        raise argparse.ArgumentTypeError(f"expected MIN-MAX with MIN <= MAX, got {value!r}")
    return [lo, hi]


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_commands(sub) -> None:
    from ..cli import command_group
    from ..infer.quant import add_quantize_arg

    ev = command_group(sub, "eval", "evaluation")
    s = ev.add_parser("tasks", help="exact-match accuracy per task family on a held-out split")
    s.add_argument("checkpoint")
    s.add_argument("--data", default="data/builtin/eval/heldout.jsonl", help="held-out JSONL")
    s.add_argument("--limit", type=_positive, default=None, help="at most this many records per family")
    s.add_argument("--batch-size", type=_positive, default=32, help="questions generated together (default 32)")
    s.add_argument("--think", choices=["on", "off"], default="off")
    s.add_argument("--max-new-tokens", type=_positive, default=96, help="reply length cap (default 96)")
    s.add_argument("--device", default="auto")
    s.add_argument("--json", type=output_file, help="also write the results to this JSON file")
    add_quantize_arg(s)
    s.set_defaults(func=cmd_eval_tasks)

    from .tools import add_eval_tools_command

    add_eval_tools_command(ev, _positive)

    s = ev.add_parser("ppl", help="loss, perplexity and bits per byte over a text or conversation file",
                      description="Mean loss (nats/token), perplexity and bits per byte (comparable across "
                      "tokenizers). Text records ({\"text\"}) are scored whole, each after the end-of-text "
                      "token; conversations only on the assistant tokens.")
    s.add_argument("checkpoint", help="checkpoint or run directory")
    s.add_argument("--data", required=True, help="JSONL of {\"text\"} or {\"conversations\"} records")
    s.add_argument("--seq-len", type=_positive, default=None,
                   help="window length in tokens (default: the length the checkpoint was trained at, else 512)")
    s.add_argument("--stride", type=_positive, default=None,
                   help="targets per window (default --seq-len: disjoint windows); smaller gives every "
                   "token at least seq-len - stride tokens of context")
    s.add_argument("--limit", type=_positive, default=None, help="score only the first N documents")
    _scoring_args(s, 16)
    s.set_defaults(func=cmd_eval_ppl)

    s = ev.add_parser("mc", help="multiple-choice accuracy by log-likelihood (C-Eval, CMMLU, ARC, ... mcq.jsonl)",
                      description="Scores every choice by its log-likelihood after the question and reports "
                      "acc (raw) and acc_norm (divided by the choice's length), per subject and overall, "
                      "with the chance level; as lm-eval does. docs/evaluation.md shows the file layouts.")
    s.add_argument("checkpoint", help="checkpoint or run directory")
    s.add_argument("--data", required=True,
                   help="benchmark file or directory: a C-Eval / CMMLU directory or CSV, an ARC / OpenBookQA "
                   "/ PIQA / HellaSwag JSONL, or minimind's mcq.jsonl")
    s.add_argument("--format", default="auto",
                   choices=["auto", "ceval", "cmmlu", "arc", "openbookqa", "piqa", "hellaswag", "mcq"],
                   help="file layout (default: detected from the header or first record)")
    s.add_argument("--style", default="auto", choices=["auto", "cloze", "letters"],
                   help="cloze: score each answer's text; letters: list the options, score A/B/C/D "
                   "(default: letters for C-Eval/CMMLU, cloze otherwise, as lm-eval)")
    s.add_argument("--split", default=None, help="split folder of a C-Eval/CMMLU directory "
                   "(default: val for C-Eval, test for CMMLU)")
    s.add_argument("--shots", type=_count, default=0, help="few-shot examples before each question (default 0)")
    s.add_argument("--dev", default=None, help="few-shot pool: a file in the same format (or C-Eval/CMMLU dev "
                   "folder); default: DIR/dev of a C-Eval/CMMLU download")
    s.add_argument("--chat", action="store_true", help="put each prompt in the chat template as a user turn "
                   "and score the choices as the assistant's reply (for SFT models; lm-eval's "
                   "--apply_chat_template)")
    s.add_argument("--labels", default=None, help="PIQA labels file (default: FILE-labels.lst beside FILE)")
    s.add_argument("--subjects", default=None, help="comma-separated subjects to evaluate (default: all)")
    s.add_argument("--limit", type=_positive, default=None, help="at most N questions per subject")
    _scoring_args(s, 32)
    s.set_defaults(func=cmd_eval_mc)

    s = ev.add_parser("length", help="perplexity against context length, YaRN off and on (JSON + PNG)",
                      description="Lays the documents of a text file end to end and scores the same tokens in "
                      "windows of each length three times: plain RoPE, YaRN with one factor for all lengths "
                      "(as rope_scaling in config.json), and dynamic YaRN (factor = length / original length); "
                      "no fine-tuning. Shows how far past its training length a model holds up.")
    s.add_argument("checkpoint", help="checkpoint or run directory")
    s.add_argument("--data", required=True, help="JSONL of {\"text\"} records (held-out text)")
    s.add_argument("--lengths", type=_lengths, default=None,
                   help="comma-separated window lengths (default: 256 doubling up to 8x the training length)")
    s.add_argument("--train-length", type=_positive, default=None,
                   help="the length the model was trained at (default: read from the checkpoint)")
    s.add_argument("--yarn-factor", type=_factor, default=None,
                   help="YaRN scale factor s (default: longest length / original length)")
    s.add_argument("--original-length", type=_positive, default=None,
                   help="YaRN original_max_position_embeddings (default: the training length)")
    s.add_argument("--tokens", type=_positive, default=16384,
                   help="tokens of text scored at every length (default 16384)")
    s.add_argument("--out", default="length_eval", help="directory for length.json and length.png")
    s.add_argument("--no-plot", action="store_true", help="write only the JSON")
    _scoring_args(s, 8, json=False)
    s.set_defaults(func=cmd_eval_length)

    s = ev.add_parser("copy", help="in-context copying: can the model repeat a list it has just read?",
                      description="Random lists of single-token words from the model's own vocabulary, each "
                      "written twice after a few filler words; scores the second copy (predictable only by "
                      "copying from the context: induction) against the first (the same words unseen). Near "
                      "0%% means the model cannot quote its context: subjects or operands it has not "
                      "memorised, tool-call arguments, tool results. No data needed.")
    s.add_argument("checkpoint", help="checkpoint or run directory")
    s.add_argument("--probes", type=_positive, default=200, help="number of lists (default 200)")
    s.add_argument("--lengths", type=_range, default=[4, 16], help="words per list, MIN-MAX (default 4-16)")
    s.add_argument("--max-filler", type=int, default=16,
                   help="up to this many random words before the list, so the copy distance varies (default 16)")
    s.add_argument("--seed", type=int, default=0, help="draws the lists (default 0)")
    _scoring_args(s, 32)
    s.set_defaults(func=cmd_eval_copy)

    s = ev.add_parser("lm-eval-task", help="write an lm-eval task YAML over a minimind mcq.jsonl",
                      description="Writes NAME.yaml for EleutherAI's lm-evaluation-harness: the same prompts "
                      "and scoring as `minimind eval mc`, so `lm_eval --model hf --model_args "
                      "pretrained=EXPORT --include_path OUT --tasks NAME` can be compared with it.")
    s.add_argument("--data", default="data/builtin/eval/heldout_mcq.jsonl", help="mcq JSONL file")
    s.add_argument("--out", default="lm_eval_tasks", help="directory for the YAML (default lm_eval_tasks)")
    s.add_argument("--name", default="minimind_mcq", help="task name (default minimind_mcq)")
    s.set_defaults(func=cmd_eval_lm_eval_task)

    s = ev.add_parser("report", help="one markdown page (+ PNGs) with every evaluation of a run",
                      description="Gathers loss curves, perplexity and bits per byte on held-out text, "
                      "multiple-choice accuracy against chance, the RoPE/YaRN length curve, held-out task "
                      "accuracy and sample chats into OUT/report.md (+ report.json, loss.png, length.png).")
    s.add_argument("path", help="a checkpoint, a run directory, or a directory of runs (e.g. runs/demo)")
    s.add_argument("--data-dir", default=None, help="corpus directory holding eval/heldout*.jsonl (default: "
                   "PATH/data, beside PATH, or data/builtin)")
    s.add_argument("--out", default=None, help="output directory (default PATH/report)")
    s.add_argument("--skip", type=_names, default=None,
                   help="comma-separated sections to leave out: curves, ppl, mc, length, copy, tasks")
    s.add_argument("--limit", type=_positive, default=None, help="held-out task records per family (default all)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    s.add_argument("--dtype", default="auto", help="scoring precision: auto, bf16, fp32")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_eval_report)
