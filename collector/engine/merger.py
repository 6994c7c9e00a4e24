"""The merge: per (table, key, window), one partial per input slot, replaced not added.

Partials are cumulative for their slot, so replacing the slot's entry makes replays and
re-sent flushes harmless.  A merged window is final once every input slot's close mark
has passed its end + grace; ``final`` then stays set ("closed at least once").  A late
update from a slot afterwards writes the row again with the next ``revision``.  Entries
are kept until every slot's ``ret`` (the highest close mark it ever sent) is
``windows.expires_seconds`` past their start.  A slot accepts no event for such a
window any more (the same rule, on the same marks), so no partial can arrive later and
create a window that holds only that slot, which would overwrite the row with less.

A partial carries ``off``, the highest raw offset its slot had absorbed.  During a
rebalance the old owner of a raw partition may already have sent a partial that the new
owner, recovering from a changelog a little behind, sends again with fewer events; the
merge keeps the partial with the higher ``off`` per slot, so a row never moves back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from collector.engine.aggregator import SEP, Specs
from collector.engine.flusher import emit_final, to_row
from collector.engine.state import State
from collector.sinks import Row


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
    #: partition -> slot -> highest close mark the slot ever sent (expiry)
    retired: dict[int, dict[str, int]] = field(default_factory=dict)
    final_sent: set[str] = field(default_factory=set)
    #: keys to write again without a change of their own (after a start or rebalance)
    resend: set[str] = field(default_factory=set)
    needs_rescan: bool = True
    #: partials ignored because their window had expired here (see the module doc)
    stale: int = 0
    #: partials ignored because the slot's partial held here had absorbed more
    behind: int = 0

    def apply(self, partition: int, record: dict[str, Any]) -> None:
        """One record from the partials topic: a slot's partial, or a slot's close mark."""
        if record.get("t") == "m":
            # the latest mark replaces the last: a slot's close mark falls back from the
            # wall clock to its stream time when a quiet slot gets events again
            slot, mark = record["slot"], int(record["closed"])
            marks = self.marks.setdefault(partition, {})
            rets = self.retired.setdefault(partition, {})
            ret = max(int(record.get("ret", mark)), mark, rets.get(slot, 0))
            if mark != marks.get(slot) or ret != rets.get(slot):
                marks[slot], rets[slot] = mark, ret
                key = mark_key(partition, slot)
                self.state.set(partition, key, {"kind": "k", "partition": partition,
                                                "slot": slot, "closed": mark, "ret": ret})
            return
        if self._expired(partition, record["ws"]):
            self.stale += 1
            return
        key = merged_key(record["table"], record["key"], record["ws"])
        entry = self.state.get(partition, key)
        if entry is None:
            entry = {"kind": "m", "partition": partition, "table": record["table"],
                     "key": record["key"], "ws": record["ws"], "slots": {}}
        elif entry["slots"].get(record["slot"]) == record["agg"]:
            return  # a replay or a re-sent flush: nothing changed
        slot, off = record["slot"], record.get("off")
        offs = entry.setdefault("offs", {})
        if off is not None:
            if off < offs.get(slot, -1):
                self.behind += 1  # absorbed fewer raw records than the partial we hold
                return
            offs[slot] = off
        entry["slots"][slot] = record["agg"]  # replace, never add
        self.state.set(partition, key, entry)
        self.index[key] = partition
        self.dirty.add(key)

    def _expired(self, partition: int, ws: int) -> bool:
        """Every slot has retired the window: none accepts events for it any more."""
        rets = self.retired.get(partition, {})
        oldest = min((rets.get(slot, 0) for slot in self.expected_slots), default=0)
        return ws + self.expires_ms <= oldest

    def rescan(self, assigned: Collection[int]) -> None:
        self.index.clear()
        self.final_sent.clear()
        self.marks.clear()
        self.retired.clear()
        for key, value in self.state.items():
            partition = value.get("partition")
            if not isinstance(partition, int) or partition not in assigned:
                continue
            if value.get("kind") == "m":
                self.index[key] = partition
                self.resend.add(key)
            elif value.get("kind") == "k":
                self.marks.setdefault(partition, {})[value["slot"]] = value["closed"]
                self.retired.setdefault(partition, {})[value["slot"]] = value.get(
                    "ret", value["closed"])
        self.needs_rescan = False

    def close_mark(self, partition: int) -> int:
        marks = self.marks.get(partition, {})
        return min((marks.get(slot, 0) for slot in self.expected_slots), default=0)

    def _needs_visit(self, key: str, partition: int) -> bool:
        """A clean key matters only when it turns final or expires (``m|table|…|ws``)."""
        ws = int(key[key.rindex(SEP) + 1:])
        if key in self.final_sent:
            return self._expired(partition, ws)
        spec = self.specs.for_table(key.split(SEP, 2)[1])
        return self._expired(partition, ws) or spec.is_closed(ws, self.close_mark(partition))

    def tick(self, assigned: Collection[int]) -> dict[str, int]:
        if self.needs_rescan:
            self.rescan(assigned)
        dirty, self.dirty = self.dirty, set()
        resend, self.resend = self.resend, set()
        rows: list[Row] = []
        stats = {"rows": 0, "final": 0, "deleted": 0}
        for key, partition in list(self.index.items()):
            if partition not in assigned:
                continue
            if key not in dirty and key not in resend and not self._needs_visit(key, partition):
                continue  # judged from the key alone: no store read
            entry = self.state.get(partition, key)
            if entry is None:
                self.index.pop(key, None)
                continue
            table = entry["table"]
            spec = self.specs.for_table(table)
            final = (bool(entry.get("fin")) or self._expired(partition, entry["ws"])
                     or spec.is_closed(entry["ws"], self.close_mark(partition)))
            if key in dirty or key in resend or (final and key not in self.final_sent):
                if emit_final(entry, final, key in dirty):
                    self.state.set(partition, key, entry)
                agg = self.specs.definition(table).combine(list(entry["slots"].values()))
                rows.append(to_row(table, self.specs, entry, final, agg))
                if final:
                    if key not in self.final_sent:
                        stats["final"] += 1
                    self.final_sent.add(key)
            elif key in self.final_sent and self._expired(partition, entry["ws"]):
                # expired, and its final row went out: no partial can reach it any more
                self.state.delete(partition, key)
                self.index.pop(key, None)
                self.final_sent.discard(key)
                stats["deleted"] += 1
        if rows:
            self.add_rows(rows)
            stats["rows"] = len(rows)
        return stats
