"""A flush adds at most what the sinks can take (issue 15).

When a backlog catches up, or a restarted worker re-sends everything it recovered, every
open window of the backlog wants its row in the same tick: after a 10-minute MySQL outage
with 10,000 users that tick took the worker from 760 to 1,110 MB.  The flusher now adds
at most ``row_budget()`` user-window rows per tick; the others wait for the next tick,
and none is lost or sent twice.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from collector.engine.aggregator import Specs
from collector.engine.state import DictState
from collector.engine.windows import WindowSpec
from collector.sinks import Row
from tests.unit.test_windows import PARTS, T0, TOPICS, Clock, Loop, event, feed, oracle

BUDGET = 7


@pytest.fixture
def specs() -> Specs:
    return Specs(WindowSpec.tumbling(60, 60), WindowSpec.hopping(300, 60, 60))


def backlog(users: int, minutes: int, seed: int) -> list[tuple[str, int, int, dict[str, Any]]]:
    """A user per event, several windows each, out of order within the grace."""
    rng = random.Random(seed)
    offsets: Counter[tuple[str, int]] = Counter()
    items = []
    for i in range(users * minutes * 3):
        e = event(f"u{i % users}", rng.choice(["click", "view"]),
                  T0 + i * (minutes * 60_000) // (users * minutes * 3)
                  + rng.randrange(-5_000, 5_000))
        topic, part = TOPICS[i % 2], int(e["user_id"][1:]) % PARTS
        offsets[(topic, part)] += 1
        items.append((topic, part, offsets[(topic, part)], e))
    return items


class Budgeted:
    """Counts the user-window rows each tick hands to the sinks."""

    def __init__(self, loop: Loop, table: str) -> None:
        self.per_tick: list[int] = []
        self.table = table
        inner = loop.flusher.add_user_rows

        def add(rows: list[Row]) -> None:
            self.per_tick.append(sum(r.table == table for r in rows))
            inner(rows)

        loop.flusher.add_user_rows = add
        loop.flusher.row_budget = lambda: BUDGET


async def drain(loop: Loop, clock: Clock, ticks: int) -> None:
    for _ in range(ticks):
        clock.now += 31  # quiet: the idle timeout closes every window
        await loop.tick()


async def test_a_backlog_is_flushed_within_the_budget_and_completely(specs: Specs) -> None:
    clock = Clock(T0 / 1000 + 3600)
    loop = Loop(specs, clock)
    budgeted = Budgeted(loop, specs.anchor.name)
    items = backlog(users=20, minutes=4, seed=5)
    assert feed(loop, items) == []
    await drain(loop, clock, 40)
    assert max(budgeted.per_tick) == BUDGET  # bounded, and it did have to wait
    expected = oracle([e for *_, e in items], specs)
    assert set(loop.rows) == set(expected)
    for ident, values in expected.items():
        row = loop.rows[ident]
        assert row.final and dict(row.values) == values, ident
        assert loop.final_writes[ident] == 1, ident


async def test_a_restart_resends_within_the_budget(specs: Specs) -> None:
    """After a restart every recovered window is re-sent: in budget-sized ticks."""
    clock = Clock(T0 / 1000 + 60)  # windows still open: nothing final yet
    state = DictState()
    first = Loop(specs, clock, state=state)
    items = backlog(users=20, minutes=2, seed=9)
    assert feed(first, items) == []
    await first.tick()
    user_rows = {i for i in first.rows if i[0] == specs.anchor.name}
    restarted = Loop(specs, clock, state=state)
    budgeted = Budgeted(restarted, specs.anchor.name)
    for _ in range(len(user_rows) // BUDGET + 2):
        await restarted.tick()
    assert budgeted.per_tick[0] == BUDGET and max(budgeted.per_tick) == BUDGET
    assert {i for i in restarted.rows if i[0] == specs.anchor.name} == user_rows
    for ident in user_rows:
        assert restarted.rows[ident].values == first.rows[ident].values, ident
