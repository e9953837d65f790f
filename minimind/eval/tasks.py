"""Exact-match task accuracy on a held-out split (`minimind eval tasks`).

Each held-out record is {"family", "conversations": [system?, user], "answer"}. The model answers
greedily, through the agent loop: when it calls a tool its record offers, the call is executed
and the model continues with the result, up to two rounds. The reply is correct when its final
content (thinking removed) contains the answer:
numbers must appear as a whole number (so "171" does not match "71"), Latin text as whole
words, case-insensitively, and Chinese text as a substring. Accuracy is reported per family.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from ..errors import UserError


def is_correct(reply: str, answer: str) -> bool:
    answer = str(answer).strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", answer):
        return re.search(rf"(?<![\d.]){re.escape(answer)}(?![\d]|\.\d)", reply) is not None
    if re.fullmatch(r"[\x00-\x7f]+", answer):  # Latin text: whole words ("He" must not match "The")
        return re.search(rf"(?<![A-Za-z]){re.escape(answer)}(?![A-Za-z])", reply, re.IGNORECASE) is not None
    return answer in reply


_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8, kept by errors="surrogateescape"


def load_heldout(path, limit: int | None = None) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: held-out file not found (make one with `minimind data synth`)")
    per_family, out = defaultdict(int), []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if _UNDECODED.search(line):
                raise UserError(f"{path}:{n}: not UTF-8 text; the held-out file is UTF-8 JSONL")
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(r, dict) or not {"family", "conversations", "answer"} <= r.keys():
                raise UserError(f"{path}:{n}: expected keys family, conversations, answer")
            if limit is not None and per_family[r["family"]] >= limit:
                continue
            per_family[r["family"]] += 1
            out.append(r)
    return out


def evaluate_tasks(model, tok, records: list[dict], think: bool = False, batch_size: int = 32,
                   max_new_tokens: int = 96, progress: bool = False, max_tool_rounds: int = 2) -> dict:
    """-> {"families": {family: {"correct", "total", "accuracy"}}, "samples": [...]}

    Every record runs as a greedy agent episode (minimind/agent.py, the loop `eval tools` and
    agentic RL use): a record whose system message offers tools may call them, up to
    `max_tool_rounds` rounds; the final reply is scored."""
    from ..agent import describe
    from .tools import run_local

    trajs = run_local(model, tok, records, max_tool_rounds, max_new_tokens, batch_size, think, progress,
                      desc="eval")
    fam = defaultdict(lambda: {"correct": 0, "total": 0})
    samples = []
    for r, t in zip(records, trajs):
        reply = t.reply or {"content": "", "reasoning_content": None}
        ok = is_correct(reply["content"], r["answer"])
        fam[r["family"]]["correct"] += ok
        fam[r["family"]]["total"] += 1
        samples.append({"family": r["family"], "prompt": r["conversations"][-1]["content"], "answer": r["answer"],
                        "reply": reply["content"], "reasoning": reply["reasoning_content"], "episode": describe(t),
                        "tool_calls": len(t.tool_calls), "correct": bool(ok)})
    for v in fam.values():
        v["accuracy"] = v["correct"] / v["total"]
    return {"families": dict(sorted(fam.items())), "samples": samples}


def format_table(res: dict) -> str:
    lines = [f"{'family':<12} {'correct':>8} {'total':>6} {'accuracy':>9}"]
    for name, v in res["families"].items():
        lines.append(f"{name:<12} {v['correct']:>8} {v['total']:>6} {v['accuracy']:>8.1%}")
    return "\n".join(lines)


def run_eval_tasks(args) -> dict:
    from ..checkpoint import check_checkpoint_dir
    from ..infer.generate import load_for_inference

    check_checkpoint_dir(args.checkpoint)  # a wrong checkpoint path is named before the data file
    records = load_heldout(args.data, args.limit)
    model, tok = load_for_inference(args.checkpoint, args.device, quantize=getattr(args, "quantize", "none"))
    res = evaluate_tasks(model, tok, records, think=args.think == "on", batch_size=args.batch_size,
                         max_new_tokens=args.max_new_tokens, progress=True)
    print(format_table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, ensure_ascii=False, indent=2))
    return res
