"""Rewards for RL: verifiable rules (rules.py), a native reward model (model.py), reward models from
other projects through transformers (external.py), and a weighted mix of them (`RewardMix`).

A reward source has `score(records, replies) -> (rewards in [0, 1], {component: values})` and
`needs_gt()` (whether records must carry a ground truth "gt").
"""

from __future__ import annotations


class RewardMix:
    """R = sum_i w_i R_i / sum_i w_i over sources; every source's mean is logged as reward/<name>."""

    def __init__(self, sources: list[tuple[object, float]]):
        self.sources = [(s, float(w)) for s, w in sources if w]
        if not self.sources:
            raise ValueError("at least one reward source with a non-zero weight is needed")
        self.total = sum(w for _, w in self.sources)

    def needs_gt(self) -> bool:
        return any(s.needs_gt() for s, _ in self.sources)

    def score(self, records: list[dict], replies: list[dict]) -> tuple[list[float], dict[str, list[float]]]:
        totals = [0.0] * len(records)
        parts: dict[str, list[float]] = {}
        for source, w in self.sources:
            values, extra = source.score(records, replies)
            parts[source.name] = values
            parts.update({f"{source.name}/{k}": v for k, v in extra.items()})
            totals = [t + w * v / self.total for t, v in zip(totals, values)]
        return totals, parts
