"""Panes: one batch's events of a hopping aggregate, folded once per step and key.

A hopping window of size n steps shares each step (a pane) with n - 1 others; folding
every event into every window cost n folds and n state lookups an event (5 with
segment_stats).  The aggregator folds an event into its pane once and merges each pane
into its windows at the end of the batch, where the merge of a pane equals folding its
events one by one (:data:`PANE_MEASURES`; Beam and Flink slice sliding windows alike).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from collector.aggregates import Aggregate
from collector.aggregates.definition import Fold
from collector.aggregates.measures import Count, Min, Sum

Merge = Callable[[dict[str, Any], dict[str, Any]], None]

#: measures whose merge of a pane equals folding its events one by one (Max, FirstTs,
#: LastTs and the configured FieldSum/FieldMin/FieldMax are subclasses); a distinct
#: value list past its limit keeps other values when merged, so those fold per window
PANE_MEASURES: tuple[type, ...] = (Count, Sum, Min)


def pane_merge(defn: Aggregate) -> Merge | None:
    """The merge hopping windows of ``defn`` take panes by, or None: fold each window."""
    return defn.merge if all(isinstance(m, PANE_MEASURES) for m in defn.measures) else None


@dataclass(slots=True)
class Pane:
    """The events of one batch in one step of one key, folded into ``agg``; ``events``
    stays for a window that absorbed some of these offsets before (after a restart)."""

    agg: dict[str, Any]
    first: int
    last: int
    events: list[tuple[int, dict[str, Any], int]]

    def add(self, off: int, event: dict[str, Any], ts: int, fold: Fold) -> None:
        fold(self.agg, event, ts)
        self.events.append((off, event, ts))
        if off < self.first:
            self.first = off
        if off > self.last:
            self.last = off


def apply_pane(pane: Pane, value: dict[str, Any], base_off: int, fold: Fold,
               merge: Merge) -> None:
    """Merge ``pane`` into one window's state ``value`` (``off``: the highest offset
    absorbed, ``base_off``: that before this batch), event by event where the window
    absorbed some of the pane's offsets before."""
    if pane.first > base_off:
        merge(value["agg"], pane.agg)
        if pane.last > value["off"]:
            value["off"] = pane.last
        return
    for off, event, ts in pane.events:
        if off > base_off:
            fold(value["agg"], event, ts)
            if off > value["off"]:
                value["off"] = off
