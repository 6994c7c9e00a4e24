"""Reference: a minimal plain-Faust app counting a tumbling 60 s window per (source, type).

Faust's default settings except what a run needs to be isolated and correct: broker,
app id, data dir, web port, and ``topic_partitions`` equal to the raw topics' partition
count (so the changelog lines up with the source partitions).  Memory store (the
default).  Every message is decoded with orjson; an envelope (a JSON list) counts each
element; anything undecodable is skipped.  Not co-partitioned by (source, type): one
worker owns every partition, so the counts are still right.

Configured by environment (set by ``benchmarks.pipeline``):
``BENCH_REF_ID``, ``BENCH_REF_BROKER``, ``BENCH_REF_TOPICS`` (comma-separated),
``BENCH_REF_PREFIX`` (raw topic prefix, stripped to get the source), ``BENCH_REF_DATADIR``,
``BENCH_REF_PORT``, ``BENCH_REF_PARTITIONS``, ``BENCH_REF_STATUS`` (a JSON file the app
rewrites every 0.1 s with how many messages and events it has counted).

Run: ``faust -A benchmarks.reference_app worker -l info``.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import faust
import orjson

ENV = os.environ
TOPICS = [t for t in ENV.get("BENCH_REF_TOPICS", "bench.raw.mobile").split(",") if t]
PREFIX = ENV.get("BENCH_REF_PREFIX", "bench.raw.")
STATUS = Path(ENV.get("BENCH_REF_STATUS", ".local/bench-ref-status.json"))

app = faust.App(
    ENV.get("BENCH_REF_ID", "bench-reference"),
    broker=ENV.get("BENCH_REF_BROKER", "kafka://127.0.0.1:19092"),
    datadir=ENV.get("BENCH_REF_DATADIR", ".local/bench-ref"),
    web_port=int(ENV.get("BENCH_REF_PORT", "16067")),
    topic_partitions=int(ENV.get("BENCH_REF_PARTITIONS", "4")),
    store="memory://",
)
raw = app.topic(*TOPICS, value_serializer="raw", key_serializer="raw")
counts = app.Table("counts", default=int).tumbling(60, expires=timedelta(hours=1))
progress = {"messages": 0, "events": 0}


def types_of(value: Any) -> list[str]:
    """The event types in one raw message (empty if it is not usable)."""
    try:
        body = orjson.loads(value or b"")
    except orjson.JSONDecodeError:
        return []
    items = body if isinstance(body, list) else [body]
    return [str(e["type"]) for e in items if isinstance(e, dict) and "type" in e]


@app.agent(raw)
async def count(stream: Any) -> None:
    async for event in stream.events():
        source = event.message.topic[len(PREFIX):]
        for etype in types_of(event.value):
            counts[f"{source}|{etype}"] += 1
            progress["events"] += 1
        progress["messages"] += 1


@app.timer(interval=0.1)
async def write_status() -> None:
    tmp = STATUS.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(progress))
    tmp.replace(STATUS)
