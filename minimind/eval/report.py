"""One markdown page about a trained model (`minimind eval report RUN_OR_CKPT`).

The page a user posts when asking "is this normal?": what was trained (model, data, machine), the
loss curves, and every evaluation this package has, next to the number that would mean "learned
nothing":

    loss curves          every metrics.jsonl of the run (a demo directory holds one per stage)
    perplexity           eval ppl on held-out text, per checkpoint (ppl of a uniform guess = vocab size)
    multiple choice      eval mc on the held-out mcq file, per checkpoint (chance = 1 / choices)
    length curve         eval length on the pretrained checkpoint, RoPE vs YaRN
    copying              eval copy per checkpoint: does it repeat a list it has just read (vs not yet shown)
    held-out tasks       eval tasks (exact match, greedy generation) on the chat checkpoint,
                         with a few of its replies as sample chats

PATH may be a checkpoint, a run directory (RUN/checkpoint + RUN/metrics.jsonl) or a directory of
runs such as `minimind demo`'s (pretrain/, sft/). The held-out files are looked up in
--data-dir, PATH/data, next to PATH, and data/builtin. Writes OUT/report.md, report.json and PNGs.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

STAGE_ORDER = ["pretrain", "sft", "lora", "lora merge", "dpo", "distill", "reason"]
SECTIONS = ("curves", "ppl", "mc", "length", "copy", "tasks")
CHAT_SAMPLES = 6


@dataclass
class Stage:
    name: str  # run directory name, e.g. "pretrain"
    ckpt: Path
    run: Path | None  # holds metrics.jsonl
    stage: str  # run.json's "stage" ("pretrain", "sft", ...) or "" if unknown


def _stage_of(ckpt: Path) -> str:
    try:
        return str(json.loads((ckpt / "run.json").read_text()).get("stage") or "")
    except (OSError, ValueError):
        return ""


def _as_stage(path: Path) -> Stage | None:
    if (path / "config.json").is_file():  # a checkpoint; its run directory may be the parent
        run = path.parent if path.name == "checkpoint" and (path.parent / "metrics.jsonl").is_file() else None
        return Stage((run or path).name, path, run, _stage_of(path))
    if (path / "checkpoint" / "config.json").is_file():
        return Stage(path.name, path / "checkpoint", path if (path / "metrics.jsonl").is_file() else None,
                     _stage_of(path / "checkpoint"))
    return None


def find_stages(path) -> list[Stage]:
    """The checkpoints under PATH in training order (pretrain first)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such directory (expected a checkpoint, run or demo directory)")
    one = _as_stage(path)
    if one:
        return [one]
    stages = [s for s in (_as_stage(p) for p in sorted(path.iterdir()) if p.is_dir()) if s]
    if not stages:
        raise UserError(f"{path}: no checkpoint here or one level down (config.json, or checkpoint/config.json)")

    def order(s: Stage):
        known = STAGE_ORDER.index(s.stage) if s.stage in STAGE_ORDER else len(STAGE_ORDER)
        return known, (s.ckpt / "config.json").stat().st_mtime

    return sorted(stages, key=order)


def find_data(path: Path, data_dir) -> Path | None:
    """A corpus directory holding eval/heldout*.jsonl."""
    candidates = [Path(data_dir)] if data_dir else []
    candidates += [path / "data", path.parent / "data", path.parent.parent / "data", Path("data/builtin")]
    for c in candidates:
        if (c / "eval").is_dir() and any((c / "eval").glob("heldout*.jsonl")):
            return c
    if data_dir:
        raise UserError(f"--data-dir {data_dir}: no eval/heldout*.jsonl there (make them with `minimind data synth`)")
    return None


# ----------------------------------------------------------------------------- sections

def loss_curves(stages: list[Stage], out: Path) -> dict:
    from ..train.plot import read_metrics

    runs = {s.name: read_metrics(s.run) for s in stages if s.run}
    runs = {k: v for k, v in runs.items() if any("loss" in r for r in v)}
    if not runs:
        return {"note": "no metrics.jsonl found"}
    summary = {}
    for name, rows in runs.items():
        train = [r for r in rows if "loss" in r]
        evals = [r for r in rows if "eval_loss" in r]
        summary[name] = {"steps": train[-1]["step"], "loss": train[-1]["loss"],
                         "eval_loss": evals[-1]["eval_loss"] if evals else None,
                         "tokens_seen": train[-1].get("tokens_seen")}
    png = _plot_curves(runs, out / "loss.png")
    return {"runs": summary, "png": png.name if png else None}


def _plot_curves(runs: dict, file: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 3.8), squeeze=False)
    for ax, (name, rows) in zip(axes[0], runs.items()):
        train = [r for r in rows if "loss" in r]
        evals = [r for r in rows if "eval_loss" in r]
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
        if evals:
            ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="held-out loss")
        ax.set_title(name), ax.set_xlabel("step"), ax.set_ylabel("loss (nats/token)")
        ax.grid(alpha=0.3), ax.legend()
    fig.tight_layout()
    fig.savefig(file, dpi=90)
    plt.close(fig)
    return file


def _scoring(stage: Stage, args):
    from .loglik import load_scoring_model

    return load_scoring_model(stage.ckpt, args.device, args.dtype)


def ppl_section(stages: list[Stage], data: Path, args) -> dict:
    from .loglik import training_length
    from .ppl import default_window, evaluate_ppl

    out = {}
    trained = training_length(stages[0].ckpt)  # one window for every stage, so the numbers compare
    for s in stages:
        sm = _scoring(s, args)
        res = evaluate_ppl(sm, data / "eval" / "heldout_pretrain.jsonl", default_window(sm, trained),
                           progress=args.progress)
        out[s.name] = {k: res[k] for k in ("loss", "ppl", "bpb", "tokens", "bytes", "docs", "seq_len")}
        out[s.name]["uniform_ppl"] = sm.tok.vocab_size
    return out


def mc_section(stages: list[Stage], data: Path, args) -> dict:
    from .mc import evaluate_mc
    from .readers import load_benchmark

    bench = load_benchmark(data / "eval" / "heldout_mcq.jsonl")
    out = {}
    for s in stages:  # a chat model is asked in its chat template, a pretrained one in plain text
        chat = _is_chat(s)
        res = evaluate_mc(_scoring(s, args), bench, progress=args.progress, chat=chat)
        out[s.name] = {"overall": res["overall"], "subjects": res["subjects"], "chat": chat}
    return out


def copy_section(stages: list[Stage], args) -> dict:
    from .copy import evaluate_copy

    return {s.name: evaluate_copy(_scoring(s, args), n=100, progress=args.progress) for s in stages}


def _is_chat(stage: Stage) -> bool:
    return stage.stage not in ("pretrain", "")


def length_section(stage: Stage, data: Path, out_dir: Path, args) -> dict:
    from .length import default_lengths, evaluate_length, plot_length
    from .loglik import training_length

    train_len = training_length(stage.ckpt)
    if train_len is None:
        return {"note": f"{stage.name}: training length not recorded; run `minimind eval length --train-length N`"}
    res = evaluate_length(_scoring(stage, args), data / "eval" / "heldout_pretrain.jsonl",
                          default_lengths(train_len), train_len, progress=args.progress)
    png = None
    try:
        png = plot_length(res, out_dir / "length.png").name
    except UserError:  # no matplotlib: the table still tells the story
        pass
    for pts in res["curves"].values():
        for p in pts:
            p.pop("position_loss", None)
    return {"checkpoint": stage.name, **res, "png": png}


def tasks_section(stage: Stage, data: Path, args) -> dict:
    from ..infer.generate import load_for_inference
    from .tasks import evaluate_tasks, load_heldout

    records = load_heldout(data / "eval" / "heldout.jsonl", args.limit)
    model, tok = load_for_inference(stage.ckpt, args.device)
    res = evaluate_tasks(model, tok, records, progress=args.progress)
    return {"checkpoint": stage.name, "families": res["families"], "samples": _pick_samples(res["samples"])}


def _pick_samples(samples: list[dict]) -> list[dict]:
    """One reply per family in turn, right and wrong alike."""
    by_family: dict[str, list] = {}
    for s in samples:
        by_family.setdefault(s["family"], []).append(s)
    picked, i = [], 0
    while len(picked) < CHAT_SAMPLES and any(i < len(v) for v in by_family.values()):
        picked += [v[i] for v in by_family.values() if i < len(v)][:CHAT_SAMPLES - len(picked)]
        i += 1
    return [{k: s[k] for k in ("family", "prompt", "answer", "reply", "correct")} for s in picked]


# ----------------------------------------------------------------------------- the page

def _model_line(stage: Stage) -> str:
    from ..config import ModelConfig

    cfg = ModelConfig.load(stage.ckpt / "config.json")
    c = cfg.param_counts()
    return (f"{c['total'] / 1e6:.2f}M parameters ({cfg.name}): hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, "
            f"{cfg.num_attention_heads} heads / {cfg.num_key_value_heads} KV, vocab {cfg.vocab_size}"
            + (f", {cfg.num_experts} experts" if cfg.is_moe else ""))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def render(rep: dict) -> str:
    L = [f"# minimind report: {rep['path']}", "",
         f"{rep['date']}, `minimind eval report {rep['path']}`", "",
         f"- model: {rep['model']}",
         f"- checkpoints: " + ", ".join(f"`{s['name']}` ({s['stage'] or 'stage unknown'})" for s in rep["stages"]),
         f"- held-out data: {rep['data'] or 'not found (pass --data-dir)'}",
         f"- scoring precision: {rep['scoring']}",
         f"- machine: {rep['machine']['cpu']}, torch threads {rep['machine']['threads']}, flags "
         f"{' '.join(rep['machine']['flags']) or '-'}, torch {rep['machine']['torch']}"
         + (f", GPU {rep['machine']['gpu']}" if rep['machine'].get('gpu') else ""), ""]
    for key, title, fn in (("curves", "Loss curves", _md_curves), ("ppl", "Perplexity on held-out text", _md_ppl),
                           ("mc", "Multiple choice (held-out facts), by log-likelihood", _md_mc),
                           ("length", "Perplexity against context length (RoPE vs YaRN)", _md_length),
                           ("copy", "Copying from the context (induction)", _md_copy),
                           ("tasks", "Held-out tasks (exact match, greedy)", _md_tasks)):
        if key in rep["sections"]:
            L += [f"## {title}", "", *fn(rep["sections"][key]), ""]
    skipped = [k for k in SECTIONS if k not in rep["sections"]]
    if skipped:
        L.append(f"Not in this report: {', '.join(skipped)} ({rep.get('why_skipped') or 'skipped'}).")
    L.append("What the numbers mean and what a demo-sized model reaches: docs/evaluation.md.")
    return "\n".join(L) + "\n"


def _md_curves(sec: dict) -> list[str]:
    if "note" in sec:
        return [sec["note"]]
    L = ["| run | steps | final train loss | held-out loss | tokens seen |", "|---|---:|---:|---:|---:|"]
    for name, r in sec["runs"].items():
        ev = f"{r['eval_loss']:.3f}" if r["eval_loss"] is not None else "-"
        L.append(f"| {name} | {r['steps']} | {r['loss']:.3f} | {ev} | {r['tokens_seen'] or '-'} |")
    return L + ([f"", f"![loss curves]({sec['png']})"] if sec.get("png") else [])


def _md_ppl(sec: dict) -> list[str]:
    L = ["| checkpoint | loss (nats/token) | ppl | bits/byte | tokens | window | ppl of a uniform guess |",
         "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in sec.items():
        L.append(f"| {name} | {r['loss']:.3f} | {r['ppl']:.2f} | {r['bpb']:.3f} | {r['tokens']} | {r['seq_len']} "
                 f"| {r['uniform_ppl']} |")
    return L


def _md_mc(sec: dict) -> list[str]:
    L = ["| checkpoint | prompt | questions | acc | acc_norm | chance |", "|---|---|---:|---:|---:|---:|"]
    for name, r in sec.items():
        o = r["overall"]
        prompt = "chat template" if r.get("chat") else "plain text"
        L.append(f"| {name} | {prompt} | {o['n']} | {_pct(o['acc'])} ± {100 * o['acc_stderr']:.1f} | "
                 f"{_pct(o['acc_norm'])} | {_pct(o['chance'])} |")
    last = list(sec)[-1]
    L += ["", f"Per subject (`{last}`): " + ", ".join(f"{s} {_pct(v['acc'])}" for s, v in sec[last]["subjects"].items())]
    return L


def _md_length(sec: dict) -> list[str]:
    if "note" in sec:
        return [sec["note"]]
    from .length import CURVES

    T, y, c = sec["train_length"], sec["yarn"], sec["curves"]
    names = [CURVES[k] for k in c]
    L = [f"`{sec['checkpoint']}`, trained at {T} tokens; YaRN factor {y['factor']:g} over "
         f"{y['original_max_position_embeddings']} positions (dynamic: length / "
         f"{y['original_max_position_embeddings']}), no fine-tuning; {sec['tokens']} tokens per length.", "",
         "| length | " + " | ".join(f"ppl {n}" for n in names) + " | " + " | ".join(f"ppl past {T}, {n}" for n in names)
         + " |", "|---:|" + "---:|" * (2 * len(c))]
    for i, length in enumerate(sec["lengths"]):
        ppl = " | ".join(f"{c[k][i]['ppl']:.2f}" for k in c)
        beyond = " | ".join(f"{c[k][i]['ppl_beyond']:.2f}" if "ppl_beyond" in c[k][i] else "-" for k in c)
        L.append(f"| {length} | {ppl} | {beyond} |")
    return L + ([f"", f"![length curve]({sec['png']})"] if sec.get("png") else [])


def _md_copy(sec: dict) -> list[str]:
    L = ["| checkpoint | second copy (after reading) | first copy (not yet shown) | loss, second / first |",
         "|---|---:|---:|---:|"]
    for name, r in sec.items():
        L.append(f"| {name} | {_pct(r['copy_accuracy'])} | {_pct(r['baseline_accuracy'])} | "
                 f"{r['copy_loss']:.2f} / {r['baseline_loss']:.2f} |")
    r = next(iter(sec.values()))
    return L + ["", f"{r['probes']} lists of {r['lengths'][0]}-{r['lengths'][1]} random words, each written twice "
                "(`minimind eval copy`): a model that copies predicts the second copy; near 0% it cannot quote "
                "what it has just read (subjects and operands of new questions, tool-call arguments)."]


def _md_tasks(sec: dict) -> list[str]:
    if "note" in sec:
        return [sec["note"]]
    L = [f"`{sec['checkpoint']}`", "", "| family | correct | total | accuracy |", "|---|---:|---:|---:|"]
    for fam, v in sec["families"].items():
        L.append(f"| {fam} | {v['correct']} | {v['total']} | {_pct(v['accuracy'])} |")
    L += ["", "Sample chats:", ""]
    for s in sec["samples"]:
        reply = " ".join(s["reply"].split())[:200]
        L.append(f"- **{s['family']}** you> {s['prompt']}  \n  minimind> {reply}  \n  "
                 f"(expected {s['answer']!r}: {'right' if s['correct'] else 'wrong'})")
    return L


def _precision(device: str, dtype: str) -> str:
    import torch

    from ..runtime import pick_device, pick_dtype

    dt = pick_dtype(dtype, pick_device(device))
    return "fp32" if dt == torch.float32 else f"{str(dt).replace('torch.', '')} matmuls, fp32 weights (--dtype fp32 for exact)"


def build_report(args) -> dict:
    from ..runtime import machine_info

    path = Path(args.path)
    stages = find_stages(path)
    data = find_data(path, args.data_dir)
    skip = set(args.skip or [])
    out = Path(args.out) if args.out else (path / "report")
    out.mkdir(parents=True, exist_ok=True)
    rep = {"path": str(path), "date": datetime.date.today().isoformat(), "model": _model_line(stages[-1]),
           "stages": [{"name": s.name, "stage": s.stage, "checkpoint": str(s.ckpt)} for s in stages],
           "data": str(data) if data else None, "machine": machine_info(), "scoring": _precision(args.device, args.dtype),
           "sections": {}}
    chat = [s for s in stages if s.stage != "pretrain"]  # unknown stages count as chat models here
    plan = [("curves", lambda: loss_curves(stages, out), False),
            ("ppl", lambda: ppl_section(stages, data, args), True),
            ("mc", lambda: mc_section(stages, data, args), True),
            ("length", lambda: length_section(stages[0], data, out, args), True),
            ("copy", lambda: copy_section(stages, args), False),
            ("tasks", lambda: tasks_section(chat[-1], data, args) if chat else
             {"note": "only a pretrained checkpoint: held-out tasks need a chat model (sft)"}, True)]
    for key, fn, needs_data in plan:
        if key in skip:
            continue
        if needs_data and data is None:
            rep["why_skipped"] = "no held-out data found; pass --data-dir"
            continue
        t = time.perf_counter()
        rep["sections"][key] = fn()
        rep.setdefault("seconds", {})[key] = round(time.perf_counter() - t, 1)
        print(f"report: {key} ({rep['seconds'][key]:.0f} s)", file=sys.stderr, flush=True)
    (out / "report.json").write_text(json.dumps(rep, ensure_ascii=False, indent=1, default=str))
    (out / "report.md").write_text(render(rep), encoding="utf-8")
    return {**rep, "out": str(out)}


def run_eval_report(args) -> dict:
    unknown = set(args.skip or []) - set(SECTIONS)
    if unknown:
        raise UserError(f"--skip {','.join(sorted(unknown))}: choose from {', '.join(SECTIONS)}")
    args.progress = not args.no_progress
    rep = build_report(args)
    print(f"wrote {rep['out']}/report.md")
    return rep
