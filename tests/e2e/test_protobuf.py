"""Protobuf end to end: the same events as protobuf and as JSON end up in the same rows.

The protobuf messages are built with code that a stock ``protoc`` (grpcio-tools')
generates here from the shipped ``.proto``, as a producer outside this repository
would.  Three users send the same three events, each its own way, all to one source
whose default format is protobuf:

* ``P``: a single Event without headers (the source's default), then an Envelope
  (``messageType=collector.v1.Envelope``), then its first event again as JSON, which
  must count as a duplicate of the protobuf one; plus a malformed protobuf message and
  one of contract version 2, which must be dead-lettered with their reasons;
* ``J``: JSON through :class:`collector.client.EventProducer` (delivery reports);
* ``H``: one protobuf Envelope posted to HTTP ingest.

MySQL must then hold one ``event_stats`` row per type counting all three users, and
three ``user_activity`` rows alike but for the user.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from collector.client import EventProducer
from collector.config import Settings
from collector.kafka.clients import client_kwargs
from collector.kafka.topics import ensure_topics
from collector.models.protogen import PROTO_FILE, PROTO_ROOT
from tests.e2e.kafka_io import read_until, settings_for
from tests.e2e.sinks_io import influx_create_db, mysql_rows
from tests.e2e.test_windows_robust import SMALL_ENV, until
from tests.e2e.workers import Worker, isolated_env

pytestmark = pytest.mark.e2e

ENVELOPE_TYPE = "application/x-protobuf; messageType=collector.v1.Envelope"


def stock_protoc(out: Path) -> ModuleType:
    """The shipped .proto compiled by protoc in a subprocess, imported from ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
                    f"--python_out={out}", PROTO_FILE], check=True)
    path = out / PROTO_FILE.replace(".proto", "_pb2.py")
    spec = importlib.util.spec_from_file_location("producer_events_pb2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def the_events(user: str, t0: int) -> list[dict[str, Any]]:
    return [
        {"event_id": "e1", "user_id": user, "type": "view", "ts": t0, "value": 2.5,
         "properties": {"screen": "home", "n": 3, "ok": True, "none": None}},
        {"event_id": "e2", "user_id": user, "type": "click", "ts": t0 + 100,
         "device_id": "d1"},
        {"event_id": "e3", "user_id": user, "type": "click", "ts": t0 + 200, "value": -1},
    ]


def as_protobuf(pb: ModuleType, event: dict[str, Any]) -> Any:
    message = pb.Event(event_id=event["event_id"], user_id=event["user_id"],
                       type=event["type"], ts=event["ts"])
    if "value" in event:
        message.value = event["value"]
    if "device_id" in event:
        message.device_id = event["device_id"]
    for key, item in event.get("properties", {}).items():
        entry = message.properties[key]
        if isinstance(item, bool):
            entry.bool_value = item
        elif isinstance(item, int):
            entry.int_value = item
        elif isinstance(item, str):
            entry.string_value = item
    return message


async def test_protobuf_and_json_events_end_up_in_the_same_rows(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    tag = "pb" + uuid.uuid4().hex[:8]
    source = f"{tag}p"
    env = isolated_env(tmp_path, **SMALL_ENV, COLLECTOR_KAFKA__SOURCES=f"{source},{tag}j",
                       COLLECTOR_KAFKA__PROTOBUF_SOURCES=source,
                       COLLECTOR_INFLUX__DATABASE=f"{tag}db")
    settings = settings_for(env)
    await ensure_topics(settings)
    await influx_create_db(settings)
    pb = stock_protoc(tmp_path / "generated")
    worker = worker_factory(env).start()
    await asyncio.to_thread(worker.wait_ready, 90.0)
    t0 = (int(time.time()) - 3) * 1000
    p_user, j_user, h_user = f"{tag}P", f"{tag}J", f"{tag}H"
    p_events = the_events(p_user, t0)
    malformed = b"\x0a\x05ab"  # ASCII, so only the protobuf rule makes it base64
    v2 = as_protobuf(pb, {**p_events[0], "event_id": "v2"}).SerializeToString()
    key = p_user.encode()
    await worker_produce(settings, source, [
        (key, as_protobuf(pb, p_events[0]).SerializeToString(), []),
        (key, pb.Envelope(events=[as_protobuf(pb, e) for e in p_events[1:]])
         .SerializeToString(), [("content-type", ENVELOPE_TYPE.encode()),
                                ("collector-schema", b"1")]),
        (key, orjson.dumps(p_events[0]), [("content-type", b"application/json")]),
        (key, malformed, []),
        (key, v2, [("collector-schema", b"2")]),
    ])
    async with EventProducer(settings, source=source) as producer:
        reports = await producer.send(the_events(j_user, t0))
    assert [(r.events, r.error) for r in reports] == [(3, None)]
    assert reports[0].offset is not None and reports[0].partition is not None

    envelope = pb.Envelope(events=[as_protobuf(pb, e) for e in the_events(h_user, t0)])
    url = f"http://127.0.0.1:{worker.port}/api/v1/events/{source}"
    async with aiohttp.ClientSession() as http:
        for body, headers, status, says in [
            (malformed, {"Content-Type": "application/x-protobuf"}, 400, "not a protobuf"),
            (envelope.SerializeToString(), {"Content-Type": ENVELOPE_TYPE,
                                            "Collector-Schema": "2"}, 400,
             "unsupported_version"),
            (envelope.SerializeToString(), {"Content-Type": ENVELOPE_TYPE}, 202, ""),
        ]:
            async with http.post(url, data=body, headers=headers) as resp:
                answer = await resp.json()
                assert resp.status == status and says in answer.get("error", ""), answer
        assert answer["accepted"] == 3  # the last one: nothing of the refused two counted

    lo, hi = t0 - 60_000, t0 + 60_000
    keys = {"event_stats": tag, "user_activity": tag, "segment_stats": tag}
    activity = {"count": 3, "types": ["click", "view"], "first_ts": t0, "last_ts": t0 + 200,
                "types_truncated": False}
    window = t0 - t0 % 1000
    expected = {
        ("event_stats", window, 1, (source, "view")): {
            "count": 3, "value_count": 3, "value_sum": 7.5, "value_min": 2.5, "value_max": 2.5},
        ("event_stats", window, 1, (source, "click")): {
            "count": 6, "value_count": 3, "value_sum": -3.0, "value_min": -1.0,
            "value_max": -1.0},
        **{("user_activity", window, 1, (user,)): activity
           for user in (p_user, j_user, h_user)},
    }

    async def rows_final() -> tuple[bool, Any]:
        rows = await mysql_rows(settings, lo, hi, keys)
        got = {ident: values for ident, (values, final) in rows.items()
               if ident[0] != "segment_stats" and final}
        return got == expected, got

    await until(rows_final, 90, "the final rows of all three users")

    records = await read_until(settings, [settings.kafka.deadletter_topic],
                               lambda recs: len(recs) >= 2, limit_s=30)
    letters = {orjson.loads(r.value)["reason"]: orjson.loads(r.value) for r in records}
    assert letters.keys() == {"malformed_protobuf", "unsupported_version"}
    bad = letters["malformed_protobuf"]
    assert (bad["payload_encoding"], bad["content_type"]) == ("base64", "application/x-protobuf")
    assert base64.b64decode(bad["payload"]) == malformed
    assert base64.b64decode(letters["unsupported_version"]["payload"]) == v2
    assert letters["unsupported_version"]["schema_version"] == "2"
    dups = await metric(worker, "collector_events_duplicate_total", source)
    assert dups == 1  # P's e1 as JSON: the same event as its protobuf twin

    # replayed as is, the version 2 message goes back with its version: this worker still
    # reads only version 1, so it is dead-lettered again instead of counted as version 1
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "collector.cli.main", "deadletter", "replay",
                         "--reason", "unsupported_version", "--json"],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout)["replayed"] == 1, proc.stdout
    records = await read_until(settings, [settings.kafka.deadletter_topic],
                               lambda recs: len(recs) >= 3, limit_s=60)
    assert [orjson.loads(r.value)["reason"] for r in records].count("unsupported_version") == 2
    again = orjson.loads(records[-1].value)
    assert (again["reason"], again["schema_version"]) == ("unsupported_version", "2")
    assert base64.b64decode(again["payload"]) == v2


async def worker_produce(settings: Settings, source: str,
                         items: list[tuple[bytes, bytes, list[tuple[str, bytes]]]]) -> None:
    """Produce in order with headers (one partition per key keeps the order)."""
    producer = AIOKafkaProducer(**client_kwargs(settings), acks="all")
    await producer.start()
    try:
        for key, value, headers in items:
            await producer.send_and_wait(settings.kafka.raw_topic(source), value, key=key,
                                         headers=headers)
    finally:
        await producer.stop()


async def metric(worker: Worker, name: str, source: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(
        f"http://127.0.0.1:{worker.port}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(name) and f'source="{source}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0
