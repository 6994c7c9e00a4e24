"""Consumer lag per partition, and whether commits have stalled.

Lag is the high watermark of the consumer's own fetch responses minus the committed
position: the consumer already has it, so a scrape costs no ListOffsets round trip (on
Apache Kafka ``end_offsets()`` gives the same number; ``tests/integration`` checks that).
A partition has *stalled* when its committed
offset has not moved for a while although there is lag: the worker looks alive, but
is not making progress.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Offsets:
    """What the consumer knows about one partition; ``None`` when not known (yet)."""

    highwater: int | None
    committed: int | None
    consumed: int | None  # the next offset to read (last read offset + 1)


@dataclass(frozen=True, slots=True)
class PartitionLag:
    """``stalled_for`` is seconds without commit progress while lagging (0: progressing)."""

    topic: str
    partition: int
    highwater: int | None
    committed: int | None
    lag: int | None
    stalled_for: float


def lag_of(offsets: Offsets) -> int | None:
    """High watermark minus the committed position (the consumed one before any commit)."""
    if offsets.highwater is None:
        return None
    position = offsets.committed if offsets.committed is not None else offsets.consumed
    if position is None:
        position = 0  # nothing committed or read: everything up to the watermark is lag
    return max(0, offsets.highwater - position)


@dataclass(slots=True)
class _Progress:
    committed: int | None
    since: float


class LagTracker:
    """Remembers, per assigned partition, when its committed offset last moved."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._progress: dict[TopicPartition, _Progress] = {}
        self.partitions: list[PartitionLag] = []

    def update(self, samples: Mapping[TopicPartition, Offsets],
               held: Collection[TopicPartition] = ()) -> list[PartitionLag]:
        """Record one sample of every assigned partition; forget unassigned ones.

        ``held``: partitions the worker paused on purpose (sink backpressure).  Their
        commits stop by design, so they count as progressing, and a resumed one is timed
        from its resume: a MySQL outage must not make every worker unready.
        """
        now = self._clock()
        for tp in set(self._progress) - set(samples):
            del self._progress[tp]
        rows: list[PartitionLag] = []
        for (topic, partition), offsets in sorted(samples.items()):
            lag = lag_of(offsets)
            seen = self._progress.get((topic, partition))
            if (seen is None or seen.committed != offsets.committed or not lag
                    or (topic, partition) in held):
                seen = self._progress[(topic, partition)] = _Progress(offsets.committed, now)
            rows.append(PartitionLag(topic, partition, offsets.highwater, offsets.committed,
                                     lag, now - seen.since))
        self.partitions = rows
        return rows

    def stalled(self, threshold_s: float) -> list[PartitionLag]:
        """Partitions lagging with no commit progress for longer than ``threshold_s``."""
        return [p for p in self.partitions if p.lag and p.stalled_for > threshold_s]

    @property
    def total(self) -> int:
        return sum(p.lag or 0 for p in self.partitions)


__all__ = ["LagTracker", "Offsets", "PartitionLag", "lag_of"]
