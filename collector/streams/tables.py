"""The Faust tables behind the windows (changelogged, recovered on restart/rebalance).

Windows are explicit keys (``...|window_start``) in plain tables rather than Faust's
windowed-table wrappers: those resolve the window from the *current* event and close on
wall-clock cleanup (missed after recovery: faust-streaming #193, #250, #385), while we
need event time per event inside ``take()`` batches and closing by watermark.
"""

from __future__ import annotations

import faust

from collector import app, settings

#: Values are plain JSON objects: no value_type, since Faust decodes changelog records
#: (recovery) with ``value_type.from_data`` and ``dict`` has none, so every record
#: failed and recovery from the changelog never completed.
_SCHEMA: faust.Schema = faust.Schema(
    key_type=str, key_serializer="json", value_serializer="json",
)

#: combiner state, co-partitioned with the raw topics: slot watermarks, partial
#: aggregates per input slot, and user_activity windows.
state_table = app.Table(
    "collector-state",
    default=None,
    partitions=settings.kafka.partitions,
    schema=_SCHEMA,
    help="Combiner state: slot watermarks, partials, user_activity windows",
)

#: merge state, co-partitioned with the partials topic: merged windows and close marks.
merged_table = app.Table(
    "collector-merged",
    default=None,
    partitions=settings.kafka.partitions,
    schema=_SCHEMA,
    help="Merged event_stats/segment_stats windows and per-slot close marks",
)
