"""The Faust tables behind the windows (changelogged, recovered on restart/rebalance).

Windows are explicit keys (``...|window_start``) in plain tables rather than Faust's
windowed-table wrappers: those resolve the window from the *current* event and close on
wall-clock cleanup (missed after recovery: faust-streaming #193, #250, #385), while we
need event time per event inside ``take()`` batches and closing by watermark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust

from collector.config import Settings

#: Values are plain JSON objects: no value_type, since Faust decodes changelog records
#: (recovery) with ``value_type.from_data`` and ``dict`` has none, so every record
#: failed and recovery from the changelog never completed.
_SCHEMA: faust.Schema = faust.Schema(
    key_type=str, key_serializer="json", value_serializer="json",
)

STATE_TABLE = "collector-state"
MERGED_TABLE = "collector-merged"


@dataclass(frozen=True)
class Tables:
    #: combiner state, co-partitioned with the raw topics: slot watermarks, partial
    #: aggregates per input slot, and user windows
    state: Any
    #: merge state, co-partitioned with the partials topic: merged windows, close marks
    merged: Any


def create_tables(app: faust.App, settings: Settings) -> Tables:
    partitions = settings.kafka.partitions
    return Tables(
        state=app.Table(STATE_TABLE, default=None, partitions=partitions, schema=_SCHEMA,
                        help="Combiner state: slot watermarks, partials, user windows"),
        merged=app.Table(MERGED_TABLE, default=None, partitions=partitions, schema=_SCHEMA,
                         help="Merged windows and per-slot close marks"),
    )


def set_changelog_buffer(app: faust.App, max_messages: int) -> None:
    """Raise the changelog records Faust's producer buffers before it throttles the
    streams (``producer.buffer``; Faust's default, 100, throttled every batch of ours)."""
    app.producer.buffer.max_messages = max_messages  # type: ignore[attr-defined]
