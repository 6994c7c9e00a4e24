"""The raw processor with protobuf: headers, a protobuf source, reroutes and dead letters."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from collector.config import KafkaSettings, Settings
from collector.engine.processor import RawProcessor, RawRecord, home_partition
from collector.models.proto import ENVELOPE_CONTENT_TYPE
from collector.models.proto_encode import encode_envelope, encode_event
from collector.observability import Metrics
from tests.unit.test_retry_path import Broker, Profiles, event, users_on

SETTINGS = Settings(kafka=KafkaSettings(protobuf_sources=["mobile"]))
MOBILE, WEB = SETTINGS.kafka.raw_topic("mobile"), SETTINGS.kafka.raw_topic("web")
DEAD = SETTINGS.kafka.deadletter_topic


class HeaderBroker(Broker):
    """The retry tests' broker, keeping each record's headers too."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, bytes | None, bytes | None, Any, int | None]] = []

    async def send_once(self, topic: str, key: bytes | None, value: bytes | None,
                        headers: Any, partition: int | None = None) -> Awaitable[Any]:
        self.sent.append((topic, key, value, headers, partition))
        return await super().send_once(topic, key, value, headers, partition)


def build(profiles: Profiles | None = None) -> tuple[RawProcessor, Metrics]:
    metrics = Metrics(CollectorRegistry())
    processor = RawProcessor(SETTINGS, profiles or Profiles(), metrics)  # type: ignore[arg-type]
    return processor, metrics


def dead_letters(broker: HeaderBroker) -> list[dict[str, Any]]:
    return [orjson.loads(value) for topic, _, value, _, _ in broker.sent if topic == DEAD]


async def test_a_protobuf_source_reads_messages_without_headers_as_protobuf() -> None:
    processor, _ = build()
    [user] = users_on(0, 1)
    now = int(time.time() * 1000)
    records = [
        RawRecord(MOBILE, 0, 0, user.encode(), encode_event(event("e1", user, now))),
        RawRecord(MOBILE, 0, 1, user.encode(), encode_envelope(
            [event("e2", user, now), event("e3", user, now)]),
            [("content-type", ENVELOPE_CONTENT_TYPE.encode())]),
        RawRecord(MOBILE, 0, 2, None, orjson.dumps(event("e4", user, now)),
                  [("content-type", b"application/json")]),
        RawRecord(WEB, 0, 0, None, orjson.dumps(event("e5", user, now))),  # JSON source
    ]
    result = await processor.process_safely(records, HeaderBroker())
    assert [e["event_id"] for _, e in result.enriched] == ["e1", "e2", "e3", "e4", "e5"]
    assert result.dead_letters == 0


async def test_malformed_protobuf_is_dead_lettered_with_its_reason_and_bytes() -> None:
    processor, metrics = build()
    broker = HeaderBroker()
    raw = b"\x0a\x05ab"
    result = await processor.process_safely([RawRecord(MOBILE, 0, 0, b"u1", raw)], broker)
    assert result.dead_letters == 1 and result.consumed == 1
    [letter] = dead_letters(broker)
    assert (letter["reason"], letter["payload_encoding"]) == ("malformed_protobuf", "base64")
    assert base64.b64decode(letter["payload"]) == raw
    assert letter["content_type"] == "application/x-protobuf"
    assert [h for t, _, _, h, _ in broker.sent if t == DEAD] == [
        [("x-collector-reason", b"malformed_protobuf")]]
    assert metrics.registry.get_sample_value(
        "collector_events_dead_lettered_total",
        {"source": "mobile", "reason": "malformed_protobuf"}) == 1


async def test_an_unsupported_version_is_dead_lettered() -> None:
    processor, _ = build()
    broker = HeaderBroker()
    record = RawRecord(WEB, 0, 0, None, orjson.dumps(event("e1", "u1")),
                       [("collector-schema", b"2")])
    assert (await processor.process_safely([record], broker)).dead_letters == 1
    (letter,) = dead_letters(broker)
    assert letter["reason"] == "unsupported_version"
    # kept for the replay once the workers read version 2 (else it would go as version 1)
    assert letter["schema_version"] == "2"


async def test_only_an_unsupported_version_letter_names_a_version() -> None:
    processor, _ = build()
    broker = HeaderBroker()
    record = RawRecord(WEB, 0, 0, None, b"{broken", [("collector-schema", b"1")])
    assert (await processor.process_safely([record], broker)).dead_letters == 1
    (letter,) = dead_letters(broker)
    assert letter["reason"] == "malformed_json" and "schema_version" not in letter


async def test_a_rerouted_protobuf_event_goes_back_as_json_and_says_so() -> None:
    processor, _ = build()
    broker = HeaderBroker()
    [user] = users_on(1, 1)
    now = int(time.time() * 1000)
    wrong = 0 if home_partition(user, SETTINGS.kafka.partitions) else 1
    record = RawRecord(MOBILE, wrong, 5, None, encode_event(event("e1", user, now)))
    result = await processor.process_safely([record], broker)
    assert result.enriched == []
    [(topic, key, value, headers, partition)] = [s for s in broker.sent if s[0] == MOBILE]
    assert (topic, key, partition) == (MOBILE, user.encode(), 1)
    assert ("content-type", b"application/json") in headers
    # read back on its home partition of a protobuf source: decoded as the JSON it is
    again = await processor.process_safely(
        [RawRecord(MOBILE, 1, 0, key, value, headers)], HeaderBroker())
    assert [e["event_id"] for _, e in again.enriched] == ["e1"]


async def test_an_internal_error_on_protobuf_keeps_its_bytes_and_type() -> None:
    profiles = Profiles()
    processor, _ = build(profiles)
    broker = HeaderBroker()
    [user] = users_on(0, 1)
    profiles.explode.add(user)
    raw = encode_event(event("e1", user, int(time.time() * 1000)))
    result = await asyncio.wait_for(
        processor.process_safely([RawRecord(MOBILE, 0, 0, None, raw)], broker), 10)
    assert result.dead_letters == 1
    [letter] = dead_letters(broker)
    assert (letter["reason"], letter["content_type"]) == (
        "internal_error", "application/x-protobuf")
    assert base64.b64decode(letter["payload"]) == raw
