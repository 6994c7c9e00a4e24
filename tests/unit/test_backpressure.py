"""Backpressure decisions: pause past the limit, resume well below it, follow rebalances."""

from __future__ import annotations

from collector.engine.backpressure import Backpressure

P = {("raw.web", 0), ("raw.web", 1), ("raw.app", 0)}


def test_pauses_past_the_limit_and_resumes_below_the_fraction() -> None:
    bp = Backpressure(1000, 0.5)
    assert bp.decide(1000, P) == (set(), set())  # at the limit: fine
    pause, resume = bp.decide(1001, P)
    assert pause == P and resume == set() and bp.engaged
    assert bp.decide(2000, P) == (set(), set())  # already paused: nothing to do
    assert bp.decide(600, P) == (set(), set())  # draining, not below half yet
    pause, resume = bp.decide(499, P)
    assert pause == set() and resume == P and not bp.engaged
    assert bp.decide(900, P) == (set(), set())  # no flapping between 500 and 1000


def test_partitions_assigned_while_paused_are_paused_too() -> None:
    bp = Backpressure(10)
    bp.decide(11, {("raw.web", 0)})
    pause, _ = bp.decide(11, {("raw.web", 0), ("raw.web", 1)})
    assert pause == {("raw.web", 1)}
    # revoked partitions are not resumed here (their new owner decides)
    _, resume = bp.decide(0, {("raw.web", 1)})
    assert resume == {("raw.web", 1)}
