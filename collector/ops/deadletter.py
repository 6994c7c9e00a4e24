"""Read, select and replay dead-letter records (``collector deadletter``).

A scan reads the dead-letter topic up to the end offsets it saw when it started, so it
always ends even while workers keep writing.  A replay produces each selected record's
original bytes (or what a transform makes of them) back to its raw topic with a
provenance header; the workers then validate it like any new message.  Replaying the
same record twice is harmless for the aggregates: the windows count a
``(user_id, event_id)`` once (``windows.dedupe_seconds``, see docs/operations.md).
"""

from __future__ import annotations

import base64
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from collector.config import Settings
from collector.kafka.clients import client_kwargs
from collector.ops.kafka import partitions_of
from collector.ops.times import iso
from collector.ops.transform import Transform, as_bytes, load_transform

#: header on a replayed message: ``<deadletter topic>/<partition>/<offset>`` it came from
REPLAYED_FROM_HEADER: Final = "x-collector-replayed-from"
#: header on a replayed message: the id of the replay run (one per command)
REPLAY_ID_HEADER: Final = "x-collector-replay-id"
#: sources whose dead letters are not raw events (aggregate rows, profile updates)
NOT_RAW_SOURCES: Final = frozenset({"sink", "users"})

Progress = Callable[[int, int], None]  # (records read so far, total to read)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-letter record: where it sits in the dead-letter topic, and what it says."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    reason: str
    source: str
    topic: str
    raw_partition: int
    raw_offset: int
    index: int | None
    errors: list[dict[str, Any]]
    payload: bytes | None
    #: the content type to replay the payload with (JSON when the record predates it)
    content_type: str = "application/json"
    #: an unsupported_version letter's collector-schema, sent again with its bytes
    schema_version: str | None = None

    @classmethod
    def parse(cls, partition: int, offset: int, timestamp_ms: int, key: bytes | None,
              value: bytes | None) -> DeadLetter | None:
        """None when ``value`` is not a dead-letter record (another producer's junk)."""
        try:
            record = orjson.loads(value or b"")
            payload = record["payload"]
            if payload is not None:
                encoding = record.get("payload_encoding")
                payload = (base64.b64decode(payload) if encoding == "base64"
                           else str(payload).encode("utf-8"))
            return cls(partition, offset, timestamp_ms, key, str(record["reason"]),
                       str(record["source"]), str(record["topic"]),
                       int(record.get("partition", -1)), int(record.get("offset", -1)),
                       record.get("index"), list(record.get("errors") or []), payload,
                       str(record.get("content_type") or "application/json"),
                       record.get("schema_version"))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None

    def describe(self, payload_chars: int = 200) -> dict[str, Any]:
        """A JSON-able summary for ``inspect`` samples and dry runs."""
        text = None
        if self.payload is not None:
            text = self.payload[:payload_chars].decode("utf-8", "backslashreplace")
        return {"at": iso(self.timestamp_ms), "partition": self.partition,
                "offset": self.offset, "reason": self.reason, "source": self.source,
                "origin": f"{self.topic}/{self.raw_partition}/{self.raw_offset}",
                "index": self.index, "errors": self.errors[:5], "payload": text}


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters a command acts on; empty sets and None bounds select all.

    Times are the dead-letter records' Kafka timestamps (when a worker dead-lettered the
    message); offsets are the dead-letter topic's, inclusive, within ``partition``.
    """

    reasons: frozenset[str] = frozenset()
    sources: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None
    partition: int | None = None
    from_offset: int | None = None
    to_offset: int | None = None

    def __post_init__(self) -> None:
        if (self.from_offset is not None or self.to_offset is not None) and (
            self.partition is None
        ):
            raise ValueError("an offset range needs a partition")
        if self.since_ms is not None and self.until_ms is not None and (
            self.since_ms >= self.until_ms
        ):
            raise ValueError("since must be before until")

    def matches(self, dead: DeadLetter) -> bool:
        return ((not self.reasons or dead.reason in self.reasons)
                and (not self.sources or dead.source in self.sources)
                and (self.since_ms is None or dead.timestamp_ms >= self.since_ms)
                and (self.until_ms is None or dead.timestamp_ms < self.until_ms)
                and (self.to_offset is None or dead.offset <= self.to_offset))


async def _start_offsets(consumer: AIOKafkaConsumer, tps: list[TopicPartition],
                         selection: Selection) -> dict[TopicPartition, int]:
    begin = await consumer.beginning_offsets(tps)
    start = dict(begin)
    if selection.since_ms is not None:
        found = await consumer.offsets_for_times({tp: selection.since_ms for tp in tps})
        end = await consumer.end_offsets(tps)
        start = {tp: found[tp].offset if found.get(tp) else end[tp] for tp in tps}
    if selection.from_offset is not None:
        start = {tp: max(off, selection.from_offset, begin[tp]) for tp, off in start.items()}
    return start


async def scan(settings: Settings, selection: Selection,
               progress: Progress | None = None) -> AsyncIterator[DeadLetter | None]:
    """Every record of the dead-letter topic in the selection's partitions and offsets,
    parsed (None: not a dead-letter record), up to the end offsets seen at the start.

    Filtering by reason, source and time is the caller's (:meth:`Selection.matches`), so
    that it can count what it skipped.
    """
    topic = settings.kafka.deadletter_topic
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [tp for tp in await partitions_of(settings, [topic])
               if selection.partition is None or tp.partition == selection.partition]
        if not tps:
            return
        consumer.assign(tps)
        start = await _start_offsets(consumer, tps, selection)
        end = await consumer.end_offsets(tps)
        if selection.to_offset is not None:
            end = {tp: min(off, selection.to_offset + 1) for tp, off in end.items()}
        todo = {tp for tp in tps if start[tp] < end[tp]}
        total = sum(max(0, end[tp] - start[tp]) for tp in tps)
        read = 0
        for tp in tps:
            consumer.seek(tp, start[tp])
        if progress:
            progress(0, total)
        while todo:
            batches = await consumer.getmany(*todo, timeout_ms=1000, max_records=2000)
            for tp, messages in batches.items():
                for message in messages:
                    if message.offset >= end[tp]:
                        break
                    read += 1
                    yield DeadLetter.parse(tp.partition, message.offset, message.timestamp,
                                           message.key, message.value)
                if await consumer.position(tp) >= end[tp]:
                    todo.discard(tp)
            if progress:
                progress(read, total)
    finally:
        await consumer.stop()


@dataclass
class Inspection:
    """Counts of the selected dead letters, and the first few as samples."""

    scanned: int = 0
    matched: int = 0
    unreadable: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    by_source: Counter[str] = field(default_factory=Counter)
    by_hour: Counter[str] = field(default_factory=Counter)
    first_ms: int | None = None
    last_ms: int | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"scanned": self.scanned, "matched": self.matched, "unreadable": self.unreadable,
                "by_reason": dict(self.by_reason.most_common()),
                "by_source": dict(self.by_source.most_common()),
                "by_hour": dict(sorted(self.by_hour.items())),
                "first": iso(self.first_ms) if self.first_ms is not None else None,
                "last": iso(self.last_ms) if self.last_ms is not None else None,
                "samples": self.samples}


async def inspect(settings: Settings, selection: Selection, samples: int = 5,
                  progress: Progress | None = None) -> Inspection:
    """Count the selected dead letters by reason, source and hour; keep ``samples``."""
    out = Inspection()
    async for dead in scan(settings, selection, progress):
        out.scanned += 1
        if dead is None:
            out.unreadable += 1
            continue
        if not selection.matches(dead):
            continue
        out.matched += 1
        out.by_reason[dead.reason] += 1
        out.by_source[dead.source] += 1
        out.by_hour[iso(dead.timestamp_ms // 3_600_000 * 3_600_000)[:13] + ":00Z"] += 1
        at = dead.timestamp_ms
        out.first_ms = at if out.first_ms is None else min(out.first_ms, at)
        out.last_ms = at if out.last_ms is None else max(out.last_ms, at)
        if len(out.samples) < samples:
            out.samples.append(dead.describe())
    return out




@dataclass
class ReplaySummary:
    """What a replay did (or, with ``dry_run``, would do)."""

    replay_id: str
    dry_run: bool
    scanned: int = 0
    matched: int = 0
    replayed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    by_reason: Counter[str] = field(default_factory=Counter)
    by_topic: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = {"replay_id": self.replay_id, "dry_run": self.dry_run, "scanned": self.scanned,
               "matched": self.matched, "replayed": self.replayed,
               "skipped": dict(self.skipped.most_common()),
               "by_reason": dict(self.by_reason.most_common()),
               "by_topic": dict(self.by_topic.most_common()),
               "transform_errors": self.errors, "seconds": round(self.seconds, 3)}
        if self.dry_run:
            out["samples"] = self.samples
        return out


def target_topic(settings: Settings, dead: DeadLetter) -> str | None:
    """The raw topic to send ``dead`` back to, or None if it is not a raw event."""
    kafka = settings.kafka
    if dead.source in NOT_RAW_SOURCES or dead.reason == "sink_rejected":
        return None
    if kafka.source_of(dead.topic) is not None:
        return dead.topic
    return kafka.raw_topic(dead.source) if dead.source in kafka.sources else None


async def replay(settings: Settings, selection: Selection, *,
                 transform: Transform | None = None, dry_run: bool = False,
                 limit: int | None = None, progress: Progress | None = None,
                 samples: int = 3) -> ReplaySummary:
    """Produce the selected dead letters back to their raw topics (acks=all).

    Skipped, by reason: ``no_payload`` (a null message), ``not_a_raw_event`` (aggregate
    rows, profile updates: see docs/operations.md), ``transform_skipped`` (it returned
    None), ``transform_failed`` (it raised; the first errors are in the summary) and
    ``over_limit``.
    """
    summary = ReplaySummary(replay_id=uuid.uuid4().hex[:12], dry_run=dry_run)
    began = time.perf_counter()
    producer = None
    if not dry_run:
        producer = AIOKafkaProducer(**client_kwargs(settings), acks="all", linger_ms=5,
                                    max_request_size=max(1_048_576,
                                                         settings.ingest.max_message_bytes * 4))
        await producer.start()
    pending: list[Any] = []
    try:
        async for dead in scan(settings, selection, progress):
            summary.scanned += 1
            if dead is None or not selection.matches(dead):
                continue
            summary.matched += 1
            value = _replayable(settings, dead, transform, summary)
            if value is None:
                continue
            if limit is not None and summary.replayed >= limit:
                summary.skipped["over_limit"] += 1
                continue
            topic = target_topic(settings, dead)
            assert topic is not None  # checked by _replayable
            summary.replayed += 1
            summary.by_reason[dead.reason] += 1
            summary.by_topic[topic] += 1
            if producer is None:
                if len(summary.samples) < samples:
                    summary.samples.append({**dead.describe(), "to": topic,
                                            "send": value[:200].decode("utf-8", "replace")})
                continue
            origin = f"{settings.kafka.deadletter_topic}/{dead.partition}/{dead.offset}"
            # unchanged bytes keep their format (protobuf too) and contract version; a
            # transform's are JSON of the current version
            unchanged = value == dead.payload
            content_type = dead.content_type if unchanged else "application/json"
            headers = [(REPLAYED_FROM_HEADER, origin.encode()),
                       (REPLAY_ID_HEADER, summary.replay_id.encode()),
                       ("content-type", content_type.encode())]
            if unchanged and dead.schema_version is not None:
                headers.append(("collector-schema", dead.schema_version.encode()))
            pending.append(await producer.send(topic, value, key=dead.key, headers=headers))
            if len(pending) >= 1000:
                await _settle(pending)
        await _settle(pending)
    finally:
        if producer is not None:
            await producer.stop()
    summary.seconds = time.perf_counter() - began
    return summary


async def _settle(pending: list[Any]) -> None:
    for future in pending:
        await future
    pending.clear()


def _replayable(settings: Settings, dead: DeadLetter, transform: Transform | None,
                      summary: ReplaySummary) -> bytes | None:
    """The bytes to send for ``dead``, or None after counting why it is skipped."""
    if target_topic(settings, dead) is None:
        summary.skipped["not_a_raw_event"] += 1
        return None
    if dead.payload is None:
        summary.skipped["no_payload"] += 1
        return None
    if transform is None:
        return dead.payload
    try:
        value = as_bytes(transform(dead.payload, dead))
    except Exception as exc:  # the user's code: count it, keep going, show the first ones
        summary.skipped["transform_failed"] += 1
        if len(summary.errors) < 5:
            summary.errors.append(f"{dead.partition}/{dead.offset}: {exc!r}"[:300])
        return None
    if value is None:
        summary.skipped["transform_skipped"] += 1
    return value


__all__ = ["REPLAYED_FROM_HEADER", "REPLAY_ID_HEADER", "DeadLetter", "Inspection",
           "ReplaySummary", "Selection", "inspect", "load_transform", "replay", "scan",
           "target_topic"]
