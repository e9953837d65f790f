"""Verifiable (rule) rewards: is the answer right, is the format right, is the length sensible.

Each rule maps (record, reply) to a number in [0, 1]; `record` is an RL record
({"conversations": [...], "gt": "..."}) and `reply` the parsed assistant message
({"content", "reasoning_content", "tool_calls"}, see infer/parse.py) plus the finish reason.

answer      1 if the reply *states* the ground truth `gt`, else 0:
              numbers  - the last number in the reply equals gt, and the reply states no number that
                         is neither gt nor in the question ("12 + 30 = 42." earns it for gt 42; listing
                         "40, 41, 42" does not: a policy must not learn to spray candidates);
              text     - gt appears as a whole word (Latin, case-insensitive) or as a substring
                         (Chinese), and no more than `max_chars` characters of content surround it
                         (a list of every capital is not an answer).
format      think=True: 1 if the reply has non-empty reasoning closed by </think>; think=False: 1 if
            it has no reasoning. Tool calls in a reply to a plain question: 0.
length      1 if the reply ended by itself (finish "stop"), 0 if it ran out of tokens.

Rules are combined by `RuleReward` with weights normalised to sum 1, so the total stays in [0, 1].
"""

from __future__ import annotations

import re

from ..errors import UserError
from ..eval.tasks import is_correct

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _numbers(text: str) -> list[str]:
    return [_canon(n) for n in NUMBER.findall(text.replace(",", ""))]


def _canon(n: str) -> str:
    return str(int(float(n))) if float(n).is_integer() else str(float(n))


def question_text(record: dict) -> str:
    return " ".join(str(m.get("content") or "") for m in record.get("conversations", [])
                    if m.get("role") in ("system", "user", "tool"))


def answer_reward(record: dict, reply: dict, max_chars: int = 160) -> float:
    gt = str(record["gt"]).strip()
    content = (reply.get("content") or "").strip()
    if not content:
        return 0.0
    if NUMBER.fullmatch(gt.replace(",", "")):
        nums = _numbers(content)
        if not nums or nums[-1] != _canon(gt.replace(",", "")):
            return 0.0
        allowed = set(_numbers(question_text(record))) | {_canon(gt.replace(",", ""))}
        return 1.0 if all(n in allowed for n in nums) else 0.0
    return 1.0 if is_correct(content, gt) and len(content) <= max_chars + len(gt) else 0.0


def format_reward(record: dict, reply: dict, think: bool = False) -> float:
    if reply.get("tool_calls"):
        return 0.0
    reasoning = (reply.get("reasoning_content") or "").strip()
    return float(bool(reasoning)) if think else float(not reasoning)


def length_reward(record: dict, reply: dict) -> float:
    return 1.0 if reply.get("finish_reason", "stop") == "stop" else 0.0


RULES = {"answer": answer_reward, "format": format_reward, "length": length_reward}


class RuleReward:
    """A weighted sum of rules, each in [0, 1]: score(records, replies) -> (totals, {rule: values})."""

    name = "rules"

    def __init__(self, weights: dict[str, float] | None = None, think: bool = False):
        weights = weights or {"answer": 1.0}
        unknown = set(weights) - set(RULES)
        if unknown:
            raise UserError(f"--rules: unknown reward rules {sorted(unknown)}; choose from {sorted(RULES)}")
        total = sum(weights.values())
        self.weights = {k: v / total for k, v in weights.items() if v}
        self.think = think

    def needs_gt(self) -> bool:
        return "answer" in self.weights

    def score(self, records: list[dict], replies: list[dict]) -> tuple[list[float], dict[str, list[float]]]:
        parts = {}
        for name in self.weights:
            fn = RULES[name]
            kw = {"think": self.think} if name == "format" else {}
            parts[name] = [fn(r, y, **kw) for r, y in zip(records, replies)]
        totals = [sum(self.weights[k] * parts[k][i] for k in parts) for i in range(len(records))]
        return totals, parts
