"""The combiner's flush: close windows, forward partials and close marks, sink users.

Runs from a worker timer every ``flush_interval``.  It only reads and writes keys of
partitions this worker owns, so two workers never forward the same slot.  A partial is
sent while it is dirty and once more, final, when its window closes (close mark past
end + grace); it is kept, and sent again after every late update, until no event can
reach it any more (stream time past end + allowed lateness, or its state expired).
Close *marks* tell the merge how far each input slot has closed (``closed``: stream
time, or the wall clock while the slot is quiet), the highest close mark it ever sent
(``ret``: windows expire by it, here and in the merge) and its stream time (``st``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import orjson

from collector.engine.aggregator import SEP, Aggregator, Specs, retired, slot_key, user_key
from collector.engine.dedupe import CHUNK, forget, id_chunk_keys
from collector.engine.session_flush import SessionFlush
from collector.engine.sessions import KIND, SessionPlan
from collector.engine.state import State
from collector.sinks import Row

log = logging.getLogger(__name__)

#: send(key, value, partition) -> ack future
Send = Callable[[bytes, bytes, int | None], Awaitable[Awaitable[Any]]]
#: a slot's (close mark, stream time, highest close mark ever sent), epoch ms
Marks = tuple[int, int, int]


def to_row(
    table: str, specs: Specs, entry: dict[str, Any], final: bool,
    agg: dict[str, Any] | None = None,
) -> Row:
    """The sink row of a state entry (``agg`` overrides the entry's own aggregate)."""
    agg = entry["agg"] if agg is None else agg
    return Row(
        table=table,
        window_start_ms=entry["ws"],
        window_seconds=specs.for_table(table).seconds,
        key=tuple(entry["key"]),
        values=specs.definition(table).row_values(agg),
        final=final,
        latest_event_ms=agg["latest"],
        revision=entry.get("rev", 0),
    )


def emit_final(entry: dict[str, Any], final: bool, changed: bool) -> bool:
    """Update an entry's ``fin``/``rev`` for a row about to be written; True if changed.

    ``fin``: the row was written final at least once.  ``rev``: how many times a final
    row was corrected by late events since (0 for the first final row).
    """
    if not final:
        return False
    if entry.get("fin"):
        if changed:
            entry["rev"] = entry.get("rev", 0) + 1
            return True
        return False
    entry["fin"] = True
    return True


@dataclass
class BacklogWatch:
    """Says when to flush early: right after a backlog of records at least ``threshold_s``
    old (Kafka timestamps) was drained, so its windows reach the sinks in a second, not
    up to a flush interval later.  Under steady load the worker is rarely at the high
    watermark but its records are fresh: timing how long it was not caught up set off
    early flushes every 10-20 s there (docs/benchmarks.md, seventeenth round)."""

    threshold_s: float
    #: took a record at least threshold_s old since it was last caught up
    behind: bool = False

    def drained(self, caught_up: bool, dirty: bool, lag_s: float) -> bool:
        """``lag_s``: the age of the newest record just processed."""
        if not self.threshold_s:
            return False
        if not caught_up:
            self.behind = self.behind or lag_s >= self.threshold_s
            return False
        behind, self.behind = self.behind, False
        return dirty and behind


@dataclass
class Flusher:
    """Owns the combiner side of one worker's flush cycle."""

    aggregator: Aggregator
    state: State
    specs: Specs
    raw_topics: list[str]
    idle_timeout_s: float
    send_partial: Send
    partials_partitions: int
    add_user_rows: Callable[[list[Row]], None]
    clock: Callable[[], float] = time.time
    #: (topic, partition) -> has the worker processed everything the broker holds?  An
    #: idle slot with a backlog is not idle: it is waiting for its fetch.
    caught_up: Callable[[str, int], bool] = lambda topic, partition: True
    needs_rescan: bool = True
    #: user window key -> revision of its final row that every sink confirmed
    confirmed: dict[str, int] = field(default_factory=dict)
    final_sent: set[str] = field(default_factory=set)
    #: keys to send again without a change of their own (after a start or rebalance)
    resend: set[str] = field(default_factory=set)
    #: user windows past the dedupe horizon whose event ids were dropped
    pruned: set[str] = field(default_factory=set)
    #: per tick: partition -> (least marks of its raw topics' slots, newest stream time)
    _by_partition: dict[int, tuple[Marks, int]] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)
    #: seconds a changed user window may wait before its user's sessions are updated
    session_update_s: float = 0.0
    #: the session aggregates' side of the flush (engine/session_flush.py)
    session_flush: SessionFlush = field(init=False)
    #: when the previous tick started (wall clock): a partition whose raw slots saw no
    #: event since is quiet
    _prev_tick_s: float | None = None
    #: user rows the sinks can take now (None: no bound).  The rest wait for a later
    #: tick: when a backlog catches up, or after a restart re-sends everything, every
    #: open window of the backlog wants its row in the same tick (issue 15: +350 MB in
    #: one tick after a 10-minute MySQL outage with 10,000 users)
    row_budget: Callable[[], int] | None = None

    def __post_init__(self) -> None:
        plans = {a.name: SessionPlan.of(self.specs, a) for a in self.specs.sessioned}
        self.session_flush = SessionFlush(plans, self.state, self.aggregator.index,
                                          self.session_update_s)

    @property
    def sessions(self) -> dict[str, SessionPlan]:
        """Session aggregates by table."""
        return self.session_flush.plans

    def rescan(self, assigned: Collection[tuple[str, int]]) -> None:
        """After start or rebalance: index what the recovered tables hold, flush it all."""
        agg = self.aggregator
        agg.index.clear()
        self.session_flush.reset()
        self.final_sent.clear()
        self.pruned.clear()
        owned = {p for _, p in assigned}
        orphans = 0
        for key, value in self.state.items():
            if value.get("partition") in owned and value.get("kind") != CHUNK:
                if value.get("kind") == KIND and value.get("table") not in self.sessions:
                    orphans += 1  # a session aggregate no longer configured: left alone
                    continue
                agg.index[key] = value["partition"]
                if value.get("kind") in ("p", "u", KIND):
                    self.resend.add(key)
                if value.get("kind") == KIND:
                    self.session_flush.track(key, value["partition"])
        if orphans:
            log.warning("windows: %d sessions entries of session aggregates no longer "
                        "configured are not updated (declare them again to resume)", orphans)
        now = self.clock()
        for topic, partition in assigned:
            agg.last_seen.setdefault(slot_key(topic, partition), now)
        self.needs_rescan = False
        log.info("windows: re-indexed %d state keys after start/rebalance", len(agg.index))

    def on_user_rows_written(self, rows: list[Row]) -> None:
        for row in rows:
            if row.final and row.table == self.specs.anchor.name:
                self.confirmed[user_key(row.key[0], row.window_start_ms)] = row.revision
            elif row.final and row.table in self.sessions:
                self.session_flush.on_row_written(row)

    async def tick(self, assigned: Collection[tuple[str, int]]) -> dict[str, int]:
        """One flush; returns counts (for logs and tests)."""
        if self.needs_rescan:
            self.rescan(assigned)
        now_s = self.clock()
        now_ms = int(now_s * 1000)
        prev_tick_s, self._prev_tick_s = self._prev_tick_s, now_s
        owned_parts = {p for _, p in assigned}
        marks = self._close_marks(assigned, now_s, now_ms)
        self._by_partition.clear()
        agg = self.aggregator
        dirty, agg.dirty = agg.dirty, set()
        resend, self.resend = self.resend, set()
        pending: list[Awaitable[Any]] = []
        to_delete: list[tuple[int, str]] = []
        user_rows: list[Row] = []
        stats = {"partials": 0, "final_partials": 0, "user_rows": 0, "deleted": 0,
                 "deferred": 0}
        budget = -1 if self.row_budget is None else max(0, self.row_budget())
        keys = [(key, partition) for key, partition in agg.index.items()
                if partition in owned_parts and key[0] in "pu"]  # (sessions: after users)
        for key, partition in keys:
            if key[0] != "p" or not (visit := self._visit(key, partition, dirty, resend, marks)):
                continue
            entry, final, gone, send = visit
            if send:
                pending.append(await self._send_partial(entry, final))
                stats["partials"] += 1
                if final:
                    stats["final_partials"] += 1
                    self.final_sent.add(key)
            if gone and key in self.final_sent:
                to_delete.append((partition, key))
        # close marks go after the partials they cover: same producer, same partition order
        for skey, (mark, st, ret) in marks.items():
            topic, _, part = skey[2:].rpartition("|")
            if int(part) in owned_parts:
                value = orjson.dumps({"t": "m", "slot": f"{topic}|{part}", "closed": mark,
                                      "ret": ret, "st": st})
                for target in range(self.partials_partitions):
                    pending.append(await self.send_partial(b"__mark__", value, target))
        # delivered before the users' pass, which holds the loop (~1 s for 18,000 rows)
        for fut in pending:
            await fut
        for key, partition in keys:
            if key[0] != "u" or not (visit := self._visit(key, partition, dirty, resend, marks)):
                continue
            entry, final, gone, send = visit
            table, ws = entry["table"], entry["ws"]
            if self.sessions and (key in dirty or key in resend):
                self.session_flush.changed(partition, entry["key"][0], ws, entry["agg"],
                                           now_s, at_once=key in resend)
            if send and len(user_rows) == budget:  # the sinks are full: its row waits
                if key in dirty:  # (its sessions have it: never final without it)
                    agg.dirty.add(key)
                if key in resend:
                    self.resend.add(key)
                stats["deferred"] += 1
                continue
            changed = self._prune_ids(key, partition, entry, self._newest_st(partition, marks))
            if send:
                if emit_final(entry, final, key in dirty) or changed:
                    self.state.set(partition, key, entry)
                user_rows.append(to_row(table, self.specs, entry, final))
                self.confirmed.pop(key, None)
                if final:
                    self.final_sent.add(key)  # in memory only: re-sent after a restart
            elif gone and self.confirmed.get(key, -1) == entry.get("rev", 0):
                to_delete.append((partition, key))  # its last row is in every sink
                # (expired by the wall clock of a quiet stream: its ids were kept)
                to_delete.extend((partition, chunk) for chunk in id_chunk_keys(entry))
                if self.sessions:
                    self.session_flush.needed(partition, entry["key"][0])
            elif changed:
                self.state.set(partition, key, entry)
        if self.sessions:
            self.session_flush.flush(
                owned_parts, now_s, lambda p: self._partition_marks(p, marks)[0], resend,
                user_rows, to_delete, self._quiet(owned_parts, prev_tick_s))
        for partition, key in to_delete:  # partials are acked by the broker; users by sinks
            self.state.delete(partition, key)
            agg.index.pop(key, None)
            self.final_sent.discard(key)
            self.confirmed.pop(key, None)
            self.pruned.discard(key)
            self.session_flush.forget(key)
            stats["deleted"] += key[0] != CHUNK  # (a window's id chunks go with it)
        if user_rows:
            self.add_user_rows(user_rows)
            stats["user_rows"] = len(user_rows)
        return stats

    def _visit(self, key: str, partition: int, dirty: set[str], resend: set[str],
               marks: dict[str, Marks]) -> tuple[dict[str, Any], bool, bool, bool] | None:
        """A window key's (entry, final, gone, send), or None: nothing to do this tick."""
        if key not in dirty and key not in resend and not self._needs_visit(
            key, partition, marks
        ):
            return None  # nothing to send: skip the store read (most keys, most ticks)
        entry = self.state.get(partition, key)
        if entry is None:
            self.aggregator.index.pop(key, None)
            return None
        table, ws = entry["table"], entry["ws"]
        mark, st, ret = self._marks_of(key, entry, partition, marks)
        gone = self.specs.is_gone(table, ws, st, ret)
        final = gone or bool(entry.get("fin")) or self.specs.for_table(table).is_closed(ws, mark)
        send = key in dirty or key in resend or (final and key not in self.final_sent)
        return entry, final, gone, send

    def sessions_waiting(self) -> bool:
        """Whether users' panes wait for their sessions entry (engine/quiet.py)."""
        return bool(self.sessions and self.session_flush.pending)

    @property
    def last_tick_s(self) -> float:
        """When the latest tick began (wall clock; 0 before the first)."""
        return self._prev_tick_s or 0.0

    def waiting_quiet(self, since: float) -> bool:
        """Whether a partition with waiting users took no event since ``since`` and has
        none waiting to be fetched: while a backlog is consumed the fetches skip
        partitions for seconds (a 100k bench lost a fifth of its rate to such flushes)."""
        parts = {partition for partition, _ in self.session_flush.pending}
        return any(all(self.caught_up(t, p) for t in self.raw_topics)
                   for p in self._quiet(parts, since))

    def _quiet(self, partitions: Collection[int], since: float | None) -> set[int]:
        """The partitions none of whose raw slots took an event since ``since``."""
        if since is None:
            return set()
        seen = self.aggregator.last_seen
        return {p for p in partitions
                if all(seen.get(slot_key(t, p), 0.0) < since for t in self.raw_topics)}

    def _past_dedupe(self, ws: int, st: int) -> bool:
        return ws + self.specs.user.size_ms + self.specs.dedupe_ms <= st

    def _partition_marks(self, partition: int, marks: dict[str, Marks]) -> tuple[Marks, int]:
        """The least (close mark, stream time, retired) of a partition's raw-topic slots,
        and its newest stream time; computed once per partition and tick."""
        found = self._by_partition.get(partition)
        if found is None:
            triples = [marks.get(slot_key(t, partition), (0, 0, 0)) for t in self.raw_topics]
            least = (min(m for m, _, _ in triples), min(s for _, s, _ in triples),
                     min(r for _, _, r in triples))
            found = self._by_partition[partition] = (least, max(s for _, s, _ in triples))
        return found

    def _newest_st(self, partition: int, marks: dict[str, Marks]) -> int:
        """The partition's stream time: the newest of its raw topics' slots (a source
        nobody uses must not keep every user window's ids)."""
        return self._partition_marks(partition, marks)[1]

    def _prune_ids(self, key: str, partition: int, entry: dict[str, Any], st: int) -> bool:
        """Drop a user window's event ids once the partition's stream time passed its
        dedupe horizon: they bound the state by the horizon, not by the lateness."""
        if key in self.pruned or not self._past_dedupe(entry["ws"], st):
            return False
        self.pruned.add(key)
        return forget(self.state, partition, entry)

    def _marks_of(self, key: str, entry: dict[str, Any] | None, partition: int,
                  marks: dict[str, Marks]) -> Marks:
        """(close mark, stream time, retired) of a key's slot; a user window is fed by
        every raw topic's slot of its partition, so the least of theirs."""
        if key[0] == "p":
            topic = entry["topic"] if entry is not None else key.split(SEP, 3)[2]
            return marks.get(slot_key(topic, partition), (0, 0, 0))
        return self._partition_marks(partition, marks)[0]

    def _needs_visit(self, key: str, partition: int, marks: dict[str, Marks]) -> bool:
        """Whether a clean key might need its final send or its deletion, judged from the
        key alone: ``p|table|topic|partition|…|ws`` or ``u|user_id|ws`` (topic names and
        tables contain no ``|``)."""
        ws = int(key[key.rindex(SEP) + 1:])
        table = key.split(SEP, 2)[1] if key[0] == "p" else self.specs.anchor.name
        mark, st, ret = self._marks_of(key, None, partition, marks)
        if self.specs.is_gone(table, ws, st, ret):
            return True  # to be deleted (or sent final first)
        if (key[0] == "u" and key not in self.pruned
                and self._past_dedupe(ws, self._newest_st(partition, marks))):
            return True  # its event ids can go
        return key not in self.final_sent and self.specs.for_table(table).is_closed(ws, mark)

    def _close_marks(
        self, assigned: Collection[tuple[str, int]], now_s: float, now_ms: int
    ) -> dict[str, Marks]:
        """Each owned slot's (close mark, stream time, retired).  The close mark is the
        stream time, or the wall clock once the slot has been quiet (and caught up) for
        the idle timeout: that emits windows of a quiet stream without making an event
        late; only one older than ``expires`` by then can no longer be counted."""
        marks: dict[str, Marks] = {}
        agg = self.aggregator
        for topic, partition in assigned:
            if topic not in self.raw_topics:
                continue
            skey = slot_key(topic, partition)
            slot = agg.slot(topic, partition)
            last = agg.last_seen.get(skey, self.started_at)
            if (now_s - last >= self.idle_timeout_s and slot["idle"] < now_ms
                    and self.caught_up(topic, partition)):
                slot["idle"] = now_ms
                slot["ret"] = max(slot.get("ret", 0), now_ms)
                self.state.set(partition, skey, slot)
                agg.index[skey] = partition
            marks[skey] = (max(slot["wm"], slot["idle"]), slot["wm"], retired(slot))
        return marks

    async def _send_partial(self, entry: dict[str, Any], final: bool) -> Awaitable[Any]:
        key = "|".join((entry["table"], *entry["key"], str(entry["ws"]))).encode()
        value = orjson.dumps({
            "t": "p", "table": entry["table"], "key": entry["key"], "ws": entry["ws"],
            "slot": f"{entry['topic']}|{entry['partition']}", "agg": entry["agg"],
            "off": entry["off"], "closed": final,
        })
        return await self.send_partial(key, value, None)
