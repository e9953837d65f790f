"""`minimind demo`: the whole pipeline on the built-in corpus, start to finish, in a time budget.

    synth corpus -> BPE tokenizer -> pretrain -> SFT -> held-out eval -> sample chats

Each stage is the same command a user would run by hand (printed as it starts), so the demo
doubles as a walkthrough. It ends with a table of what the model learned: held-out accuracy per
question family next to the numbers the README states for the same class of machine.

The budget. `--minutes N` (default 10) is the time end to end. The corpus and the tokenizer run
first and their time is measured; `stage_budget` then gives each training stage its share
(SHARES) of what is left after a reserve for the evaluation and the sample chats, and is asked
again before SFT, so SFT absorbs whatever pretraining gained or lost. Each stage runs with
`--time-budget` (the engine counts its data preparation, steps, final evaluation and save, and
plans its steps and lr schedule to end on time), so the demo fits the budget on a slow machine and
trains more on a fast one.

The recipe (RECIPE) is what 10 minutes of such a CPU can teach, chosen by the experiments in
bench/RESULTS.md ("A demo that learns in 10 minutes"): corpus size and mix, preset, batch, learning
rates and optimizer. The model grows with the budget (plan_for): the 10-minute demo trains `pico`
(0.9M parameters with the demo's tokenizer), which takes ~2.4x the steps of `nano` (4.0M) in the
same time and learns more from them; `--long` (30 minutes and more) trains `nano` with its own
pretraining flags (LONG). `--quick` runs a
tiny version in about a minute to check that everything works.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from .config import PRESETS
from .errors import UserError

MINUTES = 10.0  # default end-to-end budget
# The training stages share the time left after the corpus and the tokenizer (measured as they run)
# and the reserve for what follows training, in these proportions. Data preparation is part of
# each training command and counted in its --time-budget. SFT gets 45%: the copy of a sum's operands
# into its columns forms during SFT, and with 28% of the time it did not form in every seed
# (bench/RESULTS.md, "2026-12-02: the sum read off the columns").
SHARES = {"pretrain": 0.55, "sft": 0.45}
# held-out evaluation and sample chats, which run after training: ~25 s measured on the slow class
# (fp32 token budget) and under 10 s in bf16 here, plus start-up; reserved before training starts
AFTER_TRAINING_S = 40.0
MIN_STAGE_S = 10.0  # a stage gets at least this (a budget too small for it still finishes, late)

# The 10-minute recipe (bench/RESULTS.md, "A demo that learns in 10 minutes"): the "demo" corpus mix,
# Muon pretraining (lower loss per token than AdamW at this size) with a WSD schedule, small batches
# (more steps in the same tokens), SFT at the pretraining's AdamW lr (2e-3: the copy of a sum's
# operands into its columns formed in seeds where 1e-3 left it half-formed, "2026-12-02: the sum
# read off the columns"). On `pico`, 16 x 128 rows
# (attention over 128 positions: ~10% more tokens a second than 8 x 256) and two thirds of nano's
# pretraining lr ("2026-12-01: pico's pretraining and its name").
_MUON_WSD = ["--optimizer", "muon", "--schedule", "wsd", "--decay-frac", "0.3", "--warmup", "20"]
RECIPE = dict(preset="pico", size=0.5, mix="demo", eval_limit=None, log_every=10,
              pretrain=["--batch-size", "16", "--max-seq-len", "128", "--lr", "2e-3", "--muon-lr", "0.012"] + _MUON_WSD,
              sft=["--batch-size", "8", "--max-seq-len", "320", "--lr", "2e-3", "--schedule", "cosine",
                   "--warmup", "10"])
# from LONG_MINUTES on (`--long`): the larger `nano`, with the pretraining flags its README row was
# measured with
LONG_MINUTES = 30.0
LONG = dict(RECIPE, preset="nano",
            pretrain=["--batch-size", "8", "--max-seq-len", "256", "--lr", "3e-3", "--muon-lr", "0.02"] + _MUON_WSD)
# a pipeline check, not a model: fixed steps (no budget), a tiny corpus, 8 held-out questions per family
QUICK = dict(preset="pico", size=0.05, mix="demo", eval_limit=8, log_every=1, steps={"pretrain": 30, "sft": 20},
             pretrain=["--batch-size", "8", "--max-seq-len", "128", "--lr", "3e-3", "--warmup", "5"],
             sft=["--batch-size", "8", "--max-seq-len", "256", "--lr", "1e-3", "--warmup", "5"])

# held-out accuracy of the default demo as the README states it, per machine class (dtype trained in)
README_RESULTS = {  # the default 10-minute demo, per machine class (the README's table states the same)
    "fp32": {"label": "2-core AVX2 CPU, fp32", "fact": 0.73, "add": 0.9, "identity": 0.93, "tool": 0.02},
    "bf16": {"label": "2-core bf16 CPU", "fact": 0.74, "add": 1.0, "identity": 0.98, "tool": 0.02},
}
README_RESULTS_LONG = {  # `demo --long` (30 minutes)
    "fp32": {"label": "2-core AVX2 CPU, fp32, --long", "fact": 0.72, "add": 1.0, "identity": 0.93, "tool": 0.02},
    "bf16": {"label": "2-core bf16 CPU, --long", "fact": 0.73, "add": 1.0, "identity": 1.0, "tool": 0.05},
}

SAMPLE_PROMPTS = [
    [{"role": "user", "content": "Who are you?"}],
    [{"role": "user", "content": "What is the capital of Japan?"}],
    [{"role": "user", "content": "法国的首都是哪里？"}],
    [{"role": "user", "content": "What is 27 + 58?"}],
]


LONG_PRESET = LONG["preset"]


def plan_for(minutes: float, quick: bool = False) -> dict:
    """The recipe for a budget: RECIPE (`pico`) below LONG_MINUTES, LONG (`nano`) from there
    (bench/RESULTS.md, "a smaller model in the same 10 minutes"; the --long row of the README was
    measured on nano); QUICK for --quick."""
    if quick:
        return QUICK
    return RECIPE if minutes < LONG_MINUTES else LONG


def preset_for(minutes: float, quick: bool = False) -> str:
    """The model the budget trains: the model grows with the budget."""
    return plan_for(minutes, quick)["preset"]


def stage_budget(stage: str, total_s: float, spent_s: float, reserve_s: float = AFTER_TRAINING_S) -> float:
    """Seconds of training for `stage`: what is left of `total_s` after `spent_s` and the reserve
    for evaluation and samples, shared by this stage and the training stages after it in
    proportion to SHARES. Asked again before each stage, so a stage that ends early or late moves
    the next one's budget (the one place that decides every stage's time)."""
    stages = list(SHARES)
    later = stages[stages.index(stage):]
    left = total_s - spent_s - reserve_s
    return max(MIN_STAGE_S, left * SHARES[stage] / sum(SHARES[s] for s in later))


def _run(argv: list[str]) -> None:
    from .cli import build_parser

    print(f"\n$ minimind {shlex.join(argv)}", flush=True)
    args = build_parser().parse_args(argv)
    args.func(args)


def _stage_flags(stage: str, plan: dict, args, spent_s: float) -> list[str]:
    """--time-budget (or --quick's fixed steps), an optional --steps cap, and the recipe's flags."""
    if args.quick:
        steps = ["--steps", str(plan["steps"][stage])]
    else:
        seconds = stage_budget(stage, 60.0 * args.minutes, spent_s)
        steps = ["--time-budget", f"{seconds:.0f}"]
    cap = getattr(args, f"{stage}_steps")
    if cap:
        steps += ["--steps", str(cap)]
    return steps + plan[stage]


def run_demo(args) -> dict:
    plan = dict(plan_for(args.minutes, args.quick))
    size = args.size if args.size is not None else plan["size"]
    if not args.quick and not args.minutes > 0:
        raise UserError(f"demo: --minutes must be positive, got {args.minutes:g}")
    out = Path(args.out)
    data, tok_dir = out / "data", out / "tokenizer"
    np = ["--no-progress"] if args.no_progress else []
    times = {}
    start = time.perf_counter()

    def spent() -> float:
        return time.perf_counter() - start

    def stage(name, fn):
        t = time.perf_counter()
        fn()
        times[name] = time.perf_counter() - t
        print(f"[{name}: {times[name]:.0f} s]", flush=True)

    stage("corpus", lambda: _run(["data", "synth", "--out", str(data), "--seed", str(args.seed),
                                  "--size", str(size), "--mix", plan["mix"]] + np))
    stage("tokenizer", lambda: _run(["tokenizer", "train", "--data", str(data / "pretrain.jsonl"),
                                     str(data / "sft.jsonl"), "--out", str(tok_dir)] + np))
    common = ["--device", args.device, "--dtype", args.dtype, "--seed", str(args.seed)] + np
    stage("pretrain", lambda: _run([
        "pretrain", "--data", str(data / "pretrain.jsonl"), "--eval-data", str(data / "eval/heldout_pretrain.jsonl"),
        "--tokenizer", str(tok_dir), "--preset", args.preset or plan["preset"], "--out", str(out / "pretrain"),
        "--eval-batches", "4", "--log-every", str(plan["log_every"])] + _stage_flags("pretrain", plan, args, spent()) + common))
    stage("sft", lambda: _run([
        "sft", "--data", str(data / "sft.jsonl"), "--init", str(out / "pretrain"), "--out", str(out / "sft"),
        "--log-every", str(plan["log_every"])] + _stage_flags("sft", plan, args, spent()) + common))
    results = {}
    stage("eval", lambda: results.update(_evaluate(out, data, plan, args)))
    stage("samples", lambda: _samples(out, args))
    total = spent()
    print("\nstage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()) + f"; total {total / 60:.1f} min")
    accuracy = {k: v["accuracy"] for k, v in results.items()}
    cls = machine_class(args)
    print("\n" + learned_table(accuracy, cls, quick=args.quick, minutes=args.minutes))
    summary = {"times_s": times, "total_s": total, "accuracy": accuracy, "machine_class": cls,
               "minutes": None if args.quick else args.minutes}
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"""
What next:
  minimind chat {out}/sft                      # talk to it (/think on, /reset, /exit)
  minimind eval tasks {out}/sft --data {data}/eval/heldout.jsonl
  minimind data show {data}/sft.jsonl --line 1 --tokenizer {tok_dir}   # what SFT trains on
  minimind plot {out}/pretrain                 # loss and lr curves -> {out}/pretrain/curves.png
  minimind pretrain --help                     # train on your own data (see README)""")
    return summary


def machine_class(args) -> str:
    """"bf16" or "fp32" (the dtype training ran in on a CPU), or the device type elsewhere."""
    from .runtime import pick_device, pick_dtype

    device = pick_device(args.device)
    if device.type != "cpu":
        return device.type
    return "bf16" if str(pick_dtype(args.dtype, device)) == "torch.bfloat16" else "fp32"


def learned_table(accuracy: dict, cls: str, quick: bool = False, minutes: float = MINUTES) -> str:
    """Held-out accuracy per family next to what the README states for this machine class and budget
    (the 10-minute numbers, or the --long ones for a 30-minute run)."""
    long = minutes >= 30
    ref = (README_RESULTS_LONG if long else README_RESULTS).get(cls)
    head = f"{ref['label']} (README)" if ref and not quick else "README"
    lines = ["What the model learned - held-out questions it never saw in training:",
             f"  {'family':<10} {'this run':>9}   {head}"]
    for fam, acc in sorted(accuracy.items()):
        want = ref.get(fam) if ref and not quick else None
        lines.append(f"  {fam:<10} {acc:>9.1%}   " + (f"{want:.0%}" if want is not None else "-"))
    if quick:
        lines.append("  (--quick checks the pipeline; its model is too small and brief to answer)")
    elif not ref:
        lines.append(f"  (no README numbers for a {'--long run on a ' if long else ''}{cls} machine yet)")
    elif minutes not in (MINUTES, 30):
        lines.append(f"  (the README's numbers are for a {30 if long else MINUTES:g}-minute run; "
                     f"this one had {minutes:g})")
    return "\n".join(lines)


def _evaluate(out: Path, data: Path, plan: dict, args) -> dict:
    from .eval.tasks import evaluate_tasks, format_table, load_heldout
    from .infer.generate import load_for_inference

    print("\n$ minimind eval tasks " + f"{out}/sft --data {data}/eval/heldout.jsonl", flush=True)
    model, tok = load_for_inference(out / "sft", args.device, dtype=args.dtype)  # --dtype fp32: the slow class
    records = load_heldout(data / "eval" / "heldout.jsonl", plan.get("eval_limit"))
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
    s = sub.add_parser("demo", help="the whole pipeline on the built-in corpus in 10 minutes (start here)",
                       description="Corpus, tokenizer, pretraining, SFT, held-out evaluation and sample chats, "
                                   "each printed as the command a user would run, in --minutes end to end: each "
                                   "training stage runs with --time-budget, its share of the time the corpus, the "
                                   "tokenizer and the evaluation leave. Ends with a table of held-out accuracy "
                                   "next to the README's numbers for the same class of machine.")
    s.add_argument("--out", default="runs/demo", help="working directory (default runs/demo)")
    s.add_argument("--minutes", type=float, default=MINUTES,
                   help=f"time budget end to end (default {MINUTES:g}); pretraining and SFT share what the corpus, "
                        f"tokenizer and a {AFTER_TRAINING_S:.0f} s reserve for evaluation leave, "
                        f"{SHARES['pretrain']:.0%} / {SHARES['sft']:.0%}".replace("%", "%%"))
    s.add_argument("--preset", default=None, choices=list(PRESETS), metavar="PRESET", help=f"model shape (default {RECIPE['preset']}, or {LONG_PRESET} from "
                        f"--minutes {LONG_MINUTES:g}: the model grows with the budget; any of "
                        f"{', '.join(PRESETS)})")
    s.add_argument("--size", type=float, default=None, help=f"built-in corpus size multiplier (default {RECIPE['size']:g})")
    s.add_argument("--pretrain-steps", type=int, default=None, help="at most this many pretraining steps (the budget may stop it sooner)")
    s.add_argument("--sft-steps", type=int, default=None, help="at most this many SFT steps (the budget may stop it sooner)")
    s.add_argument("--seed", type=int, default=0, help="corpus, initialisation and data order (default 0)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    s.add_argument("--dtype", default="auto", help="auto (bf16 where the CPU/GPU is fast at it, else fp32), fp32, bf16")
    s.add_argument("--quick", action="store_true",
                   help="a tiny run with fixed steps to check the pipeline (about a minute; ignores --minutes)")
    s.add_argument("--long", action="store_const", const=30.0, dest="minutes",
                   help="a 30-minute budget, which trains the larger nano model (same as --minutes 30)")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=run_demo)
