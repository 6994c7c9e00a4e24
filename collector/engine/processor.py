"""The front half of the pipeline for one batch of raw messages: decode, validate,
dead-letter, enrich, forward.

Kept free of Faust so it can be tested with plain lists; the agent in
:mod:`collector.agents.raw` only adapts Faust events to :class:`RawRecord`.
Every consumed message ends as valid events plus dead-letter records, never neither.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka.partitioner import murmur2

from collector.config import Settings
from collector.engine.delivery import Stopping
from collector.engine.ports import Batches, Headers, Output
from collector.enrichment import Enricher, Outcome
from collector.models import (
    DEADLETTER_REASON_HEADER,
    Limits,
    Reason,
    Reject,
    dead_letter_for_event,
    dead_letter_record,
    decode_message,
)
from collector.models.proto import (
    CONTENT_TYPE_HEADER,
    JSON,
    PROTOBUF_EVENT,
    declared_content_type,
    declared_version,
    decode_record,
)
from collector.observability import Metrics, tracing
from collector.observability.logs import where

if TYPE_CHECKING:
    from collector.engine.aggregator import Aggregator, Late

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RawRecord:
    """One consumed Kafka message, as the processor needs it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    #: ``(name, value)`` pairs as aiokafka gives them: content type, schema version and
    #: a W3C traceparent (a process span: app.tracing)
    headers: Any = None
    #: the record's Kafka timestamp, epoch seconds (how far behind the worker is)
    timestamp: float | None = None


#: header on an event produced again to the partition its user_id maps to
REROUTED_HEADER = "x-collector-rerouted-from"
#: a rerouted event is its normalised JSON, whatever the source's default format
_REROUTED_TYPE = (CONTENT_TYPE_HEADER, b"application/json")
#: cached user_id -> home partition entries before the cache starts over
HOME_CACHE_MAX = 200_000


def home_partition(user_id: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2 of the key) gives ``user_id``."""
    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


#: a record to produce: topic, key, value, headers, partition (None: the key's)
Outgoing = tuple[str, bytes | None, bytes, Headers | None, int | None]


class Counts:
    """Metric increments decided during a batch, applied at once when it is decided."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[tuple[str, tuple[str, ...]], int] = {}

    def add(self, metric: str, *labels: str, n: int = 1) -> None:
        key = (metric, labels)
        self._counts[key] = self._counts.get(key, 0) + n

    def apply(self, metrics: Metrics) -> None:
        """Increment; ``consumed`` last (see :meth:`RawProcessor.process`)."""
        items = sorted(self._counts.items(), key=lambda kv: kv[0][0] == "consumed")
        for (metric, labels), n in items:
            getattr(metrics, metric).labels(*labels).inc(n)


def describe_failure(exc: BaseException) -> str:
    """``internal error: KeyError at collector/x.py:12 in f: 'k'`` (where it was raised)."""
    where = ""
    tb = exc.__traceback__
    if tb is not None:
        frame = traceback.extract_tb(tb)[-1]
        where = f" at {frame.filename.rsplit('/collector/', 1)[-1]}:{frame.lineno} in {frame.name}"
    return f"internal error: {type(exc).__qualname__}{where}: {str(exc)[:200]}"


@dataclass(slots=True)
class BatchResult:
    """What one batch produced; ``enriched`` feeds the aggregations."""

    enriched: list[tuple[RawRecord, dict[str, Any]]] = field(default_factory=list)
    dead_letters: int = 0
    consumed: int = 0
    duplicates: int = 0


class RawProcessor:
    """Turns raw messages into enriched events and dead-letter records."""

    def __init__(
        self,
        settings: Settings,
        enricher: Enricher,
        metrics: Metrics,
        *,
        aggregator: Aggregator | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kafka = settings.kafka
        self._limits = Limits.from_settings(settings.ingest)
        self._forward = settings.ingest.forward_enriched
        self._enricher = enricher
        self._metrics = metrics
        self._clock = clock
        self.aggregator = aggregator
        #: running totals for the progress log (metrics carry the labelled detail)
        self.totals = {"batches": 0, "messages": 0, "consumed": 0, "valid": 0,
                       "dead_lettered": 0}
        #: (topic, partition) -> offset after the last message processed, valid or not
        self.next_offsets: dict[tuple[str, int], int] = {}
        self._partitions = settings.kafka.partitions
        self._reroute = settings.kafka.reroute_misrouted
        self._homes: dict[str, int] = {}
        self._poison_attempts = settings.kafka.poison_attempts
        #: format of a message without content-type header, for sources not JSON by default
        self._defaults = dict.fromkeys(settings.kafka.protobuf_sources, PROTOBUF_EVENT)

    def _home(self, user_id: str) -> int:
        home = self._homes.get(user_id)
        if home is None:
            if len(self._homes) >= HOME_CACHE_MAX:
                self._homes.clear()
            home = self._homes[user_id] = home_partition(user_id, self._partitions)
        return home

    async def process(self, records: Sequence[RawRecord], out: Output,
                      settle: list[Awaitable[Any]] | None = None) -> BatchResult:
        """Process a batch; returns only once everything is accepted by ``out``.

        Everything is decided first (records to send, counts, window state), then the
        counts are applied and the records sent, so a failure before that point leaves
        nothing behind to count or send twice when the batch is retried.  Past it only
        the producer can fail, and it produces again until the broker acks.

        With ``settle``, the deliveries are appended to it instead of awaited: the
        caller must await them before it acks the batch (the consumer does, in order,
        while it processes the next fetch: collector.adapters.direct).
        """
        now_ms = int(self._clock() * 1000)
        result = BatchResult()
        counts = Counts()
        outgoing: list[Outgoing] = []
        valid: list[tuple[RawRecord, str, dict[str, Any]]] = []
        consumed: dict[str, int] = {}
        deadletter_topic = self._kafka.deadletter_topic
        for record in records:
            source = self._kafka.source_of(record.topic)
            if source is None:  # not ours: the agent subscribes raw topics only
                log.warning("ignoring message from foreign topic %s", record.topic)
                continue
            default = self._defaults.get(source)  # set for protobuf sources only
            if record.headers or default is not None:
                decoded = decode_record(record.value, record.key, record.headers, source,
                                        self._limits, now_ms, default or JSON)
            else:  # no header, JSON source: the JSON path as it always was
                decoded = decode_message(record.value, record.key, source, self._limits, now_ms)
            counts.add("messages", source)
            count = len(decoded.events) + len(decoded.rejects)
            for event in decoded.events:
                if self._reroute and self._home(event["user_id"]) != record.partition:
                    outgoing.append(self._home_record(record, event))
                    count -= 1  # consumed where it belongs
                    counts.add("rerouted", source)
                else:
                    valid.append((record, source, event))
            consumed[source] = consumed.get(source, 0) + count
            for reject in decoded.rejects:
                payload = dead_letter_record(
                    reject, source=source, topic=record.topic, partition=record.partition,
                    offset=record.offset, raw=record.value, received_at_ms=now_ms,
                    content_type=declared_content_type(record.headers, default or JSON),
                    schema_version=declared_version(record.headers)
                    if reject.reason is Reason.UNSUPPORTED_VERSION else None,
                )
                headers = [(DEADLETTER_REASON_HEADER, reject.reason.value.encode())]
                outgoing.append((deadletter_topic, record.key, payload, headers, None))
                counts.add("dead_lettered", source, reject.reason.value)
                result.dead_letters += 1
        forward = await self._enrich(valid, result, out, counts) if valid else None
        if self.aggregator is not None and result.enriched:
            self._aggregate(result, counts, outgoing, now_ms)
        # decided: from here on nothing raises but a cancellation
        next_offsets = self.next_offsets
        for record in records:
            tp = (record.topic, record.partition)
            if record.offset >= next_offsets.get(tp, 0):
                next_offsets[tp] = record.offset + 1
        for source, count in consumed.items():
            counts.add("consumed", source, n=count)
            result.consumed += count
        counts.apply(self._metrics)  # consumed last: a scrape never sees valid + DL short
        pending = [await out.send(*record) for record in outgoing]
        if forward is not None:
            pending.extend(await forward.submit())
        if self.aggregator is not None:
            pending.extend(await self.aggregator.submit())
        if settle is not None:
            settle.extend(pending)
        elif pending:
            await asyncio.gather(*pending)
        return result

    def _aggregate(self, result: BatchResult, counts: Counts, outgoing: list[Outgoing],
                   now_ms: int) -> None:
        agg = self.aggregator
        assert agg is not None
        before, dups = dict(agg.updates), dict(agg.duplicates)
        for late in agg.apply(result.enriched):
            outgoing.append(self._late_record(late, now_ms, counts))
            result.dead_letters += 1
        for table, count in agg.updates.items():
            if count > before.get(table, 0):
                counts.add("window_updates", table, n=count - before.get(table, 0))
        for source, count in agg.duplicates.items():
            if count > dups.get(source, 0):
                counts.add("duplicates", source, n=count - dups.get(source, 0))
                result.duplicates += count - dups.get(source, 0)

    async def process_safely(self, records: Sequence[RawRecord], out: Output,
                             settle: list[Awaitable[Any]] | None = None) -> BatchResult:
        """:meth:`process`, but an unexpected error can neither crash the agent nor lose data.

        On a bug the batch is retried record by record; a record that fails
        ``kafka.poison_attempts`` times is dead-lettered as ``internal_error`` unless
        its events were already counted (then it is done: never counted and
        dead-lettered both).  Nothing is counted or sent by an attempt that failed.
        ``settle``: as for :meth:`process` (a retry record by record awaits its own).
        """
        if self.aggregator is not None:
            self.aggregator.forget_folded()
        with tracing.process_spans(records):
            return await self._process_safely(records, out, settle)

    async def _process_safely(self, records: Sequence[RawRecord], out: Output,
                              settle: list[Awaitable[Any]] | None) -> BatchResult:
        try:
            result = await self.process(records, out, settle)
            self._count(len(records), result)
            return result
        except (asyncio.CancelledError, Stopping):  # stopping: nothing acked, redone later
            raise
        except Exception:
            log.exception("batch of %d failed; retrying one record at a time", len(records))
        total = BatchResult()
        for record in records:
            one = await self._one_at_a_time(record, out)
            total.enriched.extend(one.enriched)
            total.dead_letters += one.dead_letters
            total.consumed += one.consumed
            total.duplicates += one.duplicates
        self._count(len(records), total)
        return total

    async def _one_at_a_time(self, record: RawRecord, out: Output) -> BatchResult:
        failures: list[Exception] = []
        while len(failures) < self._poison_attempts:
            try:
                return await self.process([record], out)
            except (asyncio.CancelledError, Stopping):
                raise
            except Exception as exc:
                failures.append(exc)
                log.exception("record %s[%d]@%d failed (attempt %d of %d)", record.topic,
                              record.partition, record.offset, len(failures),
                              self._poison_attempts,
                              extra=where(record.topic, record.partition, record.offset))
        if self.aggregator is not None and self.aggregator.absorbed(record):
            log.error("record %s[%d]@%d failed after its events were counted: not "
                      "dead-lettered", record.topic, record.partition, record.offset,
                      extra=where(record.topic, record.partition, record.offset))
            return BatchResult()
        return await self._dead_letter_internal(record, failures[-1], out)

    def _count(self, messages: int, result: BatchResult) -> None:
        totals = self.totals
        totals["batches"] += 1
        totals["messages"] += messages
        totals["consumed"] += result.consumed
        totals["valid"] += len(result.enriched)
        totals["dead_lettered"] += result.dead_letters

    async def _dead_letter_internal(
        self, record: RawRecord, exc: Exception, out: Output
    ) -> BatchResult:
        source = self._kafka.source_of(record.topic) or "unknown"
        reject = Reject(
            reason=Reason.INTERNAL_ERROR,
            errors=[{"loc": "", "msg": describe_failure(exc)}],
            index=None,
            element=None,
        )
        payload = dead_letter_record(
            reject, source=source, topic=record.topic, partition=record.partition,
            offset=record.offset, raw=record.value, received_at_ms=int(self._clock() * 1000),
            content_type=declared_content_type(record.headers, self._defaults.get(source, JSON)),
        )
        headers = [(DEADLETTER_REASON_HEADER, reject.reason.value.encode())]
        await (await out.send(self._kafka.deadletter_topic, record.key, payload, headers))
        self._metrics.dead_lettered.labels(source, reject.reason.value).inc()
        self._metrics.consumed.labels(source).inc()
        return BatchResult(dead_letters=1, consumed=1)

    def _home_record(self, record: RawRecord, event: dict[str, Any]) -> Outgoing:
        """A valid event to produce again, keyed, to the partition its user_id maps to.

        A user's windows live in one partition; an unkeyed message, or one from a
        producer whose partitioner is not murmur2 (librdkafka's default is CRC32), lands
        elsewhere.  Counting it there would split the user's window in two, so it is
        counted where it belongs instead: one more trip through Kafka, for those only.
        """
        user_id = event["user_id"]
        origin = f"{record.topic}/{record.partition}/{record.offset}".encode()
        return (record.topic, user_id.encode(), orjson.dumps(event),
                [(REROUTED_HEADER, origin), _REROUTED_TYPE], self._home(user_id))

    def _late_record(self, late: Late, now_ms: int, counts: Counts) -> Outgoing:
        record, event = late.record, late.event
        payload = dead_letter_for_event(
            Reason.LATE, event, late.errors,  # type: ignore[arg-type]
            source=event["source"], topic=record.topic, partition=record.partition,
            offset=record.offset, received_at_ms=now_ms,
        )
        for table in late.tables:
            counts.add("late_events", table)
        counts.add("dead_lettered", event["source"], Reason.LATE.value)
        headers = [(DEADLETTER_REASON_HEADER, Reason.LATE.value.encode())]
        return (self._kafka.deadletter_topic, record.key, payload, headers, None)

    async def _enrich(
        self,
        valid: list[tuple[RawRecord, str, dict[str, Any]]],
        result: BatchResult,
        out: Output,
        counts: Counts,
    ) -> Batches | None:
        """Enrich ``valid`` into ``result``; the forwarded records, not yet submitted."""
        profiles = await self._enricher.enrich_many({event["user_id"] for _, _, event in valid})
        outcomes: dict[str, int] = {}
        valid_by_source: dict[str, int] = {}
        forward = await out.batches(self._kafka.enriched_topic) if self._forward else None
        for record, source, event in valid:
            profile, outcome = profiles[event["user_id"]]
            event["segment"] = profile.segment
            event["country"] = profile.country
            event["plan"] = profile.plan
            name = event["enrichment"] = outcome.value  # an Enum's .value is a descriptor
            outcomes[name] = outcomes.get(name, 0) + 1
            valid_by_source[source] = valid_by_source.get(source, 0) + 1
            result.enriched.append((record, event))
            if forward is not None:  # appended at once: see collector.adapters.output
                forward.add(event["user_id"].encode(), orjson.dumps(event))
        for source, count in valid_by_source.items():
            counts.add("valid", source, n=count)
        for name, count in outcomes.items():
            counts.add("enrichment", name, n=count)
        return forward


__all__ = ["BatchResult", "Outcome", "Output", "RawProcessor", "RawRecord"]
