"""The environment's reward for a tool-using trajectory (agentic RL): answer stated, calls valid, no waste.

A trajectory (agent.py) is the model's whole episode: its calls, the tools' results and its final
reply. Its reward is

    R = w_answer * answer + w_valid * valid + w_needed * needed
        - w_unfinished * unfinished - w_waste * min(wasted, max_waste)

    answer      1 if the final reply *states* the ground truth gt (rules.answer_reward: the last number
                is gt and no other number appears that the question did not contain; a text answer
                appears in a short reply). Listing every candidate number earns 0, and so does
                pasting a whole weather report (humidity, wind) to a question about the temperature.
    valid       the share of calls that are valid for the schemas the conversation offered (an offered
                tool, arguments matching its JSON schema); 1 when no call was made
    needed      1 if the trajectory called the tool the task needs (the record's "tool", as in
                agent_rl.jsonl) or the record names none; 0 otherwise. Its weight is 0 by default: a
                model may answer from memory. With w_needed > 0 answering a lookup question from memory
                earns less than looking it up, so RL cannot win by abandoning a tool it calls badly
    unfinished  1 if the trajectory did not end with an answer: it ran out of tokens or of tool rounds
    wasted      calls that bought nothing: invalid calls, calls the tool answered with an error, and
                repeats of a call already made

With the default weights R lies in [-0.4, 1]; an exact, stated answer reached with valid calls scores 1
(1 + w_needed with the needed call).
The group-relative objectives (GRPO, CISPO) only see differences within a group, so the scale matters
for PPO/SPO alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .rules import answer_reward


@dataclass
class ToolRewardWeights:
    answer: float = 0.9
    valid: float = 0.1
    unfinished: float = 0.2
    waste: float = 0.05
    needed: float = 0.0
    max_waste: int = 4


def _key(call: dict) -> str:
    return json.dumps({"name": call.get("name"), "arguments": call.get("arguments")}, sort_keys=True, default=str)


def trajectory_parts(record: dict, traj) -> dict[str, float]:
    """{"answer", "valid", "needed", "unfinished", "wasted", "calls"} of one finished trajectory."""
    from ..agent import call_is_valid

    calls = traj.tool_calls
    valid = [call_is_valid(c, traj.tools) for c in calls]
    results = [m["content"] for m in traj.messages[traj.given:] if m["role"] == "tool"]
    errors = sum(str(r).startswith("error") for r in results)
    repeats = len(calls) - len({_key(c) for c in calls})
    finished = traj.finish == "stop"
    prompt = {"conversations": traj.messages[:traj.given], "gt": record["gt"]}
    answer = answer_reward(prompt, traj.reply) if finished and not traj.reply.get("tool_calls") else 0.0
    needed = record.get("tool")
    return {"answer": answer, "valid": sum(valid) / len(calls) if calls else 1.0,
            "needed": float(not needed or any(c.get("name") == needed for c in calls)),
            "unfinished": float(not finished), "wasted": float(sum(not v for v in valid) + errors + repeats),
            "calls": float(len(calls))}


class ToolReward:
    """A reward source (see reward/__init__.py) over agent trajectories: each reply carries its
    trajectory as reply["trajectory"] (train/rl/rollout.py does this with --agent)."""

    name = "tools"

    def __init__(self, weights: ToolRewardWeights | None = None):
        self.w = weights or ToolRewardWeights()

    def needs_gt(self) -> bool:
        return True

    def total(self, p: dict[str, float]) -> float:
        w = self.w
        return (w.answer * p["answer"] + w.valid * p["valid"] + w.needed * p["needed"] - w.unfinished * p["unfinished"]
                - w.waste * min(p["wasted"], w.max_waste))

    def score(self, records: list[dict], replies: list[dict]) -> tuple[list[float], dict[str, list[float]]]:
        parts: dict[str, list[float]] = {}
        totals = []
        for record, reply in zip(records, replies):
            if "trajectory" not in reply:
                raise ValueError("ToolReward scores agent trajectories: run RL with --agent")
            p = trajectory_parts(record, reply["trajectory"])
            for k, v in p.items():
                parts.setdefault(k, []).append(v)
            totals.append(self.total(p))
        return totals, parts
