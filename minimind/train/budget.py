"""Training by time budget: `--time-budget 6m` plans the number of steps so the run ends on time.

The run is measured as it goes. After every step the trainer re-plans the total number of steps
N from the time left and the mean time of a step so far:

    N = s + floor( (budget - spent - reserve) / t_step )

    s        steps done
    spent    seconds since the training command started (data preparation, model building and
             every step, evaluation and checkpoint so far; on resume the time the run had spent
             before its checkpoint is added)
    t_step   mean wall time per step over the steps after the run's first one (the first pays
             for allocation and compilation); periodic evaluations and saves fall between steps,
             so their cost is spread over the steps
    reserve  the final evaluation (the last one's measured time, else eval batches times the
             measured time of a training forward pass) and the final save (estimated from the
             checkpoint's size)

and stops as soon as N = s. (The first step always runs: nothing is known before it. When it
alone overruns a tiny budget, the final evaluation is skipped rather than run late; the final save
always happens.) The learning-rate schedule is the step schedule over the planned N,
so warmup, stable and decay are fractions of the budget: the decay of `--schedule wsd` takes the
last `--decay-frac` of the steps the budget allows, whatever the machine's speed. Warmup is
`--warmup` steps but at most WARMUP_MAX_FRAC of N, so a budget of a few seconds still reaches
its peak learning rate. The plan only moves a little from step to step as the estimate settles.

Everything depends on the clock only through `clock()`, so tests drive it with a fake clock, and
the state (time spent, step-time sums, last evaluation time) is saved in checkpoints: a resumed
run continues the same plan.
"""

from __future__ import annotations

import math
import re
import time

from ..errors import UserError

WARMUP_MAX_FRAC = 0.25  # under a time budget, warmup takes at most this share of the planned steps
SAVE_OVERHEAD_S = 0.5  # a checkpoint save: fixed cost (tokenizer, fsync) ...
SAVE_BYTES_PER_S = 200e6  # ... plus its bytes at a modest disk speed

_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str | float | int, flag: str = "--time-budget") -> float:
    """Seconds in '90s', '6m', '1.5h', '1h30m' or plain seconds ('15', 15)."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)", text.strip().lower())
        joined = "".join(f"{n}{u}" for n, u in parts)
        if not parts or joined != re.sub(r"\s+", "", text.strip().lower()) or any(u not in _UNITS for _, u in parts):
            raise UserError(f"{flag} {text!r}: give a duration like 90s, 6m, 1h, 1h30m or plain seconds")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not seconds > 0 or not math.isfinite(seconds):
        raise UserError(f"{flag} {text!r}: must be a positive duration")
    return seconds


class TimeBudget:
    """Plans the number of steps of a run that must end `seconds` after `started_at` (clock time)."""

    def __init__(self, seconds: float, clock=time.monotonic, started_at: float | None = None):
        self.seconds, self.clock = seconds, clock
        self.t0 = clock() if started_at is None else started_at
        self.spent_before = 0.0  # seconds the run spent in earlier processes (resume)
        self.step_s = 0.0  # sum of step times, the run's first step excluded
        self.steps_timed = 0
        self.first_step_s = None  # the run's first step (used until a second is timed)
        self.eval_s = None  # last evaluation's duration
        self.forward_s = 0.0  # sum of training forward passes (micro-batches), the first step's excluded
        self.forwards_timed = 0
        self.mark = None  # clock at the end of the previous step (or the loop's start)

    def spent(self) -> float:
        return self.spent_before + self.clock() - self.t0

    def begin(self) -> None:
        """Call right before the first step of this process."""
        self.mark = self.clock()

    def step_done(self) -> None:
        now = self.clock()
        dt, self.mark = now - self.mark, now
        if self.first_step_s is None:
            self.first_step_s = dt
        else:
            self.step_s += dt
            self.steps_timed += 1

    def forward_done(self, seconds: float) -> None:
        """A training forward pass took `seconds`: what an evaluation batch costs."""
        if self.first_step_s is not None:  # the first step's forwards pay for warm-up
            self.forward_s += seconds
            self.forwards_timed += 1

    def eval_done(self, seconds: float) -> None:
        self.eval_s = seconds

    def step_time(self) -> float:
        return self.step_s / self.steps_timed if self.steps_timed else self.first_step_s

    def eval_time(self, eval_batches: int, grad_accum: int) -> float:
        """Expected seconds of an evaluation: the last one's, else its batches' forward passes."""
        if self.eval_s is not None:
            return self.eval_s
        forward = self.forward_s / self.forwards_timed if self.forwards_timed else self.step_time() / grad_accum / 3
        return eval_batches * forward

    def plan(self, step: int, eval_batches: int, grad_accum: int, save_bytes: int) -> int:
        """Total steps so the run (with its final evaluation and save) ends within the budget."""
        t = max(self.step_time(), 1e-9)
        reserve = self.eval_time(eval_batches, grad_accum) + SAVE_OVERHEAD_S + save_bytes / SAVE_BYTES_PER_S
        left = self.seconds - self.spent() - reserve
        return step + max(0, math.floor(left / t))

    def affords(self, seconds: float) -> bool:
        return self.spent() + seconds <= self.seconds

    def state_dict(self) -> dict:
        return {"seconds": self.seconds, "spent": self.spent(), "step_s": self.step_s,
                "steps_timed": self.steps_timed, "first_step_s": self.first_step_s, "eval_s": self.eval_s,
                "forward_s": self.forward_s, "forwards_timed": self.forwards_timed}

    def load_state_dict(self, d: dict) -> None:
        self.spent_before = d["spent"]  # this process's own time (startup included) adds to it
        self.step_s, self.steps_timed = d["step_s"], d["steps_timed"]
        self.first_step_s, self.eval_s = d["first_step_s"], d["eval_s"]
        self.forward_s, self.forwards_timed = d.get("forward_s", 0.0), d.get("forwards_timed", 0)


def warmup_steps(warmup: int, total: int, budgeted: bool) -> int:
    """Warmup length: `warmup` steps, capped at WARMUP_MAX_FRAC of the plan under a time budget."""
    return min(warmup, math.ceil(WARMUP_MAX_FRAC * total)) if budgeted else warmup
