"""The merge: per (table, key, window), one partial per input slot, replaced not added.

Partials are cumulative for their slot, so replacing the slot's entry makes replays and
re-sent flushes harmless.  A merged window is final once every input slot's close mark
has passed its end + grace; its final row is written once.  Entries are kept until they
expire (``windows.expires_seconds`` past the close), not deleted at once: a partial
replayed after a crash then replaces its slot with the same value instead of creating a
window that holds only that slot and would overwrite the final row with less.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from collector.sinks import Row
from collector.streams.aggregator import SEP, Specs
from collector.streams.flusher import to_row
from collector.streams.state import State
from collector.streams.windows import combine


def merged_key(table: str, key: list[str], ws: int) -> str:
    return SEP.join(("m", table, *key, str(ws)))


def mark_key(partition: int, slot: str) -> str:
    return f"k{SEP}{partition}{SEP}{slot}"


@dataclass
class Merger:
    """Merges partials of the partials-topic partitions this worker owns."""

    state: State
    specs: Specs
    expected_slots: list[str]
    add_rows: Callable[[list[Row]], None]
    expires_ms: int
    clock: Callable[[], float] = time.time
    dirty: set[str] = field(default_factory=set)
    index: dict[str, int] = field(default_factory=dict)
    #: partition -> slot -> close mark
    marks: dict[int, dict[str, int]] = field(default_factory=dict)
    final_sent: set[str] = field(default_factory=set)
    needs_rescan: bool = True

    def apply(self, partition: int, record: dict[str, Any]) -> None:
        """One record from the partials topic: a slot's partial, or a slot's close mark."""
        if record.get("t") == "m":
            slot, mark = record["slot"], int(record["closed"])
            marks = self.marks.setdefault(partition, {})
            if mark > marks.get(slot, -1):
                marks[slot] = mark
                key = mark_key(partition, slot)
                self.state.set(partition, key, {"kind": "k", "partition": partition,
                                                "slot": slot, "closed": mark})
            return
        key = merged_key(record["table"], record["key"], record["ws"])
        entry = self.state.get(partition, key)
        if entry is None:
            entry = {"kind": "m", "partition": partition, "table": record["table"],
                     "key": record["key"], "ws": record["ws"], "slots": {}}
        entry["slots"][record["slot"]] = record["agg"]  # replace, never add
        self.state.set(partition, key, entry)
        self.index[key] = partition
        self.dirty.add(key)

    def rescan(self, assigned: Collection[int]) -> None:
        self.index.clear()
        self.final_sent.clear()
        self.marks.clear()
        for key, value in self.state.items():
            partition = value.get("partition")
            if not isinstance(partition, int) or partition not in assigned:
                continue
            if value.get("kind") == "m":
                self.index[key] = partition
                self.dirty.add(key)
            elif value.get("kind") == "k":
                self.marks.setdefault(partition, {})[value["slot"]] = value["closed"]
        self.needs_rescan = False

    def close_mark(self, partition: int) -> int:
        marks = self.marks.get(partition, {})
        return min((marks.get(slot, 0) for slot in self.expected_slots), default=0)

    def _needs_visit(self, key: str, partition: int) -> bool:
        """A clean key matters only when it turns final or expires (``m|table|…|ws``)."""
        ws = int(key[key.rindex(SEP) + 1:])
        spec = self.specs.for_table(key.split(SEP, 2)[1])
        mark = self.close_mark(partition)
        if key in self.final_sent:
            return spec.is_closed(ws + self.expires_ms, mark)
        return spec.is_closed(ws, mark)

    def tick(self, assigned: Collection[int]) -> dict[str, int]:
        if self.needs_rescan:
            self.rescan(assigned)
        dirty, self.dirty = self.dirty, set()
        rows: list[Row] = []
        stats = {"rows": 0, "final": 0, "deleted": 0}
        for key, partition in list(self.index.items()):
            if partition not in assigned:
                continue
            if key not in dirty and not self._needs_visit(key, partition):
                continue  # judged from the key alone: no store read
            entry = self.state.get(partition, key)
            if entry is None:
                self.index.pop(key, None)
                continue
            table = entry["table"]
            spec = self.specs.for_table(table)
            mark = self.close_mark(partition)
            final = spec.is_closed(entry["ws"], mark)
            if key in dirty or (final and key not in self.final_sent):
                agg = combine(table, list(entry["slots"].values()))
                rows.append(to_row(table, self.specs, entry, final, agg))
                if final:
                    self.final_sent.add(key)
                    stats["final"] += 1
            elif key in self.final_sent and spec.is_closed(entry["ws"] + self.expires_ms, mark):
                # expired, and its final row went out: a replay can no longer reach it
                self.state.delete(partition, key)
                self.index.pop(key, None)
                self.final_sent.discard(key)
                stats["deleted"] += 1
        if rows:
            self.add_rows(rows)
            stats["rows"] = len(rows)
        return stats
