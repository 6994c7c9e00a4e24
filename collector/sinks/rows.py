"""The unit every sink writes: one aggregate of one window, with absolute values.

Values are absolute (the whole window so far, not a delta), so writing a row twice, or
an older row and then a newer one, ends in the same state: that is what makes the
sinks' at-least-once delivery safe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from collector.aggregates import DEFINITIONS
from collector.aggregates import EVENT_STATS as _EVENT_STATS
from collector.aggregates import SEGMENT_STATS as _SEGMENT_STATS
from collector.aggregates import USER_ACTIVITY as _USER_ACTIVITY

EVENT_STATS: Final = _EVENT_STATS.name
USER_ACTIVITY: Final = _USER_ACTIVITY.name
SEGMENT_STATS: Final = _SEGMENT_STATS.name

#: Key columns of each table, in the order of ``Row.key`` (from the definitions).
KEY_COLUMNS: Final[Mapping[str, tuple[str, ...]]] = {d.name: d.key_names for d in DEFINITIONS}

#: (table, window_start_ms, window_seconds, key): what one stored row is identified by.
Ident = tuple[str, int, int, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Row:
    """One window aggregate.

    ``values``: the definition's outputs (``Aggregate.row_values``), e.g. event_stats
    {count, value_count, value_sum, value_min|None, value_max|None}.  ``latest_event_ms``
    is the newest event in the window, for the end-to-end latency metric.  ``revision`` counts the
    corrections of a final row by late events (0: as first written final).
    """

    table: str
    window_start_ms: int
    window_seconds: int
    key: tuple[str, ...]
    values: Mapping[str, Any] = field(hash=False)
    final: bool
    latest_event_ms: int
    revision: int = 0

    @property
    def ident(self) -> Ident:
        """Rows with equal idents are versions of the same stored row."""
        return (self.table, self.window_start_ms, self.window_seconds, self.key)


__all__ = ["EVENT_STATS", "KEY_COLUMNS", "SEGMENT_STATS", "USER_ACTIVITY", "Ident", "Row"]
