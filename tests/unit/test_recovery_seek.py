"""Changelog records Faust dropped during a rebalance are fetched again.

Faust's getmany drops what it fetched when flow stops meanwhile and seeks only the
partitions with a committed offset back; a changelog partition under recovery kept
its position past the dropped records and recovery waited for them forever.
"""

from __future__ import annotations

import logging
from collections import Counter
from types import SimpleNamespace
from typing import Any

from faust.types import TP

from collector.adapters.recovery_seek import changelog_rewinds, rewind_changelogs

ACTIVE, STANDBY, GONE = TP("c-changelog", 0), TP("c-changelog", 1), TP("c-changelog", 2)


def recovery(active: dict[TP, int], standby: dict[TP, int]) -> Any:
    return SimpleNamespace(active_tps=set(active), active_offsets=Counter(active),
                           standby_tps=set(standby), standby_offsets=Counter(standby))


def test_a_partition_fetched_past_what_recovery_saw_goes_back() -> None:
    # recovery has seen nothing of ACTIVE (-1) and offset 40 of STANDBY; the fetcher
    # stands at 79 and 60: what lies between was dropped
    rec = recovery({ACTIVE: -1}, {STANDBY: 40})
    got = changelog_rewinds(rec, {ACTIVE, STANDBY}, {ACTIVE: 79, STANDBY: 60})
    assert got == {ACTIVE: 0, STANDBY: 41}


def test_a_partition_where_recovery_is_stays() -> None:
    rec = recovery({ACTIVE: 78}, {STANDBY: -1})
    assert changelog_rewinds(rec, {ACTIVE, STANDBY}, {ACTIVE: 79, STANDBY: 0}) == {}


def test_unassigned_or_unpositioned_partitions_are_left_alone() -> None:
    rec = recovery({ACTIVE: -1, GONE: -1}, {})
    assert changelog_rewinds(rec, {ACTIVE}, {ACTIVE: None, GONE: 50}) == {}


class FakeConsumer:
    """The consumer surface rewind_changelogs uses: positions and seek_wait."""

    def __init__(self, rec: Any, positions: dict[TP, int]) -> None:
        self.positions = positions
        self.seeks: list[dict[TP, int]] = []
        tables = SimpleNamespace(changelog_topics={"c-changelog"}, recovery=rec)
        self.app = SimpleNamespace(tables=tables)

    def assignment(self) -> set[TP]:
        return set(self.positions)

    async def position(self, tp: TP) -> int:
        return self.positions[tp]

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.seeks.append(dict(partitions))
        self.positions.update(partitions)


async def test_rewind_seeks_the_consumer_and_then_has_nothing_left(
    caplog: Any,
) -> None:
    consumer = FakeConsumer(recovery({ACTIVE: -1}, {STANDBY: 60}), {ACTIVE: 79, STANDBY: 61})
    with caplog.at_level(logging.INFO, logger="collector.adapters.recovery_seek"):
        assert await rewind_changelogs(consumer) == {ACTIVE: 0}
    assert consumer.seeks == [{ACTIVE: 0}]
    assert "c-changelog[0]@0" in caplog.text
    assert await rewind_changelogs(consumer) == {}  # now where recovery is
    assert consumer.seeks == [{ACTIVE: 0}]


async def test_no_tables_no_positions_asked() -> None:
    consumer = FakeConsumer(recovery({ACTIVE: -1}, {}), {ACTIVE: 79})
    consumer.app.tables.changelog_topics = set()
    assert await rewind_changelogs(consumer) == {}
    assert consumer.seeks == []
