"""`minimind demo`: the whole pipeline on the built-in corpus, start to finish.

    synth corpus -> BPE tokenizer -> pretrain -> SFT -> held-out eval -> sample chats

Each stage is the same command a user would run by hand (printed as it starts), so the demo
doubles as a walkthrough. With the default `nano` preset it takes about eight minutes on two CPU
cores; `--quick` runs a tiny version in about a minute to check that everything works, and
`--long` (about 34 minutes) pretrains six times longer and fine-tunes at a higher learning rate,
after which the model answers most held-out addition questions and over half of the fact questions
(the 10-minute model does not yet).
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from .errors import UserError

# steps and batch sizes tuned so the default demo fits in ~10 minutes on 2 CPU cores
# Sized from timed runs on 2 cores (~1.75 s per pretraining step of 32 x 256 tokens, ~0.9 s per packed
# SFT step of 16 x 320): 200 + 150 steps took 7.7 minutes end to end (bench/RESULTS.md).
FULL = dict(size=1.0, pretrain_steps=200, pretrain_bs=32, pretrain_seq=256, pretrain_lr=3e-3,
            sft_steps=150, sft_bs=16, sft_seq=320, sft_lr=5e-4, eval_limit=None)
# About 34 minutes on 2 cores. SFT at a 4x larger lr than FULL: measured on this pretrained model,
# held-out accuracy fact 56% / add 97.5% / identity 72% at 2e-3 against 54% / 3.3% / 83% at 5e-4
# (bench/RESULTS.md); on the 10-minute pretrained model 2e-3 did not help (fact 10% vs 13%).
LONG = dict(size=1.0, pretrain_steps=1200, pretrain_bs=32, pretrain_seq=256, pretrain_lr=3e-3,
            sft_steps=300, sft_bs=16, sft_seq=320, sft_lr=2e-3, eval_limit=None)
QUICK = dict(size=0.05, pretrain_steps=30, pretrain_bs=8, pretrain_seq=128, pretrain_lr=3e-3,
             sft_steps=20, sft_bs=8, sft_seq=256, sft_lr=5e-4, eval_limit=8)

SAMPLE_PROMPTS = [
    [{"role": "user", "content": "Who are you?"}],
    [{"role": "user", "content": "What is the capital of Japan?"}],
    [{"role": "user", "content": "法国的首都是哪里？"}],
    [{"role": "user", "content": "What is 27 + 58?"}],
]


def _run(argv: list[str]) -> None:
    from .cli import build_parser

    print(f"\n$ minimind {shlex.join(argv)}", flush=True)
    args = build_parser().parse_args(argv)
    args.func(args)


def run_demo(args) -> dict:
    plan = dict(QUICK if args.quick else LONG if args.long else FULL)
    if args.size != 1.0:
        plan["size"] = args.size
    if args.pretrain_steps:
        plan["pretrain_steps"] = args.pretrain_steps
    if args.sft_steps:
        plan["sft_steps"] = args.sft_steps
    out = Path(args.out)
    data, tok_dir = out / "data", out / "tokenizer"
    np = ["--no-progress"] if args.no_progress else []
    times = {}

    def stage(name, fn):
        t = time.perf_counter()
        fn()
        times[name] = time.perf_counter() - t
        print(f"[{name}: {times[name]:.0f} s]", flush=True)

    stage("corpus", lambda: _run(["data", "synth", "--out", str(data), "--seed", str(args.seed),
                                  "--size", str(plan["size"])] + np))
    stage("tokenizer", lambda: _run(["tokenizer", "train", "--data", str(data / "pretrain.jsonl"),
                                     str(data / "sft.jsonl"), "--out", str(tok_dir)] + np))
    common = ["--device", args.device] + np
    stage("pretrain", lambda: _run([
        "pretrain", "--data", str(data / "pretrain.jsonl"), "--eval-data", str(data / "eval/heldout_pretrain.jsonl"),
        "--tokenizer", str(tok_dir), "--preset", args.preset, "--out", str(out / "pretrain"),
        "--steps", str(plan["pretrain_steps"]), "--batch-size", str(plan["pretrain_bs"]),
        "--max-seq-len", str(plan["pretrain_seq"]), "--lr", str(plan["pretrain_lr"]),
        "--log-every", str(max(1, plan["pretrain_steps"] // 20)),
        "--seed", str(args.seed)] + common))
    stage("sft", lambda: _run([
        "sft", "--data", str(data / "sft.jsonl"), "--init", str(out / "pretrain"), "--out", str(out / "sft"),
        "--steps", str(plan["sft_steps"]), "--batch-size", str(plan["sft_bs"]),
        "--max-seq-len", str(plan["sft_seq"]), "--lr", str(plan["sft_lr"]),
        "--log-every", str(max(1, plan["sft_steps"] // 20)),
        "--seed", str(args.seed)] + common))
    results = {}
    stage("eval", lambda: results.update(_evaluate(out, data, plan, args)))
    stage("samples", lambda: _samples(out, args))
    total = sum(times.values())
    print("\nstage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()) + f"; total {total / 60:.1f} min")
    summary = {"times_s": times, "total_s": total, "accuracy": {k: v["accuracy"] for k, v in results.items()}}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"""
What next:
  minimind chat {out}/sft                      # talk to it (/think on, /reset, /exit)
  minimind eval tasks {out}/sft --data {data}/eval/heldout.jsonl
  minimind plot {out}/pretrain                 # loss and lr curves -> {out}/pretrain/curves.png
  minimind pretrain --help                     # train on your own data (see README)""")
    return summary


def _evaluate(out: Path, data: Path, plan: dict, args) -> dict:
    from .eval.tasks import evaluate_tasks, format_table, load_heldout
    from .infer.generate import load_for_inference

    print("\n$ minimind eval tasks " + f"{out}/sft --data {data}/eval/heldout.jsonl", flush=True)
    model, tok = load_for_inference(out / "sft", args.device)
    records = load_heldout(data / "eval" / "heldout.jsonl", plan["eval_limit"])
    res = evaluate_tasks(model, tok, records, progress=not args.no_progress)
    print(format_table(res))
    (out / "eval_heldout.json").write_text(json.dumps(res, ensure_ascii=False, indent=2))
    return res["families"]


def _samples(out: Path, args) -> None:
    from .infer.generate import SamplingParams, load_engine, think_suppression
    from .infer.parse import parse_assistant
    from .tokenizer import render_chat

    engine = load_engine(out / "sft", args.device, compile="off")
    tok = engine.tok
    prompts = [render_chat(tok, m, add_generation_prompt=True)[0] for m in SAMPLE_PROMPTS]
    outs = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=64,
                                                   suppress_ids=think_suppression(tok, False)))
    print("\nsample chats (greedy):")
    for m, o in zip(SAMPLE_PROMPTS, outs):
        print(f"  you> {m[-1]['content']}\n  minimind> {parse_assistant(o.text)['content'].strip()}")
    if not outs:
        raise UserError("no samples generated")


def add_commands(sub) -> None:
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
    s.set_defaults(func=run_demo)
