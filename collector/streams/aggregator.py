"""The combiner: fold a batch of enriched events into per-input-slot state.

One pass per event, no repartition.  ``user_activity`` is final here (raw topics are
keyed by user_id, so a user's windows live in one partition).  ``event_stats`` and
``segment_stats`` have few keys, so each input slot (topic, partition) keeps a *partial*
aggregate per key and window; the flusher forwards partials, never events, and the merge
replaces a slot's partial instead of adding to it.

Replays cannot double-count: every state entry remembers the highest input offset it
has absorbed (per topic for user windows) and skips anything at or below it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from collector.config import Settings
from collector.streams.processor import RawRecord
from collector.streams.state import State
from collector.streams.windows import (
    EVENT_STATS,
    NEW,
    SEGMENT_STATS,
    USER_ACTIVITY,
    WindowSpec,
    add_activity,
    add_segment,
    add_stats,
)

SEP = "|"


def slot_key(topic: str, partition: int) -> str:
    return f"s{SEP}{topic}{SEP}{partition}"


def partial_key(table: str, topic: str, partition: int, key: Sequence[str], ws: int) -> str:
    return SEP.join(("p", table, topic, str(partition), *key, str(ws)))


def user_key(user_id: str, ws: int) -> str:
    return f"u{SEP}{user_id}{SEP}{ws}"


@dataclass(slots=True)
class Late:
    """A valid event that arrived after one or more of its windows closed."""

    record: RawRecord
    event: dict[str, Any]
    errors: list[dict[str, str]]
    tables: list[str]


@dataclass(slots=True)
class _Touched:
    partition: int
    value: dict[str, Any]
    base_off: Any  # int for partials; dict[topic, int] for user windows


@dataclass(slots=True)
class Specs:
    """The three tables' windows, from settings."""

    event: WindowSpec
    user: WindowSpec
    segment: WindowSpec

    @classmethod
    def from_settings(cls, settings: Settings) -> Specs:
        w = settings.windows
        return cls(
            WindowSpec.tumbling(w.tumbling_seconds, w.grace_seconds),
            WindowSpec.tumbling(w.tumbling_seconds, w.grace_seconds),
            WindowSpec.hopping(w.hopping_size_seconds, w.hopping_step_seconds, w.grace_seconds),
        )

    def for_table(self, table: str) -> WindowSpec:
        return {EVENT_STATS: self.event, USER_ACTIVITY: self.user, SEGMENT_STATS: self.segment}[
            table
        ]


@dataclass
class Aggregator:
    """Applies batches to :class:`State`; remembers which keys the flusher must send."""

    state: State
    specs: Specs
    clock: Callable[[], float] = time.time
    dirty: set[str] = field(default_factory=set)
    #: every live state key -> its partition (rebuilt from the table after a restart)
    index: dict[str, int] = field(default_factory=dict)
    #: slot key -> wall-clock time of its last event (idle detection)
    last_seen: dict[str, float] = field(default_factory=dict)
    updates: dict[str, int] = field(default_factory=dict)
    #: events skipped because their slot had absorbed them before (replays)
    replayed: int = 0

    def slot(self, topic: str, partition: int) -> dict[str, Any]:
        key = slot_key(topic, partition)
        value = self.state.get(partition, key)
        if value is None:
            value = {"kind": "s", "topic": topic, "partition": partition, "wm": 0, "idle": 0,
                     "off": -1}
        return value

    def apply(self, batch: Sequence[tuple[RawRecord, dict[str, Any]]]) -> list[Late]:
        """Fold ``batch`` into state; return the events that were too late for a window."""
        now = self.clock()
        touched: dict[str, _Touched] = {}
        slots: dict[str, tuple[int, dict[str, Any]]] = {}
        #: slot key -> highest offset the slot had absorbed before this batch
        absorbed: dict[str, int] = {}
        late: list[Late] = []
        specs = self.specs
        try:
            for record, event in batch:
                skey = slot_key(record.topic, record.partition)
                if skey not in slots:
                    slot = self.slot(record.topic, record.partition)
                    slots[skey] = (record.partition, slot)
                    absorbed[skey] = slot["off"]
                if record.offset <= absorbed[skey]:
                    # a replay after a restart: counted before, and judged late (or not) before;
                    # checking lateness again would dead-letter it a second time
                    self.replayed += 1
                    continue
                slot = slots[skey][1]
                closed_through = max(slot["wm"], slot["idle"])
                ts, value = event["ts"], event.get("value")
                missed: list[str] = []
                errors: list[dict[str, str]] = []

                ws = specs.event.newest_start(ts)
                if specs.event.is_closed(ws, closed_through):
                    missed.append(EVENT_STATS)
                else:
                    agg = self._partial(touched, EVENT_STATS, record,
                                        (event["source"], event["type"]), ws)
                    if agg is not None:
                        add_stats(agg, value, ts)

                if specs.user.is_closed(ws, closed_through):
                    missed.append(USER_ACTIVITY)
                else:
                    agg = self._user(touched, record, event["user_id"], ws)
                    if agg is not None:
                        add_activity(agg, event["type"], ts)

                newest = specs.segment.newest_start(ts)
                if specs.segment.is_closed(newest, closed_through):
                    missed.append(SEGMENT_STATS)
                else:
                    seg_key = (event.get("segment", "unknown"), event.get("country", "unknown"))
                    for start in specs.segment.starts(ts):
                        if not specs.segment.is_closed(start, closed_through):
                            agg = self._partial(touched, SEGMENT_STATS, record, seg_key, start)
                            if agg is not None:
                                add_segment(agg, value, ts)
                if missed:
                    for table in missed:
                        spec = specs.for_table(table)
                        start = spec.newest_start(ts)
                        errors.append({"loc": table, "msg": (
                            f"window [{start}, {spec.end(start)}) ms closed: watermark "
                            f"{closed_through} ms passed its end + grace {spec.grace_ms} ms")})
                    late.append(Late(record, event, errors, missed))
                if ts > slot["wm"]:
                    slot["wm"] = ts
                if record.offset > slot["off"]:
                    slot["off"] = record.offset
                self.last_seen[skey] = now
        finally:
            # also when an event raised half-way: every touched value was changed in
            # place (it may be the state's cached object) and carries the offsets it
            # absorbed, so writing it keeps state and offset guards consistent
            self._write(touched, slots)
        return late

    async def submit(self) -> list[Awaitable[Any]]:
        """Send the changelog of what :meth:`apply` wrote; await before acking the batch."""
        return await self.state.submit()

    def _partial(
        self, touched: dict[str, _Touched], table: str, record: RawRecord,
        key: tuple[str, ...], ws: int,
    ) -> dict[str, Any] | None:
        pkey = partial_key(table, record.topic, record.partition, key, ws)
        entry = touched.get(pkey)
        if entry is None:
            value = self.state.get(record.partition, pkey)
            if value is None:
                value = {"kind": "p", "table": table, "topic": record.topic,
                         "partition": record.partition, "key": list(key), "ws": ws,
                         "agg": NEW[table](), "off": -1}
            entry = touched[pkey] = _Touched(record.partition, value, value["off"])
        if record.offset <= entry.base_off:
            return None  # already absorbed before a restart
        if record.offset > entry.value["off"]:
            entry.value["off"] = record.offset
        agg: dict[str, Any] = entry.value["agg"]
        return agg

    def _user(
        self, touched: dict[str, _Touched], record: RawRecord, user_id: str, ws: int
    ) -> dict[str, Any] | None:
        ukey = user_key(user_id, ws)
        entry = touched.get(ukey)
        if entry is None:
            value = self.state.get(record.partition, ukey)
            if value is None:
                value = {"kind": "u", "table": USER_ACTIVITY, "partition": record.partition,
                         "key": [user_id], "ws": ws, "agg": NEW[USER_ACTIVITY](), "offs": {}}
            entry = touched[ukey] = _Touched(record.partition, value, dict(value["offs"]))
        if record.offset <= entry.base_off.get(record.topic, -1):
            return None
        offs = entry.value["offs"]
        if record.offset > offs.get(record.topic, -1):
            offs[record.topic] = record.offset
        agg: dict[str, Any] = entry.value["agg"]
        return agg

    def _write(
        self, touched: dict[str, _Touched], slots: dict[str, tuple[int, dict[str, Any]]]
    ) -> None:
        state, index, dirty = self.state, self.index, self.dirty
        for key, entry in touched.items():
            state.set(entry.partition, key, entry.value)
            index[key] = entry.partition
            dirty.add(key)
            table = entry.value["table"]
            self.updates[table] = self.updates.get(table, 0) + 1
        for key, (partition, value) in slots.items():
            state.set(partition, key, value)
            index[key] = partition
