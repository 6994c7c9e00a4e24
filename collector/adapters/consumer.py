"""Faust consumer bookkeeping the worker reads: committed, read and fetched offsets.

``_committed_offset`` and ``_read_offset`` are private to Faust's consumer
(faust-streaming 0.15, ``transport/consumer.py``); they are pinned by
``tests/unit/test_adapter_contract.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from collector.observability.lag import Offsets, TopicPartition


def committed_offsets(consumer: Any) -> Mapping[Any, int | None]:
    """TP -> the offset Faust last committed for it (this assignment)."""
    committed: Mapping[Any, int | None] = consumer._committed_offset
    return committed


def read_offsets(consumer: Any) -> Mapping[Any, int | None]:
    """TP -> the offset of the last message Faust handed to the streams."""
    read: Mapping[Any, int | None] = consumer._read_offset
    return read


def consumer_offsets(consumer: Any, tps: Iterable[Any]) -> dict[TopicPartition, Offsets]:
    """Read Faust's consumer bookkeeping for ``tps`` (Faust ``TP`` tuples); no I/O.

    ``highwater(tp)`` is the value of the latest fetch response (None before the first);
    the committed and read offsets are Faust's own records of what it committed and
    handed to the streams.
    """
    committed = committed_offsets(consumer)
    read = read_offsets(consumer)
    out: dict[TopicPartition, Offsets] = {}
    for tp in tps:
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # consumer not started or partition just revoked
            highwater = None
        last_read = read.get(tp)
        out[(tp.topic, tp.partition)] = Offsets(
            highwater=int(highwater) if highwater is not None else None,
            committed=committed.get(tp),
            consumed=last_read + 1 if last_read is not None else None,
        )
    return out
