"""Event-time semantics as real producers need them, in memory (combiner -> merge -> rows).

Each scenario is one way traffic really arrives: a worker idle before old data, late
events inside the allowed lateness, a device with a fast clock, retries, a user on two
partitions, a crash between a late event and its dead letter.  Expected rows come from
the plain oracle in ``test_windows`` (grouping the events directly).
"""

from __future__ import annotations

from typing import Any

import pytest

from collector.config import SettingsError, load_settings
from collector.engine.aggregator import Specs
from collector.engine.dedupe import IDS_INLINE, id_chunk_keys
from collector.engine.processor import home_partition
from collector.engine.windows import WindowSpec
from tests.unit.test_windows import T0, Clock, Loop, event, feed, oracle

HOUR_MS = 3_600_000


@pytest.fixture
def specs() -> Specs:
    """Grace 60 s, allowed lateness 1 h, state kept 2 h: the shipped defaults."""
    return Specs(WindowSpec.tumbling(60, 60, 3600), WindowSpec.hopping(300, 60, 60, 3600),
                 expires_ms=2 * HOUR_MS,
                 dedupe_ms=900_000)


class Offsets:
    def __init__(self) -> None:
        self.next: dict[tuple[str, int], int] = {}

    def item(self, e: dict[str, Any], part: int = 0) -> tuple[str, int, int, dict[str, Any]]:
        topic = "raw." + e["source"]
        off = self.next.get((topic, part), 0)
        self.next[(topic, part)] = off + 1
        return topic, part, off, e


def values(loop: Loop) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {ident: dict(row.values) for ident, row in loop.rows.items()}


async def settle(loop: Loop, clock: Clock) -> None:
    """Quiet long enough for the idle rule to emit everything."""
    for _ in range(2):
        clock.now += 31
        await loop.tick()


async def test_an_idle_worker_counts_an_hour_of_old_events(specs: Specs) -> None:
    now_s = T0 / 1000 + HOUR_MS / 1000
    clock = Clock(now_s)
    loop = Loop(specs, clock)
    await settle(loop, clock)  # idle for longer than the idle timeout: slots closed by now
    offsets = Offsets()
    old = [event(f"u{i % 3}", "click", T0 + i * 1_000) for i in range(120)]  # ~1 h ago
    assert feed(loop, [offsets.item(e) for e in old]) == []
    await settle(loop, clock)
    assert values(loop) == oracle(old, specs)
    assert all(row.final and row.revision == 0 for row in loop.rows.values())


async def test_a_late_event_inside_the_allowed_lateness_updates_the_final_row(
    specs: Specs,
) -> None:
    clock = Clock(T0 / 1000 + 900)
    loop = Loop(specs, clock)
    await loop.tick()  # the first tick indexes the (empty) tables
    offsets = Offsets()
    first = [event("u1", "click", T0 + i * 1_000, value=1.0) for i in range(30)]
    ahead = [event("u1", "view", T0 + 600_000 + i) for i in range(3)]  # stream time +10 min
    assert feed(loop, [offsets.item(e) for e in first + ahead]) == []
    clock.now += 31  # the other slots (no events) close by the idle rule
    await loop.tick()
    ident = ("event_stats", T0, 60, ("web", "click"))
    assert loop.rows[ident].final and loop.rows[ident].revision == 0  # past end + grace
    late = [event("u1", "click", T0 + 45_000 + i, value=2.0) for i in range(4)]
    assert feed(loop, [offsets.item(e) for e in late]) == []  # 10 min behind: not late
    await loop.tick()
    want = oracle(first + ahead + late, specs)
    assert loop.rows[ident].values == want[ident]
    assert loop.rows[ident].final and loop.rows[ident].revision == 1
    user = ("user_activity", T0, 60, ("u1",))
    assert loop.rows[user].values == want[user] and loop.rows[user].revision == 1
    # beyond the allowed lateness: dead-lettered, the row stays
    far = event("u1", "click", T0 + 601_000 + HOUR_MS, value=5.0)  # stream time +1 h
    clock.now += HOUR_MS / 1000
    assert feed(loop, [offsets.item(far)]) == []
    too_late = feed(loop, [offsets.item(event("u1", "buy", T0 + 50_000))])
    assert len(too_late) == 1 and set(too_late[0].tables) == {
        "event_stats", "user_activity", "segment_stats", "user_sessions"}
    await loop.tick()
    assert loop.rows[ident].values == want[ident]


async def test_a_fast_device_clock_makes_nobody_late(specs: Specs) -> None:
    now_ms = T0 + 1_200_000
    clock = Clock(now_ms / 1000)
    loop = Loop(specs, clock)
    offsets = Offsets()
    future = [event("u9", "click", now_ms + 290_000 + i) for i in range(50)]
    assert feed(loop, [offsets.item(e) for e in future]) == []
    slot = loop.agg.slot("raw.web", 0)
    assert slot["wm"] == now_ms  # stream time stops at the worker's clock
    on_time = [event("u1", "click", now_ms - 5_000 + i) for i in range(10)]
    older = [event("u2", "view", T0 + i * 1_000) for i in range(20)]  # 20 min old
    assert feed(loop, [offsets.item(e) for e in on_time + older]) == []
    await settle(loop, clock)
    assert values(loop) == oracle(future + on_time + older, specs)


async def test_the_same_event_twice_is_counted_once(specs: Specs) -> None:
    clock = Clock(T0 / 1000 + 300)
    loop = Loop(specs, clock)
    offsets = Offsets()
    events = [event("u1", "click", T0 + i * 500, value=1.0) for i in range(20)]
    again = [dict(e) for e in events[:5]]  # a producer retry: same ids, new offsets
    same_batch = [dict(events[7]), dict(events[7])]
    assert feed(loop, [offsets.item(e) for e in [*events, *again, *same_batch]]) == []
    # an HTTP retry on the other source topic: still the same (user_id, event_id)
    retried = [{**e, "source": "mobile"} for e in events[10:13]]
    assert feed(loop, [offsets.item(e) for e in retried]) == []
    assert loop.agg.duplicates == {"web": 7, "mobile": 3}
    await settle(loop, clock)
    assert values(loop) == oracle(events, specs)


async def test_one_users_events_on_two_partitions_are_all_counted(specs: Specs) -> None:
    """Offsets are guarded per (topic, partition): partition 1's low offsets are not
    mistaken for replays of partition 0's high ones."""
    clock = Clock(T0 / 1000 + 300)
    loop = Loop(specs, clock)
    offsets = Offsets()
    offsets.next[("raw.web", 0)] = 500
    on_0 = [event("u1", "click", T0 + i * 100) for i in range(10)]
    on_1 = [event("u1", "view", T0 + 5_000 + i * 100) for i in range(10)]
    assert feed(loop, [offsets.item(e, 0) for e in on_0]) == []
    assert feed(loop, [offsets.item(e, 1) for e in on_1]) == []
    await settle(loop, clock)
    user = ("user_activity", T0, 60, ("u1",))
    assert loop.rows[user].values["count"] == 20


async def test_a_late_event_replayed_after_a_crash_is_dead_lettered_again(
    specs: Specs,
) -> None:
    """The slot absorbed the late event's offset, but its dead letter may not have been
    written before the crash: the replay yields it again.  Counted events are skipped."""
    clock = Clock(T0 / 1000 + 3 * 3600)
    loop = Loop(specs, clock)
    batch = [("raw.web", 0, 0, event("u1", "click", T0 + 2 * HOUR_MS)),
             ("raw.web", 0, 1, event("u1", "click", T0)),  # 2 h behind: late
             ("raw.web", 0, 2, event("u1", "view", T0 + 2 * HOUR_MS + 1))]
    first = feed(loop, batch)
    assert [late.record.offset for late in first] == [1]
    replay = feed(loop, batch)
    assert [late.record.offset for late in replay] == [1]
    user = loop.agg.state.get(0, f"u|u1|{T0 + 2 * HOUR_MS}")
    assert user is not None and user["agg"]["count"] == 2  # counted once


async def test_merge_writes_a_correction_once_and_ignores_retired_windows(
    specs: Specs,
) -> None:
    from collector.engine.merger import Merger
    from collector.engine.state import DictState
    from collector.sinks import Row

    rows: list[Row] = []
    merger = Merger(DictState(), specs, ["a|0"], add_rows=rows.extend,
                    expires_ms=specs.expires_ms)
    agg = {"count": 3, "value_sum": 3.0, "latest": T0}
    partial = {"t": "p", "table": "segment_stats", "key": ["pro", "DE"], "ws": T0,
               "slot": "a|0", "closed": True, "agg": agg}
    merger.apply(0, partial)
    merger.apply(0, {"t": "m", "slot": "a|0", "closed": T0 + 400_000, "ret": T0 + 400_000})
    merger.tick({0})
    assert rows[-1].final and rows[-1].revision == 0
    merger.apply(0, partial)  # re-sent unchanged: no correction
    assert merger.tick({0})["rows"] == 0
    merger.apply(0, {**partial, "agg": {**agg, "count": 4}})
    merger.tick({0})
    assert rows[-1].final and rows[-1].revision == 1 and rows[-1].values["count"] == 4
    # the slot's mark falls back (a quiet slot got events): final stays, expiry does not
    merger.apply(0, {"t": "m", "slot": "a|0", "closed": T0, "ret": T0 + 400_000})
    merger.apply(0, {"t": "m", "slot": "a|0", "closed": T0 + 2 * HOUR_MS, "ret": 0})
    assert merger.tick({0})["deleted"] == 1
    merger.apply(0, {**partial, "agg": {**agg, "count": 1}})  # a stale replay
    assert merger.stale == 1 and merger.tick({0})["rows"] == 0


async def test_merge_keeps_the_partial_that_absorbed_more_during_a_rebalance(
    specs: Specs,
) -> None:
    """The old owner of a raw partition sent count 4 at offset 9; the new owner recovered
    a changelog one record behind and re-sends count 3 at offset 8 before its replay
    catches up.  The row must not move back to 3, then forward again."""
    from collector.engine.merger import Merger
    from collector.engine.state import DictState
    from collector.sinks import Row

    rows: list[Row] = []
    merger = Merger(DictState(), specs, ["a|0", "b|0"], add_rows=rows.extend,
                    expires_ms=specs.expires_ms)
    partial = {"t": "p", "table": "segment_stats", "key": ["pro", "DE"], "ws": T0,
               "slot": "a|0", "closed": False}
    merger.apply(0, {**partial, "agg": {"count": 4, "value_sum": 4.0, "latest": T0},
                     "off": 9})
    merger.tick({0})
    merger.apply(0, {**partial, "agg": {"count": 3, "value_sum": 3.0, "latest": T0},
                     "off": 8})
    assert merger.behind == 1 and merger.tick({0})["rows"] == 0
    assert [r.values["count"] for r in rows] == [4]
    # the new owner caught up, then counted one more: accepted
    merger.apply(0, {**partial, "agg": {"count": 5, "value_sum": 5.0, "latest": T0},
                     "off": 10})
    merger.tick({0})
    assert [r.values["count"] for r in rows] == [4, 5]
    # another slot's offsets are its own
    merger.apply(0, {**partial, "slot": "b|0", "off": 2,
                     "agg": {"count": 1, "value_sum": 1.0, "latest": T0}})
    merger.tick({0})
    assert rows[-1].values["count"] == 6


def test_home_partition_is_kafkas_default_partitioner() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    parts = list(range(4))
    for uid in ["u1", "user-42", "ü", "a" * 64]:
        want = DefaultPartitioner()(uid.encode(), parts, parts)
        assert home_partition(uid, 4) == want


@pytest.mark.parametrize(
    ("windows", "needle"),
    [
        ({"expires_seconds": 3600}, "expires_seconds must cover"),
        ({"allowed_lateness_seconds": 30}, "allowed_lateness_seconds"),
        ({"session_gap_seconds": 30}, "session_gap_seconds must be at least tumbling"),
    ],
)
def test_window_horizons_are_validated(windows: dict[str, int], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        load_settings(windows=windows)


async def test_event_ids_are_dropped_past_the_dedupe_horizon(specs: Specs) -> None:
    """The ids bound the state by dedupe_seconds of event time, not by the lateness."""
    clock = Clock(T0 / 1000 + 2 * 3600)
    loop = Loop(specs, clock)
    await loop.tick()
    offsets = Offsets()
    first = [event("u1", "click", T0 + i) for i in range(10)]
    feed(loop, [offsets.item(e) for e in first])
    await loop.tick()
    key = f"u|u1|{T0}"
    entry = loop.agg.state.get(0, key)
    assert entry is not None
    chunks = id_chunk_keys(entry)
    held = [eid for k in chunks for eid in (loop.agg.state.get(0, k) or {})["ids"]]
    assert len(chunks) == 10 // IDS_INLINE and sorted(held + list(entry["ids"])) == sorted(
        e["event_id"] for e in first)
    # stream time 16 min on (past end + dedupe 15 min, inside the lateness of 1 h)
    feed(loop, [offsets.item(event("u2", "view", T0 + 16 * 60_000))])
    await loop.tick()
    entry = loop.agg.state.get(0, key)
    assert entry is not None and entry["ids"] == {} and entry["agg"]["count"] == 10
    assert "ic" not in entry and all(loop.agg.state.get(0, k) is None for k in chunks)
    assert loop.rows[("user_activity", T0, 60, ("u1",))].values["count"] == 10
