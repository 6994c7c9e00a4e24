"""user_sessions, in memory (combiner -> flusher -> rows), against tests/oracle.py.

Gap 10 min, grace 60 s, allowed lateness 1 h, state kept 2 h, event ids kept 1 h (a
retry older than the dedupe horizon counts again, in every table alike).  Each scenario is one way
traffic arrives: in order with pauses, out of order, a late event bridging two emitted
sessions, a retry, an event past the allowed lateness, a quiet stream, a restart.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from collector.aggregates import DEFINITIONS, USER_SESSIONS, Count
from collector.engine.aggregator import Specs
from collector.engine.sessions import session_key
from collector.engine.windows import WindowSpec
from collector.sinks import Row
from tests.oracle import session_oracle
from tests.unit.test_windows import T0, Clock, Loop, event, feed

GAP_MS = 600_000
MIN_MS = 60_000


@pytest.fixture
def specs() -> Specs:
    return Specs(WindowSpec.tumbling(60, 60, 3600), WindowSpec.hopping(300, 60, 60, 3600),
                 WindowSpec.sessions(GAP_MS // 1000, 60, 3600), expires_ms=7_200_000,
                 dedupe_ms=3_600_000)  # retries up to an hour late are recognised


class Feeder:
    """Offsets per (topic, partition), as a producer's would grow."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.next: dict[tuple[str, int], int] = {}

    def __call__(self, events: list[dict[str, Any]], part: int = 0) -> list[Any]:
        items = []
        for e in events:
            topic = "raw." + e["source"]
            off = self.next.get((topic, part), 0)
            self.next[(topic, part)] = off + 1
            items.append((topic, part, off, e))
        return feed(self.loop, items)


def sessions(loop: Loop) -> dict[tuple[Any, ...], Row]:
    return {i: r for i, r in loop.rows.items() if r.table == "user_sessions"}


def live(loop: Loop) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Session rows that are sessions (not merged_into markers), as oracle values."""
    return {i: dict(r.values) for i, r in sessions(loop).items()
            if r.values.get("merged_into") is None}


def markers(loop: Loop) -> dict[int, int]:
    """start -> merged_into of every marker row."""
    return {r.window_start_ms: r.values["merged_into"] for r in sessions(loop).values()
            if r.values.get("merged_into") is not None}


def ident(start: int, user: str = "u1") -> tuple[Any, ...]:
    return ("user_sessions", start, GAP_MS // 1000, (user,))


async def started(specs: Specs, clock: Clock, update_s: float = 0.0) -> tuple[Loop, Feeder]:
    """A loop whose first tick indexed the (empty) tables, as a worker's does."""
    loop = Loop(specs, clock, session_update_s=update_s)
    await loop.tick()
    return loop, Feeder(loop)


async def settle(loop: Loop, clock: Clock) -> None:
    for _ in range(2):
        clock.now += 31
        await loop.tick()


async def test_a_gap_splits_and_less_than_a_gap_does_not(specs: Specs) -> None:
    clock = Clock(T0 / 1000 + 4 * 3600)
    loop, send = await started(specs, clock)
    events = [event("u1", "click", T0), event("u1", "view", T0 + GAP_MS - 1),
              event("u1", "click", T0 + 2 * GAP_MS - 1),  # exactly one gap later: a new one
              event("u1", "buy", T0 + 2 * GAP_MS + 5)]
    assert send(events) == []
    await settle(loop, clock)
    assert live(loop) == session_oracle(events, gap_ms=GAP_MS)
    assert set(live(loop)) == {ident(T0), ident(T0 + 2 * GAP_MS - 1)}
    first = sessions(loop)[ident(T0)]
    assert first.final and first.revision == 0 and first.values["count"] == 2
    assert first.values["last_ts"] == T0 + GAP_MS - 1


async def test_a_late_event_bridges_two_emitted_sessions(specs: Specs) -> None:
    clock = Clock(T0 / 1000 + 45 * 60)
    loop, send = await started(specs, clock)
    a = [event("u1", "click", T0 + i * 1_000) for i in range(5)]
    b = [event("u1", "view", T0 + 15 * MIN_MS + i * 1_000) for i in range(5)]
    ahead = [event("u1", "buy", T0 + 40 * MIN_MS)]  # stream time: both a and b final
    assert send(a + b + ahead) == []
    clock.now += 31  # raw.mobile (no events) closes by the idle rule; raw.web by time
    await loop.tick()
    assert sessions(loop)[ident(T0)].final
    assert sessions(loop)[ident(T0 + 15 * MIN_MS)].final
    bridge = [event("u1", "scroll", T0 + 8 * MIN_MS)]  # 8 min after a, 7 before b
    assert send(bridge) == []  # 32 min behind stream time: inside the allowed lateness
    await loop.tick()
    everything = a + b + ahead + bridge
    assert live(loop) == session_oracle(everything, gap_ms=GAP_MS)
    merged = sessions(loop)[ident(T0)]
    assert merged.final and merged.revision == 1 and merged.values["count"] == 11
    assert merged.values["types"] == ["click", "scroll", "view"]
    # b's row does not stay behind as a session: it is a marker pointing at a
    marker = sessions(loop)[ident(T0 + 15 * MIN_MS)]
    assert marker.final and marker.values["merged_into"] == T0
    assert marker.values["count"] == 0 and marker.values["types"] == []
    # confirmed by the sink: the marker leaves the state, the sessions stay
    await loop.tick()
    entry = loop.agg.state.get(0, session_key("user_sessions", "u1"))
    assert entry is not None and entry["dead"] == [] and len(entry["rows"]) == 2


async def test_an_out_of_order_event_moves_the_start_and_marks_the_old_row(
    specs: Specs,
) -> None:
    clock = Clock(T0 / 1000 + 20 * 60)
    loop, send = await started(specs, clock)
    first = [event("u1", "click", T0 + 5 * MIN_MS + i) for i in range(3)]
    assert send(first) == []
    await loop.tick()  # written, not final
    assert not sessions(loop)[ident(T0 + 5 * MIN_MS)].final
    earlier = [event("u1", "view", T0 + 1 * MIN_MS)]  # 4 min before it: same session
    assert send(earlier) == []
    await settle(loop, clock)
    assert live(loop) == session_oracle(first + earlier, gap_ms=GAP_MS)
    assert markers(loop) == {T0 + 5 * MIN_MS: T0 + 1 * MIN_MS}
    # out of order inside one batch, before any row was written: no marker at all
    other = [event("u2", "click", T0 + 3 * MIN_MS), event("u2", "click", T0)]
    assert send(other) == []
    await settle(loop, clock)
    assert ident(T0 + 3 * MIN_MS, "u2") not in loop.rows
    assert live(loop) == session_oracle(first + earlier + other, gap_ms=GAP_MS)


async def test_an_event_past_the_allowed_lateness_is_dead_lettered(specs: Specs) -> None:
    clock = Clock(T0 / 1000 + 4 * 3600)
    loop, send = await started(specs, clock)
    now = [event("u1", "click", T0 + 2 * 3_600_000)]
    assert send(now) == []
    # sessions are chains of the user windows: late with its user window, whose end +
    # allowed lateness (T0 + 1 h + 1 min + 1 h) is past stream time (T0 + 2 h)
    too_late = event("u1", "view", T0 + 3_600_000 - 1)
    inside = event("u2", "view", T0 + 3_600_000)
    lates = send([too_late, inside])
    assert [late.event for late in lates if "user_sessions" in late.tables] == [too_late]
    assert {"user_activity", "user_sessions"} <= set(lates[0].tables)
    errors = [e for e in lates[0].errors if e["loc"] == "user_sessions"]
    assert "allowed lateness" in errors[0]["msg"]
    await settle(loop, clock)
    assert live(loop) == session_oracle([*now, inside], gap_ms=GAP_MS)


async def test_duplicates_are_counted_once(specs: Specs) -> None:
    clock = Clock(T0 / 1000 + 4 * 3600)
    loop, send = await started(specs, clock)
    events = [event("u1", "click", T0 + i * 1_000) for i in range(10)]
    retried = [dict(e) for e in events[2:6]]
    assert send(events + retried) == []
    assert send([{**e, "source": "mobile"} for e in events[:3]]) == []
    await settle(loop, clock)
    assert live(loop) == session_oracle(events, gap_ms=GAP_MS)
    assert loop.agg.duplicates == {"web": 4, "mobile": 3}


async def test_a_quiet_stream_emits_its_sessions_by_the_idle_rule(specs: Specs) -> None:
    clock = Clock(T0 / 1000 + 60)  # the wall clock is just past the events
    loop, send = await started(specs, clock)
    events = [event("u1", "click", T0 + i * 1_000) for i in range(10)]
    assert send(events) == []
    await loop.tick()
    assert not sessions(loop)[ident(T0)].final  # stream time is T0 + 9 s
    clock.now += 31  # quiet and caught up past the idle timeout: the close mark is now
    await loop.tick()
    assert not sessions(loop)[ident(T0)].final  # now < last + gap + grace
    clock.now = (T0 + 9_000 + GAP_MS + 60_000) / 1000 + 1
    await loop.tick()
    row = sessions(loop)[ident(T0)]
    assert row.final and row.revision == 0 and row.values["count"] == 10


async def test_state_is_dropped_once_nothing_can_reach_a_session(specs: Specs) -> None:
    clock = Clock(T0 / 1000 + 6 * 3600)
    loop, send = await started(specs, clock)
    assert send([event("u1", "click", T0)]) == []
    await loop.tick()
    key = session_key("user_sessions", "u1")
    assert loop.agg.state.get(0, key) is not None
    # stream time past last + gap + (gap + allowed lateness): no event can touch it
    assert send([event("u2", "click", T0 + 2 * GAP_MS + 3_600_000)]) == []
    await settle(loop, clock)  # final row written, confirmed by the loop's sink, dropped
    assert loop.agg.state.get(0, key) is None
    assert sessions(loop)[ident(T0)].final


async def test_a_restart_keeps_sessions_and_marks_rows_written_before_it(
    specs: Specs,
) -> None:
    clock = Clock(T0 / 1000 + 4 * 3600)
    loop, send = await started(specs, clock)
    first = [event("u1", "click", T0 + 5 * MIN_MS)]
    assert send(first) == []
    await loop.tick()
    # the same tables (recovered), fresh everything else
    restarted = Loop(specs, clock, state=loop.agg.state)  # type: ignore[arg-type]
    restarted.rows = loop.rows
    send.loop = restarted
    earlier = [event("u1", "view", T0 + 2 * MIN_MS)]  # moves the start
    assert send(earlier) == []
    await settle(restarted, clock)
    assert live(restarted) == session_oracle(first + earlier, gap_ms=GAP_MS)
    assert markers(restarted) == {T0 + 5 * MIN_MS: T0 + 2 * MIN_MS}


@pytest.mark.parametrize("update_s", [0.0, 12.0])
@pytest.mark.parametrize("seed", [11, 18, 26])
async def test_random_traffic_matches_the_oracle(specs: Specs, seed: int,
                                                 update_s: float) -> None:
    """Out of order by up to 20 min, stragglers up to 55 min, in batches with flushes
    5 s apart, retries, pauses: the live rows are the oracle's sessions and every marker
    leads to one, whether each flush updates the sessions or only every 12 s do."""
    rng = random.Random(seed)
    clock = Clock(T0 / 1000 + 72 * 3600)  # ahead of every event: stream time uncapped
    loop, send = await started(specs, clock, update_s)
    counted: list[dict[str, Any]] = []
    t = T0
    for _ in range(40):
        batch = []
        for _ in range(rng.randrange(1, 15)):
            t += rng.choice([5_000, 30_000, 4 * MIN_MS, 9 * MIN_MS, 12 * MIN_MS])
            ts = t - rng.randrange(0, 20 * MIN_MS)
            e = event(f"u{rng.randrange(4)}", rng.choice(["a", "b", "c"]), ts,
                      source=rng.choice(["web", "mobile"]))
            if any(c["event_id"] == e["event_id"] for c in counted):
                continue
            batch.append(e)
            counted.append(e)
        if rng.random() < 0.4:  # a straggler 20-55 min behind: bridges, corrections
            ts = t - rng.randrange(20 * MIN_MS, 55 * MIN_MS)
            e = event(f"u{rng.randrange(4)}", "late", ts)
            if all(c["event_id"] != e["event_id"] for c in counted):
                batch.append(e)
                counted.append(e)
        retries = [dict(e) for e in rng.sample(batch[-3:], min(2, len(batch)))]
        assert [late for late in send(batch + retries) if "user_sessions" in late.tables] == []
        clock.now += 5
        await loop.tick()
    await settle(loop, clock)
    expected = session_oracle(counted, gap_ms=GAP_MS)
    assert live(loop) == expected
    starts = {(i[1], i[3]) for i in expected}
    rows = sessions(loop).values()
    into = {(r.window_start_ms, r.key): r.values["merged_into"] for r in rows
            if r.values.get("merged_into") is not None}
    for (start, key), target in into.items():  # a chain (a -> b, later b -> c) ends
        while (target, key) in into:            # at a session
            target = into[(target, key)]
        assert (target, key) in starts, (start, key)
    assert all(r.final for r in rows)
    assert len(into) >= 3  # bridges and moved starts happened
    assert any(r.revision > 0 for r in rows)  # and corrections of final rows
    assert sum(r.values["count"] for r in rows) == len(counted)


def test_a_session_window_needs_the_user_windows_measures_and_gap() -> None:
    other = dataclasses.replace(USER_SESSIONS, measures=(Count("count"),))
    with pytest.raises(ValueError, match="with the measures of user_activity"):
        Specs(WindowSpec.tumbling(60, 60), WindowSpec.hopping(300, 60, 60),
              aggregates=(*DEFINITIONS[:3], other))
    with pytest.raises(ValueError, match="at least the user_activity window"):
        Specs(WindowSpec.tumbling(60, 60), WindowSpec.hopping(300, 60, 60),
              WindowSpec.sessions(30, 60))


# -- updates every update_s seconds (windows.session_update_seconds) --------------------

UPDATE_S = 60.0


async def test_an_open_session_is_rewritten_once_per_update_interval(specs: Specs) -> None:
    clock = Clock(T0 / 1000 + 4 * 3600)
    loop, send = await started(specs, clock, UPDATE_S)
    assert send([event("u1", "click", T0)]) == []
    await loop.tick()
    assert ident(T0) not in loop.rows  # waiting: the first update is due in 60 s
    view = loop.flusher.session_flush.live(0, "user_sessions", "u1")
    assert view is not None and [s["count"] for s in loop.flusher.sessions[
        "user_sessions"].sessions(view)] == [1]  # the query API sees it at once
    writes = []
    for n in range(1, 26):  # two minutes of flushes, an event before each
        assert send([event("u1", "view", T0 + n * 1_000)]) == []
        clock.now += 5
        await loop.tick()
        if ident(T0) in loop.rows:
            writes.append(loop.rows[ident(T0)].values["count"])
            del loop.rows[ident(T0)]
    # 60 s after the first change (n = 12), 60 s after the next one (n = 13): each row
    # with every event until then
    assert writes == [13, 26]
    assert loop.agg.state.get(0, session_key("user_sessions", "u1"))["panes"]


async def test_a_stream_that_stops_reaches_its_sessions_without_the_interval(
    specs: Specs,
) -> None:
    """The interval saves rewrites while events keep coming; after the last events (a
    drained backlog, a device going offline) the rows must not wait for it: the first
    flush that finds the partition quiet writes them (issue 17: 60 s late)."""
    clock = Clock(T0 / 1000 + 4 * 3600)
    loop, send = await started(specs, clock, UPDATE_S)
    events = [event("u1", "click", T0 + i * 1_000) for i in range(3)]
    assert send(events) == []
    clock.now += 5
    await loop.tick()
    assert ident(T0) not in loop.rows  # events since the previous flush: it waits
    assert send([event("u1", "view", T0 + 3_000)]) == []
    clock.now += 5
    await loop.tick()
    assert ident(T0) not in loop.rows  # still coming
    clock.now += 5
    await loop.tick()  # nothing since the previous flush: 15 s, not 60
    events.append(event("u1", "view", T0 + 3_000))
    row = sessions(loop)[ident(T0)]
    assert not row.final and row.values["count"] == 4
    assert live(loop) == session_oracle(events, gap_ms=GAP_MS)
    assert loop.flusher.session_flush.pending == {}


async def test_a_session_never_turns_final_without_the_panes_that_wait(
    specs: Specs,
) -> None:
    base = T0 + 2 * 3_600_000
    # the wall clock an hour ahead (stream time is capped by it), the sources never
    # quiet for the idle timeout: only event time closes sessions
    clock = Clock(base / 1000 + 3600)
    loop, send = await started(specs, clock, update_s=20)
    assert send([event("u1", "click", base)]) == []
    await loop.tick()
    clock.now += 20
    await loop.tick()
    assert loop.rows[ident(base)].values["count"] == 1  # the entry exists, with a due time
    assert send([event("u1", "view", base + 5 * MIN_MS)]) == []
    await loop.tick()  # waits: not 20 s since it changed
    # both sources' stream time past the first event's last + gap + grace: the entry is
    # due, and the second event that waits would extend the session
    ahead = base + GAP_MS + 2 * MIN_MS
    assert send([event("u2", "buy", ahead), event("u3", "buy", ahead, source="mobile")]) == []
    await loop.tick()
    row = loop.rows[ident(base)]
    assert not row.final  # u1's session goes on: its second event was taken in first
    assert row.values["count"] == 2 and row.values["last_ts"] == base + 5 * MIN_MS
    later = base + GAP_MS + 8 * MIN_MS
    assert send([event("u2", "buy", later), event("u3", "buy", later, source="mobile")]) == []
    await loop.tick()
    row = loop.rows[ident(base)]
    assert row.final and row.revision == 0 and row.values["count"] == 2


async def test_a_user_window_about_to_go_is_copied_first(specs: Specs) -> None:
    """A user nothing else makes due: its only window is gone (and confirmed) before
    the update interval passed; it must reach the sessions before it is deleted."""
    clock = Clock(T0 / 1000 + 6 * 3600)
    loop, send = await started(specs, clock, update_s=1e9)
    counted = [event("u1", "click", T0)]
    assert send(counted) == []
    await loop.tick()
    assert send([event("u2", "click", T0 + 2 * GAP_MS + 3_600_000)]) == []
    await settle(loop, clock)
    assert loop.agg.state.get(0, f"u|u1|{T0}") is None  # the user window is gone
    assert live(loop)[ident(T0)] == session_oracle(counted, gap_ms=GAP_MS)[ident(T0)]
    assert sessions(loop)[ident(T0)].final


async def test_a_revoked_partition_drops_its_waiting_users(specs: Specs) -> None:
    clock = Clock(T0 / 1000 + 4 * 3600)
    loop, send = await started(specs, clock, UPDATE_S)
    assert send([event("u1", "click", T0)]) == []
    await loop.tick()
    assert (0, "u1") in loop.flusher.session_flush.pending
    await loop.flusher.tick(set())  # partition 0 went to another worker
    assert loop.flusher.session_flush.pending == {}


async def test_replayed_data_is_not_kept_waiting(specs: Specs) -> None:
    """Old data (a backfill, a replay): its sessions can close at once, so they do,
    whatever the update interval."""
    clock = Clock(T0 / 1000 + 4 * 3600)
    loop, send = await started(specs, clock, update_s=1e9)
    events = [event("u1", "click", T0), event("u1", "view", T0 + 4 * MIN_MS),
              event("u1", "buy", T0 + 3 * GAP_MS)]
    ahead = T0 + 5 * GAP_MS  # past the newest pane's end + gap + grace
    others = [event("u2", "x", ahead), event("u3", "x", ahead, source="mobile")]
    assert send(events + others) == []
    await loop.tick()
    assert live(loop) == session_oracle(events, gap_ms=GAP_MS)
    assert all(r.final for k, r in sessions(loop).items() if k[3] == ("u1",))
    assert (0, "u2") in loop.flusher.session_flush.pending  # its session may go on


async def test_a_follow_up_flush_writes_a_stopped_streams_sessions_before_the_next_tick(
    specs: Specs,
) -> None:
    """The flush right after the last events writes the other tables; the sessions they
    left waiting came a whole flush interval later (the bench's flush tail, 4.5-6.2 s).
    ``QuietFollowUp`` flushes once more shortly after, if no event came in between."""
    import asyncio

    from collector.engine.quiet import QuietFollowUp

    clock = Clock(T0 / 1000 + 4 * 3600)
    loop, send = await started(specs, clock, UPDATE_S)
    follow = QuietFollowUp(0.05, loop.flusher.waiting_quiet, loop.tick)
    checks: list[asyncio.Future[Any]] = []

    def spawn(check: Any) -> None:
        checks.append(asyncio.ensure_future(check))

    def after_flush() -> None:
        follow.after_flush(loop.flusher.sessions_waiting(), loop.flusher.last_tick_s, spawn)

    assert send([event("u1", "click", T0)]) == []
    clock.now += 5
    await loop.tick()
    assert ident(T0) not in loop.rows and loop.flusher.sessions_waiting()
    after_flush()
    after_flush()  # one check at a time
    assert len(checks) == 1
    clock.now += 0.5
    assert send([event("u1", "view", T0 + 1_000)]) == []  # events keep coming
    clock.now += 0.4
    await loop.tick()  # a tick during the delay: the check still asks about its whole span
    await checks[0]
    assert follow.flushes == 0 and ident(T0) not in loop.rows  # the interval spaces them
    clock.now += 0.1
    assert send([event("u1", "view", T0 + 2_000)]) == []  # the last event
    clock.now += 4.5
    await loop.tick()  # the flush right after the last event: the other tables
    assert ident(T0) not in loop.rows
    loop.flusher.caught_up = lambda topic, partition: False
    after_flush()
    await checks[1]  # no event, but a backlog the fetches skipped: not quiet
    assert follow.flushes == 0 and ident(T0) not in loop.rows
    loop.flusher.caught_up = lambda topic, partition: True
    after_flush()
    await checks[2]  # nothing came since, nothing to fetch: one more flush, not the tick
    assert follow.flushes == 1 and not follow.armed
    assert sessions(loop)[ident(T0)].values["count"] == 3
    assert not loop.flusher.sessions_waiting()
    after_flush()  # nothing waits: no check
    assert len(checks) == 3
