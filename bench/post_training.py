"""Post-training experiments on the built-in corpus: LoRA identity, DPO, distillation, reasoning.

    python bench/post_training.py RUN [--work DIR] [--only lora,dpo,distill,reason]

RUN is a `minimind demo` output directory (RUN/data, RUN/pretrain, RUN/sft); `minimind demo --long`
gives a base model good enough for the numbers to mean something. Every training step runs the real
CLI command (printed); the evaluations run in-process on held-out files no training file contains:

    lora     `minimind lora` on lora_identity.jsonl (the new identity "Lumen" mixed with ordinary QA)
             -> identity accuracy on eval/heldout_lora_identity.jsonl, task accuracy on
             eval/heldout.jsonl (fact, add, tool: the identity family asks for the old name) before
             and after, adapter size as a share of the base weights
    dpo      `minimind dpo` on dpo.jsonl -> preference accuracy on eval/heldout_dpo.jsonl before and
             after (the policy gives the chosen answer the higher log-prob), task accuracy before/after
    distill  the same student (RUN/pretrain), data and steps: `minimind sft` vs `minimind distill`
             with RUN/sft as the teacher; held-out CE on the last 500 SFT conversations, which
             neither student trains on (both curves)
    reason   `minimind sft --reasoning` on reason.jsonl from RUN/sft -> held-out answers with
             thinking on and off: share well-formed, think text present, accuracy per family

Writes bench/post_training.json and prints one table per experiment.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.peak import machine, print_table, write_json  # noqa: E402


def cli(*argv) -> float:
    """Run `minimind ARGV` as a user would; -> wall seconds."""
    cmd = [sys.executable, "-m", "minimind.cli", *map(str, argv)]
    print("$ minimind " + shlex.join(cmd[3:]), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - t


def tasks(model, tok, path, think=False, max_new_tokens=96) -> dict:
    from minimind.eval.tasks import evaluate_tasks, load_heldout

    return evaluate_tasks(model, tok, load_heldout(path), think=think, max_new_tokens=max_new_tokens)


def accuracies(res: dict) -> dict:
    return {k: round(v["accuracy"], 4) for k, v in res["families"].items()}


def overall(res: dict, skip: tuple = ()) -> float:
    """Accuracy over all held-out questions of the families not in `skip`."""
    fam = [v for k, v in res["families"].items() if k not in skip]
    return sum(v["correct"] for v in fam) / sum(v["total"] for v in fam)


def finished(run_dir: Path, steps: int) -> bool:
    """True when run_dir holds a finished run of `steps` steps (reused instead of retrained)."""
    m = run_dir / "metrics.jsonl"
    return m.is_file() and (run_dir / "checkpoint").is_dir() and any(
        json.loads(x).get("step") == steps for x in open(m))


def load(path):
    from minimind.infer.generate import load_for_inference

    return load_for_inference(path, "cpu", "fp32")


# ----------------------------------------------------------------------------- experiments

def exp_lora(run: Path, work: Path, args) -> dict:
    from minimind.lora import adapter_size, load_adapter

    data = run / "data"
    wall = cli("lora", "--init", run / "sft", "--data", data / "lora_identity.jsonl", "--out", work / "lora",
               "--steps", args.lora_steps, "--batch-size", 16, "--max-seq-len", 320, "--rank", 8,
               "--seed", 0, "--no-progress")
    base, tok = load(run / "sft")
    before_id = tasks(base, tok, data / "eval/heldout_lora_identity.jsonl")
    before = tasks(base, tok, data / "eval/heldout.jsonl")
    adapted = load_adapter(base, work / "lora" / "adapter")
    after_id = tasks(adapted, tok, data / "eval/heldout_lora_identity.jsonl")
    after = tasks(adapted, tok, data / "eval/heldout.jsonl")
    from minimind.checkpoint import resolve_checkpoint

    size = adapter_size(work / "lora" / "adapter") / (resolve_checkpoint(run / "sft") / "model.safetensors").stat().st_size
    samples = [s["reply"] for s in after_id["samples"][:4]]
    return {"steps": args.lora_steps, "train_s": round(wall, 1),
            "identity_lumen_before": overall(before_id), "identity_lumen_after": overall(after_id),
            "tasks_before": accuracies(before), "tasks_after": accuracies(after),
            # the identity family asks for the old name, which the adapter replaces on purpose
            "task_acc_before": overall(before, skip=("identity",)), "task_acc_after": overall(after, skip=("identity",)),
            "adapter_share_of_base": round(size, 4), "identity_samples": samples}


def exp_dpo(run: Path, work: Path, args) -> dict:
    from minimind.data.loader import DPOLoader
    from minimind.train.dpo import preference_accuracy
    from minimind.train.run import prepared_data

    data = run / "data"
    base, tok = load(run / "sft")
    held = DPOLoader(prepared_data(str(data / "eval/heldout_dpo.jsonl"), tok, "dpo", 384, "error",
                                   progress=False), 16, 384, seed=0)
    pref_before = preference_accuracy(base, held)
    before = tasks(base, tok, data / "eval/heldout.jsonl")
    wall = cli("dpo", "--init", run / "sft", "--data", data / "dpo.jsonl", "--out", work / "dpo",
               "--steps", args.dpo_steps, "--batch-size", 16, "--lr", args.dpo_lr, "--beta", 0.1,
               "--sft-weight", args.dpo_sft_weight,
               "--seed", 0, "--no-progress")
    tuned, _ = load(work / "dpo")
    pref_after = preference_accuracy(tuned, held)
    after = tasks(tuned, tok, data / "eval/heldout.jsonl")
    return {"steps": args.dpo_steps, "lr": args.dpo_lr, "sft_weight": args.dpo_sft_weight, "train_s": round(wall, 1),
            "pairs": pref_before["pairs"],
            "pref_acc_before": pref_before["accuracy"], "pref_acc_after": pref_after["accuracy"],
            "logp_chosen": [pref_before["logp_chosen"], pref_after["logp_chosen"]],
            "logp_rejected": [pref_before["logp_rejected"], pref_after["logp_rejected"]],
            "tasks_before": accuracies(before), "tasks_after": accuracies(after),
            "task_acc_before": overall(before), "task_acc_after": overall(after)}


def exp_distill(run: Path, work: Path, args) -> dict:
    lines = (run / "data" / "sft.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    work.mkdir(parents=True, exist_ok=True)
    train, held = work / "sft_train.jsonl", work / "sft_heldout.jsonl"
    train.write_text("".join(lines[:-500]), encoding="utf-8")
    held.write_text("".join(lines[-500:]), encoding="utf-8")
    common = ["--init", run / "pretrain", "--data", train, "--eval-data", held, "--steps", args.distill_steps,
              "--batch-size", 16, "--max-seq-len", 320, "--lr", 5e-4, "--eval-every", args.distill_eval_every,
              "--eval-batches", 16, "--seed", 0, "--no-progress"]
    dirs = {"sft": work / "student_sft", "distill": work / ("student_distill" + (f"_{args.tag}" if args.tag else ""))}
    walls = {"sft": None if finished(dirs["sft"], args.distill_steps) else cli("sft", "--out", dirs["sft"], *common),
             "distill": cli("distill", "--teacher", run / "sft", "--alpha", args.distill_alpha,
                            "--temperature", args.distill_temperature, "--out", dirs["distill"], *common)}
    curves = {}
    for name, d in dirs.items():
        rows = [json.loads(x) for x in open(d / "metrics.jsonl")]
        curves[name] = [(r["step"], round(r["eval_loss"], 4)) for r in rows if "eval_loss" in r]
    return {"steps": args.distill_steps, "alpha": args.distill_alpha, "temperature": args.distill_temperature,
            "train_s": {k: round(v, 1) for k, v in walls.items() if v is not None},
            "final_eval_ce": {k: v[-1][1] for k, v in curves.items()}, "curves": curves}


def well_formed(sample: dict, think: bool) -> bool:
    raw = sample["raw"]
    if not think:  # the prompt closed an empty think block: no think text may follow
        return "<think>" not in raw and "</think>" not in raw and not sample["reasoning"]
    return raw.count("</think>") == 1 and bool((sample["reasoning"] or "").strip()) and bool(sample["reply"].strip())


def exp_reason(run: Path, work: Path, args) -> dict:
    data = run / "data"
    wall = None if finished(work / "reason", args.reason_steps) else cli(
        "sft", "--reasoning", "--think-weight", 10, "--init", run / "sft", "--data", data / "reason.jsonl",
        "--out", work / "reason", "--steps", args.reason_steps, "--batch-size", 16, "--max-seq-len", 384,
        "--lr", 5e-4, "--seed", 0, "--no-progress")
    model, tok = load(work / "reason")
    out = {"steps": args.reason_steps, "train_s": round(wall, 1) if wall else "reused"}
    for mode in ("on", "off"):
        res = tasks(model, tok, data / "eval/heldout.jsonl", think=mode == "on", max_new_tokens=256)
        s = [x for x in res["samples"] if x["family"] != "tool"]  # tool replies are calls, judged by accuracy
        out[f"think_{mode}"] = {"well_formed": sum(well_formed(x, mode == "on") for x in s) / len(s),
                                "with_think_text": sum(bool(x["reasoning"]) for x in s) / len(s),
                                "accuracy": accuracies(res),
                                "example": next((x["raw"] for x in s if x["family"] == "add"), "")}
    return out


EXPERIMENTS = {"lora": exp_lora, "dpo": exp_dpo, "distill": exp_distill, "reason": exp_reason}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a `minimind demo` output directory (data/, pretrain/, sft/)")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / ".cache" / "post_training")
    ap.add_argument("--only", default="lora,dpo,distill,reason")
    ap.add_argument("--lora-steps", type=int, default=300)
    ap.add_argument("--dpo-steps", type=int, default=100)
    ap.add_argument("--dpo-lr", type=float, default=3e-5)
    ap.add_argument("--dpo-sft-weight", type=float, default=1.0, help="SFT loss on the chosen answers, mixed in")
    ap.add_argument("--distill-steps", type=int, default=80)
    ap.add_argument("--distill-eval-every", type=int, default=10)
    ap.add_argument("--distill-alpha", type=float, default=0.5)
    ap.add_argument("--distill-temperature", type=float, default=2.0)
    ap.add_argument("--tag", default="", help="store the results as NAME:TAG (to keep several settings)")
    ap.add_argument("--reason-steps", type=int, default=150)
    args = ap.parse_args()
    for sub in ("data", "pretrain", "sft"):
        if not (args.run / sub).exists():
            sys.exit(f"{args.run}/{sub} missing: pass a `minimind demo` output directory")
    import torch

    torch.manual_seed(0)
    results = {}
    for name in args.only.split(","):
        key = f"{name}:{args.tag}" if args.tag else name
        results[key] = EXPERIMENTS[name](args.run, args.work, args)
        print(json.dumps({key: results[key]}, ensure_ascii=False), flush=True)
    prev = ROOT / "bench" / "post_training.json"  # a partial run (--only) updates the other results in place
    if prev.is_file() and args.only != ap.get_default("only"):
        old = json.loads(prev.read_text())
        if old.get("run") == str(args.run):
            results = {**old["results"], **results}
    write_json("post_training", {"machine": machine(), "run": str(args.run), "results": results})
    r = results
    if "lora" in r:
        x = r["lora"]
        print_table([{"model": m, "identity Lumen": x[f"identity_lumen_{k}"], "task acc": x[f"task_acc_{k}"]}
                     for m, k in (("base", "before"), ("base + LoRA", "after"))],
                    ["model", "identity Lumen", "task acc"])
        print(f"adapter: {x['adapter_share_of_base']:.2%} of the base weights")
    if "dpo" in r:
        x = r["dpo"]
        print_table([{"model": m, "preference acc": x[f"pref_acc_{k}"], "task acc": x[f"task_acc_{k}"]}
                     for m, k in (("sft", "before"), ("sft + DPO", "after"))], ["model", "preference acc", "task acc"])
    if "distill" in r:
        c = r["distill"]["curves"]
        print_table([{"step": s, "sft eval CE": a, "distill eval CE": b}
                     for (s, a), (_, b) in zip(c["sft"], c["distill"])], ["step", "sft eval CE", "distill eval CE"])
    if "reason" in r:
        x = r["reason"]
        print_table([{"think": m, "well-formed": x[f"think_{m}"]["well_formed"],
                      "think text": x[f"think_{m}"]["with_think_text"],
                      **{f"acc {k}": v for k, v in x[f"think_{m}"]["accuracy"].items()}} for m in ("on", "off")],
                    ["think", "well-formed", "think text"] + [f"acc {k}" for k in x["think_on"]["accuracy"]])


if __name__ == "__main__":
    main()
