"""OpenTelemetry spans with the SDK's in-memory exporter: ingest's traceparent in the
Kafka headers becomes the parent of the process span, and the sink write links it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from collector.config import Settings
from collector.engine.processor import RawRecord
from collector.observability import tracing
from collector.sinks.rows import Row
from tests.unit.test_retry_path import TOPIC, Broker, build, event, users_on
from tests.unit.test_sink_base import Scripted


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert tracing.setup(Settings(app={"tracing": True}), exporter=exporter)  # type: ignore[arg-type]
    try:
        yield exporter
    finally:
        tracing.shutdown()


def test_off_by_default_and_free() -> None:
    assert not tracing.setup(Settings())
    assert not tracing.enabled()
    assert tracing.inject([("a", b"1")]) == [("a", b"1")]
    valid = b"00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01"
    assert tracing.extract([("traceparent", valid)]) is None  # not tracing: not even parsed
    with tracing.span("x") as current:
        assert current is None
    with tracing.process_spans([RawRecord(TOPIC, 0, 1, None, b"{}", None)]) as started:
        assert started == []


async def test_ingest_to_process_to_sink_write(spans: InMemorySpanExporter) -> None:
    # ingest: a span whose context goes into the Kafka headers
    with tracing.span("collector.ingest", {"collector.source": "web"}, kind="SERVER"):
        headers = tracing.inject([("x-other", b"1")])
    assert headers is not None and [k for k, _ in headers] == ["x-other", "traceparent"]

    processor, _, _, _ = build()
    [user] = users_on(0, 1)
    now = int(time.time() * 1000)
    batch = [RawRecord(TOPIC, 0, 7, None, orjson.dumps(event("e1", user, now)), headers),
             RawRecord(TOPIC, 0, 8, None, orjson.dumps(event("e2", user, now)), None)]
    result = await processor.process_safely(batch, Broker())
    assert result.consumed == 2

    sink = Scripted()
    sink.add([Row(table="user_activity", window_start_ms=60_000, window_seconds=60,
                  key=(user,), values={"count": 1, "types": ["click"], "first_ts": 1,
                                       "last_ts": 1}, final=False, latest_event_ms=1)])
    await sink.flush()
    sink.add([Row(table="user_activity", window_start_ms=120_000, window_seconds=60,
                  key=(user,), values={"count": 1, "types": ["click"], "first_ts": 1,
                                       "last_ts": 1}, final=False, latest_event_ms=1)])
    await sink.flush()

    by_name: dict[str, list[ReadableSpan]] = {}
    for finished in spans.get_finished_spans():
        by_name.setdefault(finished.name, []).append(finished)
    (ingest,) = by_name["collector.ingest"]
    (process,) = by_name["collector.process"]  # the record without traceparent has none
    first, second = by_name["collector.sink.write"]
    assert process.parent is not None
    assert process.parent.span_id == ingest.context.span_id
    assert process.context.trace_id == ingest.context.trace_id
    assert process.kind is SpanKind.CONSUMER
    assert process.attributes["messaging.kafka.message.offset"] == 7
    assert [link.context.span_id for link in first.links] == [
        process.context.span_id]
    assert not second.links  # linked once, by the first write
    assert first.attributes["collector.sink"] == "scripted"


async def test_a_failing_batch_marks_its_process_spans(spans: InMemorySpanExporter) -> None:
    with tracing.span("collector.ingest"):
        headers = tracing.inject()
    with pytest.raises(RuntimeError), tracing.process_spans(
        [RawRecord(TOPIC, 0, 1, None, b"{}", headers)]
    ):
        raise RuntimeError("bug")
    (process,) = [s for s in spans.get_finished_spans() if s.name == "collector.process"]
    assert process.status.status_code is StatusCode.ERROR


def test_an_invalid_traceparent_is_ignored(spans: InMemorySpanExporter) -> None:
    assert tracing.extract({"traceparent": "garbage"}) is None
    assert tracing.extract([("TraceParent", b"00-" + b"0" * 32 + b"-" + b"0" * 16 + b"-01")]
                           ) is None
    assert tracing.extract(None) is None


def test_otlp_headers_parse() -> None:
    assert tracing._parse_headers("api-key=abc, x = y,broken") == {"api-key": "abc", "x": "y"}
