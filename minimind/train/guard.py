"""Watching the loss: non-finite steps are skipped, runs of them stop training, spikes are logged.

A step is *bad* when its loss or its gradient norm is not finite (NaN or inf): an fp16 overflow,
a batch with nothing to predict, a learning rate that diverged. Applying such a step would write
NaN into every weight and into AdamW's moments, and the run would be lost from there on. So the
trainer skips it: no optimizer step, no scheduler step, the gradients are dropped, and the step
counter does not move (the next batch is tried in its place). The guard counts bad steps, in
total and in a row; `max_bad` in a row stop the run, because then something other than one
unlucky batch is wrong.

A *spike* is a finite loss far above the recent level. It is only logged: spikes are common and
usually recover, but they are the first sign of a learning rate that is too high. With an
exponential moving average m and variance v of the loss (weight beta per step),

    spike  <=>  loss - m > max(SIGMAS * sqrt(v), MIN_RISE * m)       after WARMUP accepted steps,

then m <- beta m + (1 - beta) loss,  v <- beta v + (1 - beta)(loss - m)^2   (West 1979 / Finch 2009,
the incremental EMA variance).
"""

from __future__ import annotations

import math

SIGMAS = 6.0  # how many standard deviations above the average counts as a spike
MIN_RISE = 0.25  # ... and at least this fraction above it (the noise floor of a flat curve)
BETA = 0.95  # EMA weight: about 20 steps of memory
WARMUP = 20  # accepted steps before spikes are judged (the first steps fall fast)


class StepGuard:
    """Counts non-finite steps (total and consecutive) and flags loss spikes."""

    def __init__(self, max_bad: int = 20):
        self.max_bad = max_bad
        self.bad_total = 0
        self.bad_in_row = 0
        self.mean = 0.0
        self.var = 0.0
        self.seen = 0

    @staticmethod
    def is_bad(loss: float, grad_norm: float) -> bool:
        return not (math.isfinite(loss) and math.isfinite(grad_norm))

    def record_bad(self) -> bool:
        """Count a skipped step; True when `max_bad` steps in a row were bad (stop the run)."""
        self.bad_total += 1
        self.bad_in_row += 1
        return self.max_bad > 0 and self.bad_in_row >= self.max_bad

    def record_good(self, loss: float) -> float | None:
        """Count an applied step; returns loss / average when it is a spike, else None."""
        self.bad_in_row = 0
        spike = None
        if self.seen >= WARMUP and loss - self.mean > max(SIGMAS * math.sqrt(self.var), MIN_RISE * self.mean):
            spike = loss / self.mean
        if self.seen == 0:
            self.mean = loss
        delta = loss - self.mean
        self.mean += (1 - BETA) * delta
        self.var = BETA * (self.var + (1 - BETA) * delta * delta)
        self.seen += 1
        return spike

    def state_dict(self) -> dict:
        return {"bad_total": self.bad_total, "bad_in_row": self.bad_in_row, "mean": self.mean,
                "var": self.var, "seen": self.seen}

    def load_state_dict(self, d: dict) -> None:
        for k in ("bad_total", "bad_in_row", "mean", "var", "seen"):
            setattr(self, k, d.get(k, getattr(self, k)))
