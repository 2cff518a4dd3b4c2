"""LogBudget: lines per kind and interval, the rest counted and given back once."""

from __future__ import annotations

import pytest

from kirim_events.logbudget import LogBudget


def test_a_kind_gets_burst_lines_an_interval_and_the_rest_are_counted_once() -> None:
    clock = [100.0]
    budget = LogBudget(2, 60, lambda: clock[0])
    turns = [budget.take("a") for _ in range(5)]
    assert [t.log for t in turns] == [True, True, False, False, False]
    assert [t.first_held for t in turns] == [False, False, True, False, False]
    assert budget.take("b").log  # another kind has its own budget
    clock[0] += 30
    assert budget.held() == []  # the interval is not over
    clock[0] += 30
    turn = budget.take("a")  # a new interval: its first line says what was held back
    assert (turn.log, turn.held, turn.held_for) == (True, 3, 60.0)
    assert budget.held() == []  # "b" held nothing; "a" was said
    assert budget.take("a").held == 0


def test_a_clock_that_steps_back_begins_a_new_interval() -> None:
    # else a wall clock set back an hour would hold every line back for that hour
    clock = [1000.0]
    budget = LogBudget(1, 60, lambda: clock[0])
    assert budget.take("a").log
    assert not budget.take("a").log
    clock[0] -= 3600
    turn = budget.take("a")
    assert (turn.log, turn.held, turn.held_for) == (True, 1, 0.0)


def test_held_when_final_gives_back_intervals_not_over() -> None:
    budget = LogBudget(1, 60, lambda: 0.0)
    for _ in range(4):
        budget.take("a")
    assert budget.held() == []
    assert budget.held(final=True) == [("a", 3, 0.0)]
    assert budget.held(final=True) == []


@pytest.mark.parametrize(("burst", "every"), [(0, 60.0), (1, 0.0), (1, float("nan"))])
def test_a_budget_that_logs_nothing_or_never_ends_is_refused(burst: int, every: float) -> None:
    with pytest.raises(ValueError, match="burst >= 1 and every > 0"):
        LogBudget(burst, every, lambda: 0.0)
