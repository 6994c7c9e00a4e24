"""The combiner's flush: close windows, forward partials and close marks, sink users.

Runs from a worker timer every ``flush_interval``.  It only reads and writes keys of
partitions this worker owns, so two workers never forward the same slot.  A partial is
sent while it is dirty and once more, final, when its window closes; then it is deleted.
Close *marks* tell the merge how far each input slot has closed, so it can declare a
merged window final only when every slot has closed it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import orjson

from collector.sinks import Row
from collector.streams.aggregator import SEP, Aggregator, Specs, slot_key, user_key
from collector.streams.state import State
from collector.streams.windows import USER_ACTIVITY, row_values

log = logging.getLogger(__name__)

#: send(key, value, partition) -> ack future
Send = Callable[[bytes, bytes, int | None], Awaitable[Awaitable[Any]]]


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
        values=row_values(table, agg),
        final=final,
        latest_event_ms=agg["latest"],
    )


@dataclass
class BacklogWatch:
    """Says when to flush early: right after a backlog of at least ``threshold_s`` has
    been drained, so its windows reach the sinks in about a second rather than up to a
    flush interval later.  Traffic processed as it arrives is never a backlog, so steady
    load keeps the timer's pace (and its batching of sink writes)."""

    threshold_s: float
    #: monotonic time since when the input has been behind (None: caught up)
    behind_since: float | None = None

    def drained(self, caught_up: bool, dirty: bool, now: float) -> bool:
        if not self.threshold_s:
            return False
        if not caught_up:
            if self.behind_since is None:
                self.behind_since = now
            return False
        since, self.behind_since = self.behind_since, None
        return dirty and since is not None and now - since >= self.threshold_s


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
    #: user window keys whose final row every sink confirmed: safe to delete
    confirmed: set[str] = field(default_factory=set)
    final_sent: set[str] = field(default_factory=set)
    started_at: float = field(default_factory=time.time)

    def rescan(self, assigned: Collection[tuple[str, int]]) -> None:
        """After start or rebalance: index what the recovered tables hold, flush it all."""
        agg = self.aggregator
        agg.index.clear()
        self.final_sent.clear()
        owned = {p for _, p in assigned}
        for key, value in self.state.items():
            if value.get("partition") in owned:
                agg.index[key] = value["partition"]
                if value.get("kind") in ("p", "u"):
                    agg.dirty.add(key)
        now = self.clock()
        for topic, partition in assigned:
            agg.last_seen.setdefault(slot_key(topic, partition), now)
        self.needs_rescan = False
        log.info("windows: re-indexed %d state keys after start/rebalance", len(agg.index))

    def on_user_rows_written(self, rows: list[Row]) -> None:
        for row in rows:
            if row.final and row.table == USER_ACTIVITY:
                self.confirmed.add(user_key(row.key[0], row.window_start_ms))

    async def tick(self, assigned: Collection[tuple[str, int]]) -> dict[str, int]:
        """One flush; returns counts (for logs and tests)."""
        if self.needs_rescan:
            self.rescan(assigned)
        now_s = self.clock()
        now_ms = int(now_s * 1000)
        owned_parts = {p for _, p in assigned}
        closed = self._close_marks(assigned, now_s, now_ms)
        agg = self.aggregator
        dirty, agg.dirty = agg.dirty, set()
        pending: list[Awaitable[Any]] = []
        to_delete: list[tuple[int, str]] = []
        user_rows: list[Row] = []
        stats = {"partials": 0, "final_partials": 0, "user_rows": 0, "deleted": 0}
        for key, partition in list(agg.index.items()):
            if partition not in owned_parts or key[0] not in "pu":
                continue
            if key not in dirty and key not in self.confirmed and not self._may_close(
                key, partition, closed
            ):
                continue  # nothing to send: skip the store read (most keys, most ticks)
            entry = self.state.get(partition, key)
            if entry is None:
                agg.index.pop(key, None)
                continue
            table = entry["table"]
            spec = self.specs.for_table(table)
            if entry["kind"] == "p":
                mark = closed.get(slot_key(entry["topic"], partition), 0)
                is_final = spec.is_closed(entry["ws"], mark)
                if key in dirty or is_final:
                    pending.append(await self._send_partial(entry, is_final))
                    stats["partials"] += 1
                if is_final:
                    stats["final_partials"] += 1
                    to_delete.append((partition, key))
            else:
                marks = [closed.get(slot_key(t, partition), 0) for t in self.raw_topics]
                is_final = spec.is_closed(entry["ws"], min(marks))
                if key in self.confirmed:
                    to_delete.append((partition, key))
                    self.confirmed.discard(key)
                elif key in dirty or (is_final and key not in self.final_sent):
                    user_rows.append(to_row(table, self.specs, entry, is_final))
                    if is_final:
                        self.final_sent.add(key)  # in memory only: re-sent after a restart
        # close marks go after the partials they cover: same producer, same partition order
        for skey, mark in closed.items():
            topic, _, part = skey[2:].rpartition("|")
            if int(part) in owned_parts:
                value = orjson.dumps({"t": "m", "slot": f"{topic}|{part}", "closed": mark})
                for target in range(self.partials_partitions):
                    pending.append(await self.send_partial(b"__mark__", value, target))
        for fut in pending:
            await fut
        for partition, key in to_delete:  # partials are acked by the broker; users by sinks
            self.state.delete(partition, key)
            agg.index.pop(key, None)
            self.final_sent.discard(key)
            stats["deleted"] += 1
        if user_rows:
            self.add_user_rows(user_rows)
            stats["user_rows"] = len(user_rows)
        return stats

    def _may_close(self, key: str, partition: int, closed: dict[str, int]) -> bool:
        """Whether a clean key might need its final send, judged from the key alone.

        Keys end in ``|window_start``; partial keys are ``p|table|topic|partition|…``
        (topic names and tables contain no ``|``), user keys ``u|user_id|ws``.
        """
        ws = int(key[key.rindex(SEP) + 1:])
        if key[0] == "p":
            _, table, topic, _ = key.split(SEP, 3)
            mark = closed.get(slot_key(topic, partition), 0)
            return self.specs.for_table(table).is_closed(ws, mark)
        if key in self.final_sent:
            return False
        mark = min(closed.get(slot_key(t, partition), 0) for t in self.raw_topics)
        return self.specs.for_table(USER_ACTIVITY).is_closed(ws, mark)

    def _close_marks(
        self, assigned: Collection[tuple[str, int]], now_s: float, now_ms: int
    ) -> dict[str, int]:
        """Each owned slot's close mark: its watermark, or wall-clock time once idle."""
        marks: dict[str, int] = {}
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
                self.state.set(partition, skey, slot)
                agg.index[skey] = partition
            marks[skey] = max(slot["wm"], slot["idle"])
        return marks

    async def _send_partial(self, entry: dict[str, Any], final: bool) -> Awaitable[Any]:
        key = "|".join((entry["table"], *entry["key"], str(entry["ws"]))).encode()
        value = orjson.dumps({
            "t": "p", "table": entry["table"], "key": entry["key"], "ws": entry["ws"],
            "slot": f"{entry['topic']}|{entry['partition']}", "agg": entry["agg"],
            "closed": final,
        })
        return await self.send_partial(key, value, None)
