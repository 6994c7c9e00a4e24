"""Windows in memory: combiner, flush, merge; idempotence, lateness and closing.

The oracle here is computed independently, by grouping the input events directly.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import pytest

from collector.engine.aggregator import Aggregator, Specs
from collector.engine.flusher import Flusher
from collector.engine.merger import Merger
from collector.engine.processor import RawRecord
from collector.engine.state import DictState
from collector.engine.windows import (
    USER_ACTIVITY,
    WindowSpec,
    add_activity,
    merge_activity,
    new_activity,
    row_values,
)
from collector.sinks import Row
from tests.oracle import session_oracle

T0 = 1_700_000_040_000  # a minute boundary, in ms
TOPICS = ["raw.web", "raw.mobile"]
PARTS = 2


def test_window_starts() -> None:
    tumbling = WindowSpec.tumbling(60, 60)
    assert list(tumbling.starts(T0 + 59_999)) == [T0]
    hopping = WindowSpec.hopping(300, 60, 60)
    starts = list(hopping.starts(T0 + 10))
    assert starts == [T0 - 240_000, T0 - 180_000, T0 - 120_000, T0 - 60_000, T0]
    assert hopping.newest_start(T0 + 10) == T0
    assert not tumbling.is_closed(T0, T0 + 60_000 + 59_999)
    assert tumbling.is_closed(T0, T0 + 120_000)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Loop:
    """Combiner -> partials 'topic' -> merger -> rows, all in memory."""

    def __init__(self, specs: Specs, clock: Clock, *, state: DictState | None = None,
                 session_update_s: float = 0.0) -> None:
        """``state``: the tables a restarted worker recovers (default: empty)."""
        self.clock = clock
        self.rows: dict[tuple[Any, ...], Row] = {}
        self.final_writes: defaultdict[tuple[Any, ...], int] = defaultdict(int)
        self.agg = Aggregator(DictState() if state is None else state, specs, clock=clock)
        self.merger = Merger(
            DictState(),
            specs,
            [f"{t}|{p}" for t in TOPICS for p in range(PARTS)],
            add_rows=self.add_rows,
            expires_ms=specs.expires_ms,
            clock=clock,
        )
        self.flusher = Flusher(
            self.agg,
            self.agg.state,
            specs,
            TOPICS,
            idle_timeout_s=30,
            send_partial=self.send,
            partials_partitions=1,
            add_user_rows=self.add_rows,
            clock=clock,
            started_at=clock.now,
            session_update_s=session_update_s,
        )

    def add_rows(self, rows: list[Row]) -> None:
        for row in rows:
            old = self.rows.get(row.ident)
            if old is not None and old.final:
                assert row.final, f"final row replaced by running row {row}"
            self.rows[row.ident] = row
            if row.final:
                self.final_writes[row.ident] += 1
        self.flusher.on_user_rows_written(  # as MySQL confirms the per-user tables' rows
            [r for r in rows if self.flusher.specs.definition(r.table).per_user])

    async def send(self, key: bytes, value: bytes, partition: int | None) -> Any:
        import orjson

        self.merger.apply(0, orjson.loads(value))

        async def ack() -> None:
            return None

        return ack()

    async def tick(self) -> None:
        assigned = {(t, p) for t in TOPICS for p in range(PARTS)}
        await self.flusher.tick(assigned)
        self.merger.tick({0})


def event(
    uid: str,
    etype: str,
    ts: int,
    value: float | None = None,
    seg: str = "pro",
    country: str = "DE",
    source: str = "web",
) -> dict[str, Any]:
    return {
        "event_id": f"{uid}-{ts}",
        "user_id": uid,
        "type": etype,
        "ts": ts,
        "value": value,
        "source": source,
        "segment": seg,
        "country": country,
        "properties": {},
        "device_id": None,
    }


def oracle(events: list[dict[str, Any]], specs: Specs) -> dict[tuple[Any, ...], dict[str, Any]]:
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for e in events:
        ws = e["ts"] - e["ts"] % 60_000
        k = ("event_stats", ws, 60, (e["source"], e["type"]))
        r = out.setdefault(
            k,
            {"count": 0, "value_count": 0, "value_sum": 0.0, "value_min": None, "value_max": None},
        )
        r["count"] += 1
        if e["value"] is not None:
            r["value_count"] += 1
            r["value_sum"] += e["value"]
            r["value_min"] = (
                e["value"] if r["value_min"] is None else min(r["value_min"], e["value"])
            )
            r["value_max"] = (
                e["value"] if r["value_max"] is None else max(r["value_max"], e["value"])
            )
        k = ("user_activity", ws, 60, (e["user_id"],))
        u = out.setdefault(k, {"count": 0, "types": [], "first_ts": e["ts"], "last_ts": e["ts"]})
        u["count"] += 1
        if e["type"] not in u["types"]:  # the first max_user_types, in arrival order
            u["types"].append(e["type"])
        u["first_ts"] = min(u["first_ts"], e["ts"])
        u["last_ts"] = max(u["last_ts"], e["ts"])
        for start in specs.hopping.starts(e["ts"]):
            k = ("segment_stats", start, 300, (e["segment"], e["country"]))
            s = out.setdefault(k, {"count": 0, "value_sum": 0.0})
            s["count"] += 1
            s["value_sum"] += e["value"] or 0.0
    for v in out.values():
        if "types" in v:
            v["types_truncated"] = len(v["types"]) > specs.max_user_types
            v["types"] = sorted(v["types"][:specs.max_user_types])
    out.update(session_oracle(events, gap_ms=specs.session.size_ms,
                              max_user_types=specs.max_user_types))
    return out


def feed(loop: Loop, items: list[tuple[str, int, int, dict[str, Any]]]) -> list[Any]:
    batch = [(RawRecord(t, p, off, None, None), e) for t, p, off, e in items]
    return loop.agg.apply(batch)


@pytest.fixture
def specs() -> Specs:
    return Specs(WindowSpec.tumbling(60, 60), WindowSpec.hopping(300, 60, 60))


async def test_golden_windows_close_by_watermark_and_idle(specs: Specs) -> None:
    clock = Clock(T0 / 1000 + 3600)  # wall clock far ahead: only idle can close by time
    loop = Loop(specs, clock)
    rng = random.Random(3)
    counted: list[dict[str, Any]] = []
    offsets: defaultdict[tuple[str, int], int] = defaultdict(int)

    def item(e: dict[str, Any]) -> tuple[str, int, int, dict[str, Any]]:
        topic = "raw." + e["source"]
        part = int(e["user_id"][1:]) % PARTS
        offsets[(topic, part)] += 1
        return topic, part, offsets[(topic, part)], e

    first = []
    for i in range(400):
        ts = T0 + i * 450 + rng.randrange(-20_000, 20_000)  # out of order within grace
        e = event(
            f"u{rng.randrange(7)}",
            rng.choice(["click", "view"]),
            ts,
            value=rng.choice([None, 1.5, 2.0, 7.25]),
            seg=rng.choice(["pro", "free"]),
            source=rng.choice(["web", "mobile"]),
        )
        first.append(item(e))
        counted.append(e)
    assert feed(loop, first) == []
    await loop.tick()
    # the watermark is now ~T0+180s; a ts of T0+10s is past window end + grace: late
    late_e = event("u1", "click", T0 + 10_000, source="web")
    lates = feed(loop, [item(late_e)])
    assert len(lates) == 1 and "event_stats" in lates[0].tables
    assert "user_activity" in lates[0].tables and "user_sessions" in lates[0].tables
    # quiet period: idle timeout closes everything, even with no newer events
    clock.now += 31
    await loop.tick()
    clock.now += 1
    await loop.tick()
    expected = oracle(counted, specs)
    # the hopping windows of the late event that were still open counted it
    watermark = max(e["ts"] for e in counted)
    for start in specs.hopping.starts(late_e["ts"]):
        if not specs.hopping.is_closed(start, watermark):
            seg = expected.setdefault(
                ("segment_stats", start, 300, ("pro", "DE")), {"count": 0, "value_sum": 0.0}
            )
            seg["count"] += 1
    assert {i for i in loop.rows} == set(expected)
    for ident, values in expected.items():
        row = loop.rows[ident]
        assert row.final, ident
        assert dict(row.values) == values, ident  # exact: binary fractions only
        assert loop.final_writes[ident] == 1, ident


async def test_replaying_a_batch_changes_nothing(specs: Specs) -> None:
    clock = Clock(T0 / 1000 + 10)
    loop = Loop(specs, clock)
    batch = [
        ("raw.web", 0, off, event("u0", "click", T0 + off * 100, value=1.0)) for off in range(1, 50)
    ]
    feed(loop, batch)
    before = {k: dict(v) for k, v in loop.agg.state.data.items()}  # type: ignore[attr-defined]
    feed(loop, batch)  # a restart re-consumes from the last committed offset
    feed(loop, batch[10:])
    after = {k: dict(v) for k, v in loop.agg.state.data.items()}  # type: ignore[attr-defined]
    assert before == after


async def test_a_replay_after_windows_closed_is_not_dead_lettered_again(specs: Specs) -> None:
    """After a restart, events the slot had absorbed are skipped before the lateness check,
    so a replay of events whose windows have since closed yields no 'late' records."""
    clock = Clock(T0 / 1000 + 3600)  # stream time never passes the wall clock
    loop = Loop(specs, clock)
    early = [("raw.web", 0, off, event("u0", "click", T0 + off)) for off in range(1, 6)]
    later = [("raw.web", 0, 6, event("u0", "click", T0 + 600_000))]  # closes T0's windows
    assert feed(loop, early) == []
    assert feed(loop, later) == []
    before = {k: dict(v) for k, v in loop.agg.state.data.items()}  # type: ignore[attr-defined]
    assert feed(loop, early + later) == []  # re-consumed from an older committed offset
    after = {k: dict(v) for k, v in loop.agg.state.data.items()}  # type: ignore[attr-defined]
    assert before == after
    assert loop.agg.replayed == 6
    # a genuinely new event for a closed window is still late
    lates = feed(loop, [("raw.web", 0, 7, event("u0", "view", T0 + 2))])
    assert len(lates) == 1 and "event_stats" in lates[0].tables


async def test_a_tick_reads_only_keys_that_have_something_to_send(specs: Specs) -> None:
    """Clean, open windows are skipped from their key alone (no store read); a dirty key
    or one whose window has just closed is read and sent."""
    clock = Clock(T0 / 1000 + 3600)
    loop = Loop(specs, clock)
    feed(loop, [("raw.web", 0, 1, event("u0", "click", T0 + 1_000, value=1.0))])
    await loop.tick()
    reads: list[str] = []
    original = loop.agg.state.get

    def counting_get(partition: int, key: str) -> Any:
        reads.append(key)
        return original(partition, key)

    loop.agg.state.get = counting_get  # type: ignore[method-assign]
    await loop.tick()
    assert [k for k in reads if k[0] in "pu"] == []  # nothing dirty, nothing closed
    # a later event closes the first windows (watermark past end + grace): they are read
    feed(loop, [("raw.web", 0, 2, event("u0", "click", T0 + 600_000, value=1.0))])
    reads.clear()
    await loop.tick()
    closing = f"p|event_stats|raw.web|0|web|click|{T0}"
    assert closing in reads  # its slot's watermark closed it: read, sent final
    assert closing not in loop.agg.state.data  # type: ignore[attr-defined]


async def test_a_tick_delivers_every_partial_before_it_reads_a_user_window(
    specs: Specs,
) -> None:
    """The users' pass holds the loop (~1 s for 18,000 rows): the partials, whose merged
    rows are the global aggregates, are sent and delivered before it starts, whatever the
    order of the keys in the index."""
    clock = Clock(T0 / 1000 + 3600)
    loop = Loop(specs, clock)
    feed(loop, [("raw.web", 0, i, event(f"u{i}", "click", T0 + 1_000 * i, value=1.0))
                for i in range(1, 6)])
    assert {k[0] for k in loop.agg.index} >= {"p", "u"}
    trace: list[str] = []
    original_get, original_send = loop.agg.state.get, loop.send

    def get(partition: int, key: str) -> Any:
        trace.append(f"read {key[0]}")
        return original_get(partition, key)

    async def send(key: bytes, value: bytes, partition: int | None) -> Any:
        await (await original_send(key, value, partition))  # the merge applied it

        async def delivered() -> None:
            trace.append("delivered")

        return delivered()

    loop.agg.state.get = get  # type: ignore[method-assign]
    loop.flusher.send_partial = send
    await loop.tick()
    first_user = trace.index("read u")
    assert "read p" in trace and "delivered" in trace
    assert "read p" not in trace[first_user:] and "delivered" not in trace[first_user:]


async def test_a_quiet_slot_with_a_backlog_is_not_closed_by_the_idle_timeout(
    specs: Specs,
) -> None:
    """Idle means caught up and quiet.  A slot whose messages are still waiting to be
    fetched (a backlog elsewhere took the consumer's time) must not close its windows
    through wall-clock now: its older events would all become late."""
    clock = Clock(T0 / 1000 + 10)
    loop = Loop(specs, clock)
    backlog = {("raw.web", 0)}
    loop.flusher.caught_up = lambda topic, partition: (topic, partition) not in backlog
    feed(loop, [("raw.web", 0, 1, event("u0", "click", T0 + 1_000))])
    await loop.tick()
    clock.now += 3600  # an hour without a single event from raw.web/0
    await loop.tick()
    lates = feed(loop, [("raw.web", 0, 2, event("u0", "click", T0 + 2_000))])
    assert lates == []  # the backlog's events still count
    backlog.clear()  # caught up: now quiet means idle
    clock.now += 3600
    await loop.tick()
    lates = feed(loop, [("raw.web", 0, 3, event("u0", "click", T0 + 3_000))])
    assert len(lates) == 1


async def test_envelope_elements_share_an_offset_and_all_count(specs: Specs) -> None:
    clock = Clock(T0 / 1000 + 10)
    loop = Loop(specs, clock)
    batch = [("raw.web", 0, 7, event("u0", "click", T0 + i)) for i in range(5)]
    feed(loop, batch)
    user = loop.agg.state.get(0, f"u|u0|{T0}")
    assert user is not None and user["agg"]["count"] == 5
    feed(loop, batch)
    user = loop.agg.state.get(0, f"u|u0|{T0}")
    assert user is not None and user["agg"]["count"] == 5


async def test_merge_replaces_a_slot_instead_of_adding(specs: Specs) -> None:
    rows: list[Row] = []
    merger = Merger(DictState(), specs, ["a|0", "b|0"], add_rows=rows.extend, expires_ms=3_600_000)
    partial = {
        "t": "p",
        "table": "event_stats",
        "key": ["web", "click"],
        "ws": T0,
        "slot": "a|0",
        "closed": False,
        "agg": {
            "count": 3,
            "value_count": 0,
            "value_sum": 0.0,
            "value_min": None,
            "value_max": None,
            "latest": T0,
        },
    }
    merger.apply(0, partial)
    merger.apply(0, partial)  # re-sent after a restart
    merger.apply(0, {**partial, "slot": "b|0"})
    merger.tick({0})
    assert rows[-1].values["count"] == 6 and not rows[-1].final
    merger.apply(0, {"t": "m", "slot": "a|0", "closed": T0 + 200_000})
    merger.tick({0})
    merger.apply(0, {"t": "m", "slot": "b|0", "closed": T0 + 200_000})
    merger.tick({0})
    assert rows[-1].final and rows[-1].values["count"] == 6
    n = len(rows)
    merger.tick({0})
    assert len(rows) == n, "a final row is written once"


async def test_old_windows_get_their_final_row_before_they_expire(specs: Specs) -> None:
    """Regression: windows hours old (replayed backlog) were expired before being written."""
    rows: list[Row] = []
    merger = Merger(DictState(), specs, ["a|0"], add_rows=rows.extend, expires_ms=3_600_000)
    merger.apply(0, {"t": "p", "table": "segment_stats", "key": ["pro", "DE"], "ws": T0,
                     "slot": "a|0", "closed": True,
                     "agg": {"count": 2, "value_sum": 3.0, "latest": T0}})
    merger.apply(0, {"t": "m", "slot": "a|0", "closed": T0 + 10 * 3_600_000})
    stats = merger.tick({0})
    assert stats["final"] == 1 and rows[-1].final and rows[-1].values["count"] == 2
    assert merger.tick({0})["deleted"] == 1
    assert merger.index == {}


def test_backlog_watch_flushes_once_after_a_drained_backlog() -> None:
    from collector.engine.flusher import BacklogWatch

    watch = BacklogWatch(1.0)
    # steady traffic: caught up after every batch, never early
    assert not any(watch.drained(True, True, 0.05) for _ in range(50))
    # records 0.5 s old are too fresh to matter
    assert not watch.drained(False, True, 0.5)
    assert not watch.drained(True, True, 0.0)
    # records 2 s old: one flush when drained, and only with something to flush
    assert not watch.drained(False, True, 2.0)
    assert not watch.drained(False, True, 0.3)
    assert watch.drained(True, True, 0.0)
    assert not watch.drained(True, True, 0.0)
    assert not watch.drained(False, False, 3.0)
    assert not watch.drained(True, False, 0.0)
    assert not BacklogWatch(0).drained(True, True, 1.0)  # disabled
    never = BacklogWatch(0)
    never.drained(False, True, 100.0)
    assert not never.drained(True, True, 0.0)


def test_by_default_steady_load_sets_off_no_flush() -> None:
    """Under steady load the worker is seldom at the high watermark (each fetch finds
    new records) and a timer flush holds it up for a second or two, but what it takes
    is fresh.  Timing how long it was not caught up set off early flushes: 14-17 a
    minute at a 1 s threshold (p99 11.7-13.4 s against 8.7-9.2 s without, fifteenth
    round), and still one every 10-20 s at 5 s once fetches stopped idling
    (seventeenth round)."""
    from collector.config.settings import WindowSettings
    from collector.engine.flusher import BacklogWatch

    default = WindowSettings.model_fields["flush_after_backlog_seconds"].default
    watch = BacklogWatch(default)
    for _ in range(600):  # a minute of 0.1 s batches, never caught up, 0.2-2 s behind
        assert not watch.drained(False, True, 0.2)
        assert not watch.drained(False, True, 2.0)
    assert not watch.drained(True, True, 0.1)
    # a real backlog (a restart, a burst) still flushes as soon as it is drained
    assert not watch.drained(False, True, 40.0)
    assert not watch.drained(False, True, 1.0)
    assert watch.drained(True, True, 0.1)


def test_a_user_window_keeps_at_most_max_user_types() -> None:
    """A user sending a new type with every event: bounded state, a writable row."""
    agg = new_activity()
    for i in range(5000):
        add_activity(agg, f"t{i:04d}.{'x' * 55}", T0 + i, 30)
    assert agg["count"] == 5000 and len(agg["types"]) == 30 and agg["truncated"]
    assert agg["types"] == sorted(agg["types"]) == [f"t{i:04d}.{'x' * 55}" for i in range(30)]
    values = row_values(USER_ACTIVITY, agg)
    assert values["types_truncated"] is True
    assert len(",".join(values["types"])) <= 2048  # the MySQL column
    small = new_activity()
    add_activity(small, "b", T0)
    add_activity(small, "a", T0)
    add_activity(small, "b", T0)
    assert small["types"] == ["a", "b"]
    assert row_values(USER_ACTIVITY, small)["types_truncated"] is False
    merged = new_activity()
    merge_activity(merged, agg, 30)
    merge_activity(merged, small, 30)
    assert len(merged["types"]) == 30 and merged["truncated"] and merged["count"] == 5003
