"""Exact-match task accuracy on a held-out split (`minimind eval tasks`).

Each held-out record is {"family", "conversations": [system?, user], "answer"}. The model answers
greedily; when it calls a tool (the calculator), the call is executed and the model continues
with the result, up to two rounds, as an agent would. The reply is correct when its final content (thinking removed) contains the answer:
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


def load_heldout(path, limit: int | None = None) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: held-out file not found (make one with `minimind data synth`)")
    per_family, out = defaultdict(int), []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
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
    """-> {"families": {family: {"correct", "total", "accuracy"}}, "samples": [...]}"""
    from tqdm.auto import tqdm

    from ..infer.engine import Engine, SamplingParams, think_suppression
    from ..infer.parse import parse_assistant
    from ..infer.tools import run_tool_call
    from ..tokenizer import render_chat

    engine = Engine(model, tok, max_batch=batch_size)  # continuous batching, batch_size rows at a time
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, suppress_ids=think_suppression(tok, think))
    convs = [list(r["conversations"]) for r in records]
    replies = [None] * len(records)
    pending = list(range(len(records)))
    for _ in range(max_tool_rounds + 1):  # a tool call is executed and the model continues
        prompts = [render_chat(tok, convs[i], add_generation_prompt=True, open_thinking=think)[0] for i in pending]
        calls = []
        with tqdm(total=len(pending), disable=not progress, desc="eval", unit="reply") as bar:
            outs = engine.generate(prompts, params, on_result=lambda i, r: bar.update())
        for i, o in zip(pending, outs):
            parsed = parse_assistant(o.text, open_thinking=think)
            replies[i] = (o.text, parsed)
            if parsed["tool_calls"]:
                calls.append(i)
                convs[i] = convs[i] + [
                    {"role": "assistant", "content": parsed["content"], "tool_calls": parsed["tool_calls"]},
                    *({"role": "tool", "content": run_tool_call(c)} for c in parsed["tool_calls"])]
        pending = calls
        if not pending:
            break
    fam = defaultdict(lambda: {"correct": 0, "total": 0})
    samples = []
    for r, (raw, parsed) in zip(records, replies):
        ok = is_correct(parsed["content"], r["answer"])
        fam[r["family"]]["correct"] += ok
        fam[r["family"]]["total"] += 1
        samples.append({"family": r["family"], "prompt": r["conversations"][-1]["content"], "answer": r["answer"],
                        "reply": parsed["content"], "reasoning": parsed["reasoning_content"], "raw": raw,
                        "correct": bool(ok)})
    for v in fam.values():
        v["accuracy"] = v["correct"] / v["total"]
    return {"families": dict(sorted(fam.items())), "samples": samples}


def format_table(res: dict) -> str:
    lines = [f"{'family':<12} {'correct':>8} {'total':>6} {'accuracy':>9}"]
    for name, v in res["families"].items():
        lines.append(f"{name:<12} {v['correct']:>8} {v['total']:>6} {v['accuracy']:>8.1%}")
    return "\n".join(lines)


def run_eval_tasks(args) -> dict:
    from ..infer.generate import load_for_inference

    records = load_heldout(args.data, args.limit)
    model, tok = load_for_inference(args.checkpoint, args.device, quantize=getattr(args, "quantize", "none"))
    res = evaluate_tasks(model, tok, records, think=args.think == "on", batch_size=args.batch_size,
                         max_new_tokens=args.max_new_tokens, progress=True)
    print(format_table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, ensure_ascii=False, indent=2))
    return res
