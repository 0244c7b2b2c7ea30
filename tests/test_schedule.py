"""BudgetSchedule: warm-up, then decay to zero at whichever of the step and time budgets ends first."""

from __future__ import annotations

import pytest
import torch

from fashionbert.training.schedule import BudgetSchedule


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def _run(schedule: BudgetSchedule, steps: int, clock: FakeClock | None = None, seconds_per_step: float = 0.0) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(schedule.get_last_lr()[0])
        if clock is not None:
            clock.now += seconds_per_step
        schedule.step()
    return lrs


def test_without_a_time_budget_it_is_the_step_schedule() -> None:
    opt = _optimizer(2.0)
    reference = torch.optim.lr_scheduler.LambdaLR(
        _optimizer(2.0), lambda s: (s + 1) / 4 if s < 4 else max(0.0, (20 - s) / 16))
    ours = _run(BudgetSchedule(opt, total_steps=20, warmup_steps=4), 20)
    theirs = []
    for _ in range(20):
        theirs.append(reference.get_last_lr()[0])
        reference.optimizer.step()
        reference.step()
    assert ours == pytest.approx(theirs)
    assert ours[0] == pytest.approx(0.5) and ours[3] == pytest.approx(2.0) and ours[-1] == pytest.approx(2.0 / 16)


def test_a_time_budget_that_ends_first_anneals_to_zero_at_the_deadline() -> None:
    clock = FakeClock()
    # 1,000 planned steps, but at 1 s per step the 60 s budget allows ~60: the decay follows the clock.
    schedule = BudgetSchedule(_optimizer(1.0), total_steps=1000, warmup_steps=10, max_seconds=60.0, clock=clock)
    lrs = _run(schedule, 59, clock, seconds_per_step=1.0)
    assert lrs[9] == pytest.approx(1.0)  # end of warm-up: the peak
    assert lrs[35] == pytest.approx(0.5)  # halfway through the post-warm-up time
    assert all(a > b for a, b in zip(lrs[10:], lrs[11:]))
    assert not schedule.out_of_time() and schedule.get_last_lr()[0] == pytest.approx(1 / 50)
    clock.now += 1.0
    assert schedule.out_of_time() and schedule.factor() == 0.0
    # Step-based only, the same run would have stopped at ~95 % of the peak.
    assert (1000 - 59) / 990 > 0.95


def test_resume_spends_the_rest_of_the_budget_not_a_new_one() -> None:
    clock = FakeClock()
    first = BudgetSchedule(_optimizer(), total_steps=1000, warmup_steps=0, max_seconds=100.0, clock=clock)
    _run(first, 40, clock, seconds_per_step=1.0)
    saved = first.state_dict()
    assert saved["elapsed"] == pytest.approx(40.0) and saved["step_count"] == 40
    clock.now += 500.0  # the process was dead for a while: that time is not spent
    resumed = BudgetSchedule(_optimizer(), total_steps=1000, warmup_steps=0, max_seconds=100.0, clock=clock)
    resumed.load_state_dict(saved)
    assert resumed.elapsed() == pytest.approx(40.0) and resumed.get_last_lr()[0] == pytest.approx(0.6)
    clock.now += 60.0
    assert resumed.out_of_time()


def test_loads_the_state_of_a_lambda_lr_from_an_older_run() -> None:
    old = torch.optim.lr_scheduler.LambdaLR(_optimizer(1.0), lambda s: 1.0)
    for _ in range(7):
        old.optimizer.step()
        old.step()
    schedule = BudgetSchedule(_optimizer(1.0), total_steps=17, warmup_steps=2)
    schedule.load_state_dict(old.state_dict())
    assert schedule.step_count == 7 and schedule.get_last_lr()[0] == pytest.approx(1 - 5 / 15)


def test_rejects_an_empty_step_budget() -> None:
    with pytest.raises(ValueError, match="total_steps"):
        BudgetSchedule(_optimizer(), total_steps=0, warmup_steps=0)


def test_ranks_passing_the_agreed_elapsed_time_set_identical_rates() -> None:
    fast, slow = FakeClock(), FakeClock()
    ranks = [BudgetSchedule(_optimizer(), total_steps=1000, warmup_steps=2, max_seconds=30.0, clock=c) for c in (fast, slow)]
    for step in range(20):
        fast.now += 1.0
        slow.now += 1.003  # clocks drift by milliseconds a step
        agreed = max(r.elapsed() for r in ranks)  # what the all-reduce (MAX) gives every rank
        for r in ranks:
            r.step(agreed)
        assert ranks[0].get_last_lr() == ranks[1].get_last_lr()
    assert ranks[0].get_last_lr()[0] < 0.5
