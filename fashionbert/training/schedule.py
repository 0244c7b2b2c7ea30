"""Learning-rate schedule for budgeted training: warm-up, then linear decay to zero at whichever
budget ends first, the step count or the time budget.

Why not ``LambdaLR`` over the steps alone: a run bounded by minutes (the demo's 10 CPU minutes,
``continue-pretrain --max-minutes``) is usually stopped by the clock long before its step cap,
with the learning rate still near its peak: the demo planned 2,000 steps and did 215, ending at
94 % of the peak. Such a checkpoint is the noisy iterate of a hot optimiser, not an annealed
one. Here the decay reads the clock as well, so a time-capped run anneals to zero at its
deadline on a fast machine and a slow one alike.

Without a time budget the schedule is a pure function of the step, so a resumed run repeats
an uninterrupted one exactly. With one it depends on elapsed time, which the state dict
carries across a resume: a killed and resumed run gets the rest of its budget, not a new one.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch


class BudgetSchedule:
    """Sets the optimiser's learning rates each step; ``state_dict`` survives a resume.

    ``factor = (step + 1) / warmup_steps`` during warm-up, then ``1 - max(p_steps, p_time)``
    where ``p_steps`` is the share of the post-warm-up steps done and ``p_time`` the share of the
    post-warm-up time budget spent (0 without a budget).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                 max_seconds: float | None = None, clock: Any = time.perf_counter, started: float | None = None):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.optimizer = optimizer
        self.total_steps, self.warmup_steps = int(total_steps), max(0, int(warmup_steps))
        self.max_seconds = float(max_seconds) if max_seconds else math.inf
        self.clock = clock
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.step_count = 0
        self.elapsed_before = 0.0  # seconds spent by earlier processes of a resumed run
        self.warmup_end_seconds: float | None = None if self.warmup_steps else 0.0
        self.started = clock() if started is None else started  # the job's start: its setup counts too
        self._apply()

    def elapsed(self) -> float:
        """Budgeted seconds spent so far, earlier processes of a resumed run included."""
        return self.elapsed_before + (self.clock() - self.started)

    def out_of_time(self, elapsed: float | None = None) -> bool:
        """Whether the time budget is spent (``elapsed``: an agreed value, as in :meth:`step`)."""
        return (self.elapsed() if elapsed is None else elapsed) >= self.max_seconds

    def factor(self, elapsed: float | None = None) -> float:
        if self.step_count < self.warmup_steps:
            return (self.step_count + 1) / self.warmup_steps
        p_steps = (self.step_count - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        p_time = 0.0
        if math.isfinite(self.max_seconds) and self.warmup_end_seconds is not None:
            now = self.elapsed() if elapsed is None else elapsed
            remaining = self.max_seconds - self.warmup_end_seconds
            p_time = (now - self.warmup_end_seconds) / remaining if remaining > 0 else 1.0
        return max(0.0, 1.0 - max(p_steps, p_time))

    def _apply(self, elapsed: float | None = None) -> None:
        f = self.factor(elapsed)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def step(self, elapsed: float | None = None) -> None:
        """Call after ``optimizer.step()``: sets the rate of the next step.

        ``elapsed``: the budgeted seconds to decay by, when several processes must agree on one
        value (the ranks of a data-parallel job: their clocks differ by milliseconds, and
        replicas stepping with different rates would drift apart); default, this process's clock.
        """
        self.step_count += 1
        now = self.elapsed() if elapsed is None else elapsed
        if self.warmup_end_seconds is None and self.step_count >= self.warmup_steps:
            self.warmup_end_seconds = now
        self._apply(now)

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": list(self.base_lrs), "step_count": self.step_count, "elapsed": self.elapsed(),
                "warmup_end_seconds": self.warmup_end_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a saved run: its step, its base rates and (for a time budget) the time it spent."""
        self.base_lrs = [float(x) for x in state["base_lrs"]]
        self.step_count = int(state["step_count"] if "step_count" in state else state["last_epoch"])  # or a LambdaLR's
        self.elapsed_before = float(state.get("elapsed", 0.0))
        passed = self.step_count >= self.warmup_steps
        self.warmup_end_seconds = state.get("warmup_end_seconds", 0.0 if passed else None)
        self.started = self.clock()
        self._apply()
