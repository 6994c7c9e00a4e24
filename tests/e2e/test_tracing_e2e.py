"""A traced HTTP ingest, followed through a real worker to the sink write.

The test is the OTLP/HTTP receiver (``/v1/traces``, protobuf, as Tempo or an OTel
collector receives it).  It posts an event with its own ``traceparent``; the worker must
export ``collector.ingest`` as that span's child, ``collector.process`` in the same trace
as the ingest span's child (the context crossed Kafka in the record's headers), and a
``collector.sink.write`` that links the process span.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web as aioweb
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from collector.config import Settings
from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import settings_for
from tests.e2e.test_windows_e2e import window_env
from tests.e2e.test_windows_robust import start, until
from tests.e2e.workers import Worker, free_port

pytestmark = pytest.mark.e2e


async def receiver(port: int, spans: list[Any]) -> aioweb.AppRunner:
    async def traces(request: aioweb.Request) -> aioweb.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for resource in message.resource_spans:
            for scope in resource.scope_spans:
                spans.extend(scope.spans)
        return aioweb.Response(body=b"", content_type="application/x-protobuf")

    app = aioweb.Application()
    app.router.add_post("/v1/traces", traces)
    runner = aioweb.AppRunner(app)
    await runner.setup()
    await aioweb.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def test_ingest_process_and_sink_write_spans_form_one_trace(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    otlp_port = free_port()
    spans: list[Any] = []
    runner = await receiver(otlp_port, spans)
    try:
        tag = "o" + secrets.token_hex(4)
        env = window_env(tmp_path, tag)
        env.update(COLLECTOR_APP__TRACING="true",
                   COLLECTOR_APP__TRACING_ENDPOINT=f"http://127.0.0.1:{otlp_port}/v1/traces")
        settings = settings_for(env)
        await ensure_topics(settings)
        worker = await start(worker_factory(env, "worker"))

        trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
        body = orjson.dumps([{"event_id": f"{tag}-1", "user_id": f"{tag}u1", "type": "click",
                              "ts": int(time.time() * 1000)}])
        async with aiohttp.ClientSession() as http, http.post(
            f"http://127.0.0.1:{worker.port}/api/v1/events/{settings.kafka.sources[0]}",
            data=body, headers={"Content-Type": "application/json",
                                "traceparent": f"00-{trace_id}-{client_span}-01"},
        ) as resp:
            assert resp.status == 202, await resp.text()

        def named(name: str) -> list[Any]:
            return [s for s in spans if s.name == name and s.trace_id.hex() == trace_id]

        async def exported() -> tuple[bool, Any]:
            process = named("collector.process")
            writes = [s for s in spans if s.name == "collector.sink.write"
                      and any(link.span_id == p.span_id for link in s.links for p in process)]
            done = bool(named("collector.ingest") and process and writes)
            return done, sorted({s.name for s in spans})

        await until(exported, 60, "the three kinds of span")  # batch export: every 5 s
        (ingest,) = named("collector.ingest")
        (process,) = named("collector.process")
        write = next(s for s in spans if s.name == "collector.sink.write"
                     and any(link.span_id == process.span_id for link in s.links))
        for one in (ingest, process, write):
            print(f"\n[tracing] {one.name} trace={one.trace_id.hex()} span={one.span_id.hex()} "
                  f"parent={one.parent_span_id.hex() or '-'} links="
                  f"{[(link.trace_id.hex(), link.span_id.hex()) for link in one.links]} "
                  f"{(one.end_time_unix_nano - one.start_time_unix_nano) / 1e6:.1f} ms "
                  f"attributes={attributes_of(one)}", flush=True)
        assert ingest.parent_span_id.hex() == client_span
        assert process.parent_span_id == ingest.span_id
        source = settings.kafka.sources[0]
        assert attributes_of(ingest) == {"collector.source": source, "collector.accepted": 1,
                                         "collector.rejected": 0}
        attributes = attributes_of(process)
        assert attributes["messaging.destination.name"] == settings.kafka.raw_topic(source)
        assert attributes["messaging.system"] == "kafka"
        assert {"messaging.kafka.destination.partition",
                "messaging.kafka.message.offset"} <= attributes.keys()
        assert attributes_of(write)["collector.sink"] in {"mysql", "influxdb"}
        assert attributes_of(write)["collector.rows"] >= 1
    finally:
        await runner.cleanup()


def attributes_of(span: Any) -> dict[str, Any]:
    """An exported span's attributes as plain values (OTLP wraps each in an AnyValue)."""
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}
