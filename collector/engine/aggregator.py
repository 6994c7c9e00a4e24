"""The combiner: fold a batch of enriched events into per-input-slot state.

One pass per event, no repartition.  ``user_activity`` is final here (raw topics are
keyed by user_id, so a user's windows live in one partition).  ``event_stats`` and
``segment_stats`` have few keys, so each input slot (topic, partition) keeps a *partial*
aggregate per key and window; the flusher forwards partials, never events, and the merge
replaces a slot's partial instead of adding to it.

Replays cannot double-count: every state entry remembers the highest input offset it
has absorbed (per topic and partition for user windows) and skips anything at or below
it.  Retries cannot either: a user window keeps the event ids it counted, for
``windows.dedupe_seconds`` of event time past its end, so a repeated (user_id, event_id)
is counted once however it came back (docs/guarantees.md; how the ids are kept:
collector.engine.dedupe).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from collector.aggregates import Aggregate
from collector.aggregates.definition import Fold
from collector.engine.dedupe import counted, remember
from collector.engine.panes import Merge, Pane, apply_pane, pane_merge
from collector.engine.processor import RawRecord
from collector.engine.specs import Plan, Specs, plan, required_fields, user_fold
from collector.engine.state import State

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


def new_slot(topic: str, partition: int) -> dict[str, Any]:
    """An input slot: ``wm`` its stream time, ``idle`` the wall clock while it is quiet
    (0 while events arrive), ``ret`` the highest close mark it ever sent (what the merge
    expires windows by), ``off`` the highest offset absorbed."""
    return {"kind": "s", "topic": topic, "partition": partition, "wm": 0, "idle": 0,
            "ret": 0, "off": -1}


def retired(slot: dict[str, Any]) -> int:
    return max(slot.get("ret", 0), slot["wm"])


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
    #: source -> events not counted because their (user_id, event_id) was counted before
    duplicates: dict[str, int] = field(default_factory=dict)
    #: (topic, partition, offset) of records some window counted, since forget_folded
    folded: set[tuple[str, int, int]] = field(default_factory=set)
    _anchor: Aggregate = field(init=False, repr=False)
    _partials: tuple[Plan, ...] = field(init=False, repr=False)
    #: what an event late for its user window misses: that and the session aggregates
    _user_tables: tuple[str, ...] = field(init=False, repr=False)
    _user_plan: tuple[str, int, int, Fold] = field(init=False, repr=False)
    #: ts, event_id, the user key, then every other field some key or fold requires
    _required: Callable[[dict[str, Any]], tuple[Any, ...]] = field(init=False, repr=False)
    _user_size: int = field(init=False, repr=False)
    #: (table, topic, partition, key, ws) -> the touched partial, for one apply()
    _batch_partials: dict[tuple[Any, ...], _Touched] = field(
        init=False, repr=False, default_factory=dict)
    #: (table, topic, partition, key, pane start, oldest open start) -> its pane
    _panes: dict[tuple[Any, ...], Pane] = field(init=False, repr=False, default_factory=dict)
    #: hopping table -> (step, fold, merge), where its windows take panes
    _pane_plans: dict[str, tuple[int, Fold, Merge]] = field(
        init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        """Choose the folds once, not per event."""
        specs = self.specs
        self._anchor = anchor = specs.anchor
        self._partials = tuple(plan(specs, a) for a in specs.aggregates if not a.per_user)
        self._user_tables = (anchor.name, *(a.name for a in specs.sessioned))
        name, _, horizon, step, spec, _, fold = plan(specs, anchor)
        self._user_plan = (name, horizon, step, user_fold(specs, fold))
        self._required = itemgetter(*required_fields(specs.aggregates))
        self._user_size = spec.size_ms
        for name, hopping, _, step, _, _, fold in self._partials:
            merge = pane_merge(specs.definition(name).bound(specs.max_user_types))
            if hopping and merge is not None:
                self._pane_plans[name] = (step, fold, merge)

    def slot(self, topic: str, partition: int) -> dict[str, Any]:
        value = self.state.get(partition, slot_key(topic, partition))
        return new_slot(topic, partition) if value is None else value

    def absorbed(self, record: RawRecord) -> bool:
        """Whether a window counted (or recognised as a duplicate) an event of
        ``record`` since :meth:`forget_folded`, even if something failed after."""
        return (record.topic, record.partition, record.offset) in self.folded

    def forget_folded(self) -> None:
        self.folded.clear()

    def apply(self, batch: Sequence[tuple[RawRecord, dict[str, Any]]]) -> list[Late]:
        """Fold ``batch`` into state; return the events that were too late for a window.

        Lateness is judged on event time only: the slot's stream time (the newest event
        time it has seen, never ahead of this worker's clock) against window end +
        allowed lateness.  A wall-clock check remains for windows whose state expired.
        """
        now = self.clock()
        now_ms = int(now * 1000)
        touched: dict[str, _Touched] = {}
        slots: dict[str, tuple[int, dict[str, Any]]] = {}
        #: slot key -> highest offset the slot had absorbed before this batch
        absorbed: dict[str, int] = {}
        late: list[Late] = []
        self._batch_partials = {}
        self._panes = {}
        try:
            for record, event in batch:
                skey = slot_key(record.topic, record.partition)
                if skey not in slots:
                    slot = self.slot(record.topic, record.partition)
                    slots[skey] = (record.partition, slot)
                    absorbed[skey] = slot["off"]
                slot = slots[skey][1]
                if record.offset <= absorbed[skey]:
                    again = self._replayed(touched, record, event, slot["wm"], retired(slot))
                    if again is not None:
                        late.append(again)
                    continue
                ret = retired(slot)
                missed = self._fold(touched, record, event, slot["wm"], ret)
                if missed:
                    late.append(self._late(record, event, missed, slot["wm"], ret))
                ts = event["ts"]
                capped = ts if ts < now_ms else now_ms  # one fast clock moves no one's time
                if capped > slot["wm"]:
                    slot["wm"] = capped
                slot["idle"] = 0  # not quiet any more: windows close by event time again
                if record.offset > slot["off"]:
                    slot["off"] = record.offset
                self.last_seen[skey] = now
        finally:
            # also when an event raised half-way: every touched value was changed in
            # place (it may be the state's cached object) and carries the offsets it
            # absorbed, so writing it keeps state and offset guards consistent
            try:
                self._merge_panes(touched)
            finally:
                self._batch_partials = {}
                self._panes = {}
                self._write(touched, slots)
        return late

    def _fold(self, touched: dict[str, _Touched], record: RawRecord, event: dict[str, Any],
              st: int, ret: int) -> list[str]:
        """Count one new event (unless a duplicate); the tables it was too late for."""
        # every field first: a malformed event raises before any state absorbed its offset
        fields = self._required(event)
        ts, eid, user_id = fields[0], fields[1], fields[2]
        # the newest window start that no event can update any more, per table
        expired = ret - self.specs.expires_ms
        missed: list[str] = []
        _, horizon, step, fold = self._user_plan
        ws = ts - ts % step
        if ws <= max(st - horizon, expired):
            missed += self._user_tables  # sessions are built from the user windows
        else:
            entry = self._user(touched, record, user_id, ws)
            if entry is not None:
                value = entry.value
                value.setdefault("ids", {})
                # counted before: an HTTP retry, a producer retry, a replay
                if counted(self.state, entry.partition, value, eid):
                    source = event["source"]
                    self.duplicates[source] = self.duplicates.get(source, 0) + 1
                    self.folded.add((record.topic, record.partition, record.offset))
                    return []
                if ws + self._user_size + self.specs.dedupe_ms > st:
                    remember(self.state, entry.partition, value, eid)
                fold(value["agg"], event, ts)
                self.folded.add((record.topic, record.partition, record.offset))
        panes = self._pane_plans
        for name, hopping, horizon, step, spec, key_of, fold in self._partials:
            cut = st - horizon
            if cut < expired:
                cut = expired
            pane = ts - ts % step
            if pane <= cut:
                missed.append(name)
            elif name in panes:  # the windows of ``pane`` from the oldest still open
                self._pane(name, record, key_of(event), pane,
                           max(cut - cut % step + step, pane - spec.size_ms + step),
                           fold, event, ts)
            elif hopping:  # (as before: hopping windows alone do not mark it folded)
                key = key_of(event)
                for start in spec.starts(ts):
                    if start > cut:
                        agg = self._partial(touched, name, record, key, start)
                        if agg is not None:
                            fold(agg, event, ts)
            else:
                agg = self._partial(touched, name, record, key_of(event), ts - ts % step)
                if agg is not None:
                    fold(agg, event, ts)
                    self.folded.add((record.topic, record.partition, record.offset))
        return missed

    def _replayed(self, touched: dict[str, _Touched], record: RawRecord,
                  event: dict[str, Any], st: int, ret: int) -> Late | None:
        """A record the slot absorbed before.  Counted then (its user window absorbed
        its offset) means skip it.  Otherwise it was late then, and its dead letter may
        not have been written before a crash; or the state was rebuilt from a changelog
        that two owners wrote to (a zombie that woke up after its partitions moved), so
        the slot is ahead of the window.  Either way: fold it where its windows are still
        open (each entry's offset guard and the event-id dedupe prevent a double count)
        and dead-letter it for the rest, again if need be (at least once)."""
        self.replayed += 1
        ws = self.specs.user.newest_start(event["ts"])
        ukey = user_key(event["user_id"], ws)
        seen = touched.get(ukey)
        value = seen.value if seen is not None else self.state.get(record.partition, ukey)
        tp = f"{record.topic}|{record.partition}"
        if value is not None and value["offs"].get(tp, -1) >= record.offset:
            return None
        missed = self._fold(touched, record, event, st, ret)
        return self._late(record, event, missed, st, ret) if missed else None

    def _late(self, record: RawRecord, event: dict[str, Any], missed: list[str], st: int,
              ret: int) -> Late:
        errors = []
        for table in missed:
            spec = self.specs.for_table(table)
            if spec.session:  # built from the user windows: their window is what was missed
                spec = self.specs.user
            start = spec.newest_start(event["ts"])
            if start + self.specs.expires_ms <= ret:
                why = (f"its state expired: start more than {self.specs.expires_ms} ms before "
                       f"the slot's close mark {ret} ms")
            else:
                why = (f"stream time {st} ms passed its end + allowed lateness "
                       f"{spec.lateness_ms} ms")
            errors.append({"loc": table, "msg": f"window [{start}, {spec.end(start)}) ms: {why}"})
        return Late(record, event, errors, missed)

    async def submit(self) -> list[Awaitable[Any]]:
        """Send the changelog of what :meth:`apply` wrote; await before acking the batch."""
        return await self.state.submit()

    def _pane(self, table: str, record: RawRecord, key: tuple[str, ...], pane: int,
              low: int, fold: Fold, event: dict[str, Any], ts: int) -> None:
        """Fold an event into its pane of this batch; ``low``: its oldest open window
        (the panes of one step differ by it only when the cut moved within the batch)."""
        off = record.offset
        ident = (table, record.topic, record.partition, key, pane, low)
        found = self._panes.get(ident)
        if found is None:
            found = self._panes[ident] = Pane(self.specs.definition(table).new(), off, off, [])
        found.add(off, event, ts, fold)

    def _merge_panes(self, touched: dict[str, _Touched]) -> None:
        """Merge each pane of the batch into its open windows (collector.engine.panes)."""
        for (table, topic, partition, key, pane, low), found in self._panes.items():
            step, fold, merge = self._pane_plans[table]
            for ws in range(low, pane + 1, step):
                entry = self._entry(touched, table, topic, partition, key, ws)
                apply_pane(found, entry.value, entry.base_off, fold, merge)

    def _entry(self, touched: dict[str, _Touched], table: str, topic: str, partition: int,
               key: tuple[str, ...], ws: int) -> _Touched:
        # a tuple finds the entry again within the batch without building its string
        # key (at a lookup per event and window, before panes, the join cost 2.5%)
        found = self._batch_partials
        ident = (table, topic, partition, key, ws)
        entry = found.get(ident)
        if entry is None:
            pkey = partial_key(table, topic, partition, key, ws)
            entry = touched.get(pkey)
            if entry is None:
                value = self.state.get(partition, pkey)
                if value is None:
                    value = {"kind": "p", "table": table, "topic": topic,
                             "partition": partition, "key": list(key), "ws": ws,
                             "agg": self.specs.definition(table).new(), "off": -1}
                entry = touched[pkey] = _Touched(partition, value, value["off"])
            found[ident] = entry
        return entry

    def _partial(
        self, touched: dict[str, _Touched], table: str, record: RawRecord,
        key: tuple[str, ...], ws: int,
    ) -> dict[str, Any] | None:
        entry = self._entry(touched, table, record.topic, record.partition, key, ws)
        if record.offset <= entry.base_off:
            return None  # already absorbed before a restart
        if record.offset > entry.value["off"]:
            entry.value["off"] = record.offset
        agg: dict[str, Any] = entry.value["agg"]
        return agg

    def _user(
        self, touched: dict[str, _Touched], record: RawRecord, user_id: str, ws: int
    ) -> _Touched | None:
        """The user window, or None if it absorbed this offset before.  Offsets are kept
        per (topic, partition): a user whose events arrive on two partitions of a topic
        must not have one partition's offsets hide the other's."""
        ukey = user_key(user_id, ws)
        entry = touched.get(ukey)
        if entry is None:
            value = self.state.get(record.partition, ukey)
            if value is None:
                anchor = self._anchor
                value = {"kind": "u", "table": anchor.name, "partition": record.partition,
                         "key": [user_id], "ws": ws, "agg": anchor.new(), "offs": {},
                         "ids": {}}
            entry = touched[ukey] = _Touched(record.partition, value, dict(value["offs"]))
        tp = f"{record.topic}|{record.partition}"
        if record.offset <= entry.base_off.get(tp, -1):
            return None
        offs = entry.value["offs"]
        if record.offset > offs.get(tp, -1):
            offs[tp] = record.offset
        return entry

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
