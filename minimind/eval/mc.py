"""Multiple choice by log-likelihood (`minimind eval mc`), scored as lm-eval scores it.

lm-eval: EleutherAI's lm-evaluation-harness (Gao et al. 2023, "A framework for few-shot language
model evaluation"; Biderman et al. 2024, "Lessons from the trenches on reproducible evaluation").

For a question with context a and choices c_1..c_K (each continuation is " " + choice text),
the model picks the choice it finds most likely (loglik.py: LL_i = log p(" " c_i | a)):

    acc        = [argmax_i LL_i == gold]                 raw: favours short choices
    acc_norm   = [argmax_i LL_i / chars(c_i) == gold]    length-normalised
    acc_bytes  = [argmax_i LL_i / bytes(c_i) == gold]    normalised by UTF-8 bytes

lm-eval's documentation calls acc_norm "normalised by byte length"; its code (0.4.x
`ConfigurableTask.process_results`) divides by the number of characters of the choice and
reports the UTF-8 byte version as acc_bytes. We follow the code, so numbers match; the two
coincide on ASCII text and differ on Chinese (3 bytes per character). Ties go to the first
choice (numpy's argmax). The chance level of a question is 1/K; `chance` is its mean.

Prompts are lm-eval's for each task. "cloze" scores the answer text after the question
(ARC: "Question: {q}\\nAnswer:", OpenBookQA: "{q}", PIQA: "Question: {goal}\\nAnswer:",
HellaSwag: the context, minimind mcq: "Question: {q}\\nAnswer:"); "letters" lists the options and
scores the letter (C-Eval and CMMLU: "{q}\\nA. {A}\\nB. {B}\\nC. {C}\\nD. {D}\\n答案：" then " A").
Letters is how lm-eval runs C-Eval and CMMLU; a model too small to map a letter to its option
scores chance there (MiniMind's 64M model: 24.9 / 25.4), while cloze still measures what it knows.
lm-eval also puts a one-line subject description before C-Eval/CMMLU prompts; we do not.

Chat models (`--chat`): the whole prompt becomes one user turn of the chat template followed by the
opened assistant turn (thinking off), and each choice is scored right after it, with no space
before it: lm-eval's --apply_chat_template. A fine-tuned model answers in that format, not after
"Answer:" in plain text. As in lm-eval, the "\n\n" that ends the template's opened turn moves into
each continuation (trailing whitespace always does), adding the same term to every choice.

k-shot: the first k questions of the subject's dev pool, each followed by " " + its right answer
and a blank line, then the question (lm-eval's first_n sampler and delimiters). Tokenization is
lm-eval's too: the context is encoded alone, context + continuation together, and the
continuation is the difference; trailing spaces of the context move into the continuation.

Overall accuracy is the mean over all questions (lm-eval's group score, weighted by size) with
its standard error sqrt(p (1 - p) / (n - 1)); the macro mean over subjects is reported beside it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .loglik import ScoringModel, continuation_row, score_rows
from .readers import LETTERS, Benchmark, Item

CLOZE = {
    "arc": "Question: {q}\nAnswer:",
    "openbookqa": "{q}",
    "piqa": "Question: {q}\nAnswer:",
    "hellaswag": "{q}",
    "mcq": "Question: {q}\nAnswer:",
    "ceval": "{q}\n答案：",
    "cmmlu": "{q}\n答案：",
}
LETTERS_CUE = {"ceval": "答案：", "cmmlu": "答案："}  # others: "Answer:"
DEFAULT_STYLE = {"ceval": "letters", "cmmlu": "letters"}  # others: cloze
TARGET_DELIMITER, FEWSHOT_DELIMITER = " ", "\n\n"


@dataclass
class Prompt:
    query: str  # what the choices continue
    choices: list[str]  # scored after TARGET_DELIMITER
    gold: int


def make_prompt(item: Item, fmt: str, style: str) -> Prompt:
    if style == "letters":
        lines = [item.question.strip()] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(item.options)]
        return Prompt("\n".join(lines) + "\n" + LETTERS_CUE.get(fmt, "Answer:"),
                      list(LETTERS[:len(item.options)]), item.gold)
    q = item.question.strip() if fmt in ("ceval", "cmmlu") else item.question
    return Prompt(CLOZE[fmt].format(q=q), list(item.options), item.gold)


def fewshot_context(shots: list[Prompt], query: str) -> str:
    return "".join(s.query + TARGET_DELIMITER + s.choices[s.gold] + FEWSHOT_DELIMITER for s in shots) + query


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split of (context, continuation) into tokens for a causal model."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    ctx = tok.encode(context)
    cont = tok.encode(context + continuation)[len(ctx):]
    return ctx, (cont or tok.encode(continuation))


def evaluate_mc(sm: ScoringModel, bench: Benchmark, shots: int = 0, style: str = "auto", batch_size: int = 32,
                limit: int | None = None, subjects: list[str] | None = None, progress: bool = False,
                chat: bool = False) -> dict:
    """-> {"subjects": {s: {"n", "acc", "acc_norm", "acc_bytes", "chance"}}, "overall": {...}, "items": [...]}"""
    style = DEFAULT_STYLE.get(bench.format, "cloze") if style == "auto" else style
    if style not in ("cloze", "letters"):
        raise UserError(f"--style {style!r}: choose auto, cloze or letters")
    chosen = _select(bench, subjects, limit)
    if shots and not any(bench.dev.get(s) for s in chosen):
        raise UserError(f"--shots {shots}: no few-shot examples found; pass --dev FILE (or a benchmark "
                        f"directory with a dev split)")
    questions = list(_questions(bench, chosen, shots, style))
    if chat:
        for q in questions:
            q.context = chat_context(q.context)
    lls = _choice_logliks(sm, questions, batch_size, progress, desc=f"mc {bench.format}",
                          delimiter="" if chat else TARGET_DELIMITER)
    items = [_judge(q.subject, q.item, q.prompt, ll, q.shots) for q, ll in zip(questions, lls)]
    return {"format": bench.format, "style": style, "shots": shots, "chat": chat, **aggregate(items), "items": items}


def chat_context(context: str) -> str:
    """The prompt as one user turn of the chat template, the answer opened (thinking off), as
    lm-eval's --apply_chat_template does (its target delimiter is then empty)."""
    from ..tokenizer import render_chat_text

    return render_chat_text([{"role": "user", "content": context}], add_generation_prompt=True)[0]


@dataclass
class Question:
    subject: str
    item: Item
    prompt: Prompt
    context: str  # few-shot examples + prompt.query
    shots: int


def _questions(bench: Benchmark, chosen: dict[str, list[Item]], shots: int, style: str):
    for subject, items in chosen.items():
        pool = bench.dev.get(subject, [])
        for it in items:
            demo = [make_prompt(d, bench.format, style) for d in _first_others(pool, it, shots)]
            p = make_prompt(it, bench.format, style)
            yield Question(subject, it, p, fewshot_context(demo, p.query), len(demo))


def _choice_logliks(sm: ScoringModel, questions: list[Question], batch_size: int, progress: bool,
                    desc: str, delimiter: str = TARGET_DELIMITER) -> list[list[float]]:
    """LL_i = log p(delimiter + choice_i | context) for every choice of every question, in one batched pass."""
    rows, owner = [], []
    for k, q in enumerate(questions):
        for choice in q.prompt.choices:
            rows.append(continuation_row(*encode_pair(sm.tok, q.context, delimiter + choice), sm.max_positions))
            owner.append(k)
    lls: list[list[float]] = [[] for _ in questions]
    for k, s in zip(owner, score_rows(sm, rows, batch_size, progress=progress, desc=desc)):
        lls[k].append(s.total)
    return lls


def _first_others(pool: list[Item], item: Item, k: int) -> list[Item]:
    """The first k pool items other than `item` itself (the pool may be the evaluated file)."""
    out = []
    for d in pool:
        if len(out) == k:
            break
        if d.where != item.where:
            out.append(d)
    return out


def _select(bench: Benchmark, subjects: list[str] | None, limit: int | None) -> dict[str, list[Item]]:
    if subjects:
        unknown = [s for s in subjects if s not in bench.items]
        if unknown:
            raise UserError(f"--subjects: {unknown} not in this benchmark (it has {', '.join(bench.items)})")
    return {s: items[:limit] for s, items in bench.items.items() if not subjects or s in subjects}


def _judge(subject: str, item: Item, p: Prompt, ll: list[float], shots: int) -> dict:
    chars = np.array([len(c) for c in p.choices], dtype=float)
    nbytes = np.array([len(c.encode("utf-8")) for c in p.choices], dtype=float)
    ll_arr = np.array(ll)
    pred, pred_norm, pred_bytes = int(np.argmax(ll_arr)), int(np.argmax(ll_arr / chars)), int(np.argmax(ll_arr / nbytes))
    return {"subject": subject, "where": item.where, "gold": p.gold, "loglik": ll, "pred": pred,
            "acc": float(pred == p.gold), "acc_norm": float(pred_norm == p.gold),
            "acc_bytes": float(pred_bytes == p.gold), "chance": 1 / len(p.choices), "shots": shots}


def _stats(items: list[dict]) -> dict:
    n = len(items)
    out = {"n": n}
    for key in ("acc", "acc_norm", "acc_bytes", "chance"):
        out[key] = sum(it[key] for it in items) / n
    for key in ("acc", "acc_norm"):
        p = out[key]
        out[f"{key}_stderr"] = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")
    return out


def aggregate(items: list[dict]) -> dict:
    by_subject: dict[str, list[dict]] = {}
    for it in items:
        by_subject.setdefault(it["subject"], []).append(it)
    subjects = {s: _stats(v) for s, v in by_subject.items()}
    overall = _stats(items)
    overall["macro_acc"] = sum(v["acc"] for v in subjects.values()) / len(subjects)
    overall["macro_acc_norm"] = sum(v["acc_norm"] for v in subjects.values()) / len(subjects)
    overall["subjects"] = len(subjects)
    return {"subjects": subjects, "overall": overall}


def format_mc(res: dict, max_subjects: int = 80) -> str:
    width = max([len(s) for s in res["subjects"]] + [8])
    lines = [f"{'subject':<{width}} {'n':>5} {'acc':>7} {'acc_norm':>9} {'chance':>7}"]
    rows = list(res["subjects"].items())
    for s, v in rows[:max_subjects]:
        lines.append(f"{s:<{width}} {v['n']:>5} {v['acc']:>7.1%} {v['acc_norm']:>9.1%} {v['chance']:>7.1%}")
    if len(rows) > max_subjects:
        lines.append(f"... {len(rows) - max_subjects} more subjects (--json has them all)")
    o = res["overall"]
    lines.append(f"{'overall':<{width}} {o['n']:>5} {o['acc']:>7.1%} {o['acc_norm']:>9.1%} {o['chance']:>7.1%}")
    lines.append(f"{res['format']}, {res['style']} prompts{' in the chat template' if res.get('chat') else ''}, "
                 f"{res['shots']}-shot: acc {100 * o['acc']:.1f} "
                 f"± {100 * o['acc_stderr']:.1f}, acc_norm {100 * o['acc_norm']:.1f} ± "
                 f"{100 * o['acc_norm_stderr']:.1f} (chance {100 * o['chance']:.1f}); "
                 f"mean over {o['subjects']} subjects: acc {100 * o['macro_acc']:.1f}")
    return "\n".join(lines)


def run_eval_mc(args) -> dict:
    from .loglik import load_scoring_model
    from .readers import load_benchmark

    bench = load_benchmark(args.data, args.format, args.split, args.dev, args.labels)
    sm = load_scoring_model(args.checkpoint, args.device, args.dtype)
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()] if args.subjects else None
    res = evaluate_mc(sm, bench, args.shots, args.style, args.batch_size, args.limit, subjects,
                      progress=not args.no_progress, chat=args.chat)
    print(format_mc(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, ensure_ascii=False, indent=1))
    return res
