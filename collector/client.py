"""A producer helper for Python users of collector's raw topics.

It does what docs/events.md asks of a producer, so that nobody has to get it right by
hand: events are grouped into batch envelopes per user (one Kafka message pays the
per-message cost for up to ``ingest.max_batch_events`` events), each message is keyed
by its ``user_id`` (so Kafka's murmur2 partitioner puts a user's events on the
partition that holds the user's windows), carries ``content-type`` and
``collector-schema`` headers, and stays within ``ingest.max_message_bytes``.  JSON or
protobuf; :meth:`EventProducer.flush` returns one delivery report per message::

    async with EventProducer(settings, source="mobile", encoding="protobuf") as producer:
        producer.add({"event_id": "e-1", "user_id": "u-42", "type": "click", "ts": now_ms})
        for report in await producer.flush():
            if report.error is not None:
                ...  # not delivered: send those events again

Validation stays with the worker (a rejected event goes to the dead-letter topic).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaProducer

from collector.config import Settings, load_settings
from collector.kafka.clients import client_kwargs
from collector.models.contract import JSON_CONTENT_TYPE, PROTOBUF_CONTENT_TYPE, Limits
from collector.models.proto import (
    CONTENT_TYPE_HEADER,
    ENVELOPE_CONTENT_TYPE,
    SCHEMA_HEADER,
    SCHEMA_VERSION,
)
from collector.models.proto_encode import encode_event

Encoding = Literal["json", "protobuf"]


@dataclass(frozen=True, slots=True)
class Message:
    """One raw message ready to produce: ``events`` is how many it holds."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    events: int


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """Where a message went (``partition``, ``offset``) or why it did not (``error``)."""

    user_id: str
    events: int
    topic: str
    partition: int | None = None
    offset: int | None = None
    error: BaseException | None = None


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _headers(content_type: str) -> list[tuple[str, bytes]]:
    return [(CONTENT_TYPE_HEADER, content_type.encode()),
            (SCHEMA_HEADER, SCHEMA_VERSION.encode())]


def encode(event: Mapping[str, Any], encoding: Encoding) -> bytes:
    """One event as JSON or as a serialised ``collector.v1.Event``."""
    return encode_event(event) if encoding == "protobuf" else orjson.dumps(event)


def pack(user_id: str, events: Iterable[Mapping[str, Any]], encoding: Encoding,
         limits: Limits) -> list[Message]:
    """One user's events as messages within the count and byte limits of a message."""
    parts = []
    for event in events:
        if event.get("user_id") != user_id:
            raise ValueError(f"event {event.get('event_id')!r} is not of user {user_id!r}")
        parts.append(encode(event, encoding))
    return pack_encoded(user_id, parts, encoding, limits)


def pack_encoded(user_id: str, parts: list[bytes], encoding: Encoding,
                 limits: Limits) -> list[Message]:
    """:func:`pack` for events encoded already.

    A single event is sent as itself, more as an envelope: a JSON array, or a
    ``collector.v1.Envelope`` (whose wire form is each Event behind the tag and length
    of field 1, so it is concatenated here without encoding anything twice).  An event
    larger than the limit on its own still goes, alone: the worker dead-letters it as
    ``too_large``, where it can be seen.
    """
    protobuf = encoding == "protobuf"
    messages: list[Message] = []
    batch: list[bytes] = []
    size = 1  # JSON "[" so far; protobuf framing is counted per part
    for part in parts:
        framed = len(part) + (1 + len(_varint(len(part))) if protobuf else 1)
        if batch and (len(batch) >= limits.max_batch_events
                      or size + framed > limits.max_message_bytes):
            messages.append(_message(user_id, batch, protobuf))
            batch, size = [], 1
        batch.append(part)
        size += framed
    if batch:
        messages.append(_message(user_id, batch, protobuf))
    return messages


def _message(user_id: str, parts: list[bytes], protobuf: bool) -> Message:
    key = user_id.encode()
    if len(parts) == 1:
        content_type = PROTOBUF_CONTENT_TYPE if protobuf else JSON_CONTENT_TYPE
        return Message(key, parts[0], _headers(content_type), 1)
    if protobuf:
        value = b"".join(b"\x0a" + _varint(len(part)) + part for part in parts)
        return Message(key, value, _headers(ENVELOPE_CONTENT_TYPE), len(parts))
    return Message(key, b"[" + b",".join(parts) + b"]", _headers(JSON_CONTENT_TYPE),
                   len(parts))


class EventProducer:
    """Buffers events per user; :meth:`flush` produces them as envelopes and waits."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        source: str,
        encoding: Encoding = "json",
        **producer_options: Any,
    ) -> None:
        self.settings = settings or load_settings()
        if source not in self.settings.kafka.sources:
            raise ValueError(f"unknown source {source!r}; sources: {self.settings.kafka.sources}")
        if encoding not in ("json", "protobuf"):
            raise ValueError(f"encoding must be 'json' or 'protobuf', not {encoding!r}")
        self.topic = self.settings.kafka.raw_topic(source)
        self.encoding: Encoding = encoding
        self.limits = Limits.from_settings(self.settings.ingest)
        options: dict[str, Any] = {
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "max_request_size": max(1_048_576, self.limits.max_message_bytes * 2),
        }
        options.update(producer_options)
        self._options = {**client_kwargs(self.settings), **options}
        self._producer: AIOKafkaProducer | None = None  # made in start(): it needs a loop
        self._pending: dict[str, list[bytes]] = {}

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(**self._options)
        await self._producer.start()

    async def stop(self) -> None:
        """Stop the producer; events added but not flushed are not sent."""
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> EventProducer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def add(self, event: Mapping[str, Any]) -> None:
        """Buffer one event (a dict in the JSON contract's form) until :meth:`flush`.

        Encoded now, so an event protobuf cannot carry raises here
        (:class:`~collector.models.proto_encode.Unrepresentable`), not in a flush.
        """
        user_id = event.get("user_id")
        if type(user_id) is not str or not user_id:
            raise ValueError("an event needs a user_id string: it is the message key")
        encoded = encode(event, self.encoding)
        self._pending.setdefault(user_id, []).append(encoded)

    async def flush(self) -> list[DeliveryReport]:
        """Produce everything buffered; one report per message, failures included."""
        producer = self._producer
        if producer is None:
            raise RuntimeError("EventProducer.flush before start (use: async with …)")
        pending, self._pending = self._pending, {}
        sent: list[tuple[str, Message, asyncio.Future[Any] | BaseException]] = []
        for user_id, parts in pending.items():
            for message in pack_encoded(user_id, parts, self.encoding, self.limits):
                try:
                    future = await producer.send(
                        self.topic, message.value, key=message.key, headers=message.headers)
                except Exception as exc:  # e.g. a message over the producer's size limit
                    sent.append((user_id, message, exc))
                    continue
                sent.append((user_id, message, future))
        results = await asyncio.gather(
            *(item for _, _, item in sent if isinstance(item, asyncio.Future)),
            return_exceptions=True)
        outcomes = iter(results)
        reports = []
        for user_id, message, item in sent:
            outcome = item if isinstance(item, BaseException) else next(outcomes)
            if isinstance(outcome, BaseException):
                reports.append(DeliveryReport(user_id, message.events, self.topic, error=outcome))
            else:
                reports.append(DeliveryReport(user_id, message.events, self.topic,
                                              outcome.partition, outcome.offset))
        return reports

    async def send(self, events: Iterable[Mapping[str, Any]]) -> list[DeliveryReport]:
        """:meth:`add` each event, then :meth:`flush`."""
        for event in events:
            self.add(event)
        return await self.flush()


__all__ = ["DeliveryReport", "EventProducer", "Message", "encode", "pack", "pack_encoded"]
