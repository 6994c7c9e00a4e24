"""The poison corpus through a real worker: every bad unit is dead-lettered exactly once.

Each corpus message says what it must turn into, unit by unit (a message rejected as a
whole is one unit, an envelope is one unit per element): a valid event (found once in
the enriched topic) or a dead letter with its reason, its ``index`` and its payload.
The totals are checked per source against both the topics and the worker's ``/metrics``,
and written to ``tests/artifacts/poison_corpus.json``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from collector.config import Settings
from collector.kafka.clients import client_kwargs
from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import settings_for, topic_partitions
from tests.e2e.workers import Worker, isolated_env

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WHOLE = object()  # the expected payload is the whole message, as sent


@dataclass(frozen=True)
class Dead:
    """An expected dead letter: reason, envelope index, and an error ``loc`` it must name."""

    reason: str
    index: int | None = None
    loc: str | None = None
    payload: Any = WHOLE  # WHOLE, or the element (compared as JSON)


@dataclass
class Case:
    """One raw message and the units it must turn into (event_ids of valid ones)."""

    name: str
    source: str
    key: bytes | None
    value: bytes | None
    valid: list[str] = field(default_factory=list)
    dead: list[Dead] = field(default_factory=list)

    @property
    def units(self) -> int:
        return len(self.valid) + len(self.dead)


def nested(depth: int) -> Any:
    obj: Any = 1
    for _ in range(depth):
        obj = [obj]
    return obj


def corpus(now: int) -> list[Case]:
    """The poison corpus plus valid events, spread over the three default sources."""

    def ev(eid: str, uid: Any = "pu1", **extra: Any) -> dict[str, Any]:
        return {"event_id": eid, "user_id": uid, "type": "click", "ts": now, **extra}

    def one(name: str, source: str, obj: Any, dead: Dead | None = None,
            key: bytes | None = None) -> Case:
        valid = [] if dead else [obj["event_id"]]
        return Case(name, source, key, _dumps(obj), valid, [dead] if dead else [])

    sv, mj = "schema_violation", "malformed_json"
    good = ev("ok-1")
    mixed_key = b"pmix"
    deep_element = ev("env-deep", "pmix", properties={"a": nested(300)})
    mixed = [
        ev("env-ok-0", "pmix"), 42, None, ev("env-other-user", "someone-else"),
        deep_element, ev("env-ok-5", "pmix", value=2.5),
    ]
    one_bad = [ev(f"env1-{i}", "pone") for i in range(5)]
    one_bad[2]["value"] = True
    mismatched = [ev("envm-0", "pmm"), ev("envm-1", "not-pmm")]
    big = ev("too-big", properties={"blob": "x" * 200})
    oversized = orjson.dumps(big)[:-1] + b', "pad": "' + b"p" * 100_000 + b'"}'
    cases = [
        # valid events, one per shape that must pass
        one("valid-int-ts", "web", good, key=b"pu1"),
        one("valid-rfc3339", "mobile", ev("ok-2", ts=rfc3339(now - 5_000, hours=2))),
        one("valid-full", "openapi", ev(
            "ok-3", "pu2", value=7, device_id="d1", source="openapi",
            properties={"page": "/x", "n": 1.5, "b": False, "z": None})),
        one("valid-empty-key", "web", ev("ok-4", "pu3", value=None, device_id=None), key=b""),
        # whole message: malformed_json
        Case("truncated-json", "web", None, b'{"event_id": "p-1", "user_id": "pu1", "ty',
             dead=[Dead(mj)]),
        Case("bad-utf8", "mobile", None,
             b'{"event_id": "p-\xff\xfe", "user_id": "pu1", "type": "click", "ts": '
             + str(now).encode() + b"}", dead=[Dead(mj)]),
        Case("bom", "openapi", None, b"\xef\xbb\xbf" + orjson.dumps(ev("bom")), dead=[Dead(mj)]),
        Case("empty", "web", b"pu1", b"", dead=[Dead(mj)]),
        Case("tombstone", "mobile", b"pu1", None, dead=[Dead(mj)]),
        Case("nan-literal", "openapi", None,
             orjson.dumps(ev("nan"))[:-1] + b',"value":NaN}', dead=[Dead(mj)]),
        Case("infinity-literal", "web", None,
             orjson.dumps(ev("inf"))[:-1] + b',"value":-Infinity}', dead=[Dead(mj)]),
        Case("number-beyond-double", "mobile", None,
             orjson.dumps(ev("huge"))[:-1] + b',"value":1e400}', dead=[Dead(mj)]),
        Case("deep-nesting", "openapi", b"pu1", b"[" * 2000 + b"]" * 2000, dead=[Dead(mj)]),
        # whole message: too_large (the producer's max_request_size is raised for it)
        Case("oversized", "web", b"pu1", oversized, dead=[Dead("too_large")]),
        # whole message: schema_violation
        Case("json-null", "mobile", b"pu1", b"null", dead=[Dead(sv, loc="")]),
        Case("scalar-int", "openapi", None, b"42", dead=[Dead(sv, loc="")]),
        Case("scalar-string", "web", None, b'"an event"', dead=[Dead(sv, loc="")]),
        Case("scalar-bool", "mobile", None, b"true", dead=[Dead(sv, loc="")]),
        one("empty-object", "openapi", {}, Dead(sv, loc="event_id")),
        one("missing-ts", "web", {k: v for k, v in ev("m-ts").items() if k != "ts"},
            Dead(sv, loc="ts")),
        one("missing-user", "mobile", {k: v for k, v in ev("m-u").items() if k != "user_id"},
            Dead(sv, loc="user_id")),
        one("string-value", "openapi", ev("w-1", value="12.5"), Dead(sv, loc="value")),
        one("bool-value", "web", ev("w-2", value=True), Dead(sv, loc="value")),
        one("float-ts", "mobile", ev("w-3", ts=float(now)), Dead(sv, loc="ts")),
        one("int-user", "openapi", ev("w-4", 42), Dead(sv, loc="user_id")),
        one("list-properties", "web", ev("w-5", properties=[1]), Dead(sv, loc="properties")),
        one("ts-no-offset", "mobile", ev("w-6", ts="2026-01-01T10:00:00"), Dead(sv, loc="ts")),
        one("long-event-id", "openapi", ev("x" * 65), Dead(sv, loc="event_id")),
        one("long-user-id", "web", ev("l-1", "u" * 65), Dead(sv, loc="user_id")),
        one("long-device-id", "mobile", ev("l-2", device_id="d" * 65), Dead(sv, loc="device_id")),
        one("long-property", "openapi", ev("l-3", properties={"p": "v" * 257}),
            Dead(sv, loc="properties.p")),
        one("too-many-properties", "web", ev("l-4", properties={f"k{i}": i for i in range(33)}),
            Dead(sv, loc="properties")),
        one("nan-string", "mobile", ev("n-1", value="NaN"), Dead(sv, loc="value")),
        one("future-ts", "openapi", ev("f-1", ts=now + 86_400_000), Dead(sv, loc="ts")),
        one("ancient-ts", "web", ev("f-2", ts=946_684_799_999), Dead(sv, loc="ts")),
        one("source-mismatch", "mobile", ev("s-1", source="web"), Dead(sv, loc="source")),
        one("unknown-field", "openapi", ev("s-2", surprise=1), Dead(sv, loc="surprise")),
        one("key-mismatch", "web", ev("k-1"), Dead(sv, loc="user_id"), key=b"pu2"),
        one("key-not-utf8", "mobile", ev("k-2"), Dead(sv, loc="key"), key=b"\xff\xfe"),
        one("deep-in-event", "openapi", ev("d-1", properties={"a": nested(300)}),
            Dead(sv, loc="properties.a")),
        # envelopes rejected as a whole
        Case("envelope-no-key", "web", None, orjson.dumps([ev("e-nokey")]),
             dead=[Dead(sv, loc="key")]),
        Case("envelope-empty", "mobile", b"pu1", b"[]", dead=[Dead(sv, loc="")]),
        Case("envelope-too-many", "openapi", b"pu1",
             orjson.dumps([ev(f"e-many-{i}") for i in range(501)]), dead=[Dead(sv, loc="")]),
        # envelopes with bad elements: only those are dead-lettered, with their index
        Case("envelope-user-mismatch", "web", b"pmm", orjson.dumps(mismatched),
             valid=["envm-0"], dead=[Dead(sv, 1, "user_id", mismatched[1])]),
        Case("envelope-one-bad", "mobile", b"pone", orjson.dumps(one_bad),
             valid=[e["event_id"] for i, e in enumerate(one_bad) if i != 2],
             dead=[Dead(sv, 2, "value", one_bad[2])]),
        # an element orjson cannot write back (over 254 levels) carries the whole message
        Case("envelope-mixed", "openapi", mixed_key,
             _dumps(mixed),
             valid=["env-ok-0", "env-ok-5"],
             dead=[Dead(sv, 1, "", 42), Dead(sv, 2, "", None),
                   Dead(sv, 3, "user_id", mixed[3]), Dead(sv, 4, "properties.a", WHOLE)]),
    ]
    return cases


def _dumps(obj: Any) -> bytes:
    """Compact JSON, also for objects nested deeper than orjson can write (254 levels)."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode()


def rfc3339(ms: int, hours: int) -> str:
    """``ms`` as an RFC 3339 string with a ``+HH:00`` offset and milliseconds."""
    zone = timezone(timedelta(hours=hours))
    return datetime.fromtimestamp(ms / 1000, zone).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------- metrics


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The worker's /metrics as {(sample name, sorted labels): value}."""
    async with aiohttp.ClientSession() as http, http.get(
        f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=5)
    ) as resp:
        assert resp.status == 200, await resp.text()
        text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def by_label(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, *labels: str
) -> dict[tuple[str, ...], int]:
    """{label values: count} of one counter, e.g. by_label(s, "…_total", "source")."""
    out: dict[tuple[str, ...], int] = {}
    for (sample, pairs), value in samples.items():
        if sample == name:
            got = dict(pairs)
            out[tuple(got[label] for label in labels)] = int(value)
    return out


async def wait_metrics(
    port: int, done: Callable[[dict[Any, float]], bool], limit_s: float, what: str
) -> dict[Any, float]:
    deadline = time.monotonic() + limit_s
    samples: dict[Any, float] = {}
    while time.monotonic() < deadline:
        samples = await scrape(port)
        if done(samples):
            return samples
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; last metrics: {samples}")


# ---------------------------------------------------------------------------- kafka


async def send_corpus(settings: Settings, cases: list[Case]) -> dict[tuple[str, int, int], Case]:
    """Produce every case; return {(topic, partition, offset): case}."""
    producer = AIOKafkaProducer(
        **client_kwargs(settings), acks="all", max_request_size=4 * 1024 * 1024
    )
    await producer.start()
    try:
        futures = [
            await producer.send(settings.kafka.raw_topic(c.source), c.value, key=c.key)
            for c in cases
        ]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return {(m.topic, m.partition, m.offset): c for m, c in zip(metas, cases, strict=True)}


async def read_all(settings: Settings, topic: str, expected: int, limit_s: float) -> list[Any]:
    """Every record of ``topic``: wait for ``expected`` of them, then read to the end.

    Reading on to the high watermark means a duplicate already written is seen too,
    instead of stopping just short of it (the high watermark of the last fetch response).
    """
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings), enable_auto_commit=False, group_id=None,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        parts = await topic_partitions(settings, topic)
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=300)).values():
                records.extend(recs)
            if len(records) >= expected and await at_end(consumer, parts):
                break
    finally:
        await consumer.stop()
    return records


async def at_end(consumer: AIOKafkaConsumer, parts: list[TopicPartition]) -> bool:
    """Whether every partition was read up to the high watermark of the last fetch."""
    for tp in parts:
        highwater = consumer.highwater(tp)
        if highwater is None or await consumer.position(tp) < highwater:
            return False
    return True


# ---------------------------------------------------------------------------- the test


def expected_payload(case: Case, dead: Dead) -> tuple[str | None, str | None]:
    if dead.payload is not WHOLE:
        return orjson.dumps(dead.payload).decode(), "utf-8"
    if case.value is None:
        return None, None
    try:
        return case.value.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(case.value).decode("ascii"), "base64"


async def test_poison_corpus(
    stack: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    env = isolated_env(tmp_path)
    settings = settings_for(env)
    await ensure_topics(settings)
    worker = worker_factory(env).start()
    worker.wait_ready()

    cases = corpus(int(time.time() * 1000))
    assert len({c.name for c in cases}) == len(cases)
    located = await send_corpus(settings, cases)

    units: Counter[str] = Counter()
    valid_by_source: Counter[str] = Counter()
    dead_by: Counter[tuple[str, str]] = Counter()
    for c in cases:
        units[c.source] += c.units
        valid_by_source[c.source] += len(c.valid)
        for d in c.dead:
            dead_by[(c.source, d.reason)] += 1
    total_units = sum(units.values())
    n_valid = sum(valid_by_source.values())
    n_dead = sum(dead_by.values())

    # 1. the worker's own accounting, per source
    consumed_name = "collector_events_consumed_total"
    samples = await wait_metrics(
        worker.port,
        lambda s: min(  # consumed is counted before enrichment, valid after it
            sum(by_label(s, consumed_name, "source").values()),
            sum(by_label(s, "collector_events_valid_total", "source").values())
            + sum(by_label(s, "collector_events_dead_lettered_total", "source", "reason").values()),
        ) >= total_units,
        45, f"{total_units} consumed units",
    )
    consumed = by_label(samples, consumed_name, "source")
    valid_m = by_label(samples, "collector_events_valid_total", "source")
    dead_m = by_label(samples, "collector_events_dead_lettered_total", "source", "reason")
    for source in settings.kafka.sources:
        dead_here = sum(n for (s, _), n in dead_m.items() if s == source)
        assert consumed.get((source,), 0) == units[source], (source, consumed, units)
        assert valid_m.get((source,), 0) == valid_by_source[source], (source, valid_m)
        assert valid_m.get((source,), 0) + dead_here == units[source], (source, dead_m)
    assert {k: v for k, v in dead_m.items() if v} == {k: v for k, v in dead_by.items()}
    messages = by_label(samples, "collector_raw_messages_total", "source")
    # a valid unkeyed event on a partition its user_id does not map to is produced again
    # to the right one (and consumed there): one more raw message each
    rerouted = sum(by_label(samples, "collector_events_rerouted_total", "source").values())
    assert sum(messages.values()) == len(cases) + rerouted

    # 2. the topics: every dead unit exactly once, with reason, header, index and payload
    dead_records = await read_all(settings, settings.kafka.deadletter_topic, n_dead, 30)
    enriched_records = await read_all(settings, settings.kafka.enriched_topic, n_valid, 30)
    seen: Counter[tuple[str, int, int, int | None]] = Counter()
    dead_topic_by: Counter[tuple[str, str]] = Counter()
    for rec in dead_records:
        body = orjson.loads(rec.value)
        where = (body["topic"], body["partition"], body["offset"])
        assert where in located, body
        case = located[where]
        seen[(*where, body["index"])] += 1
        matches = [d for d in case.dead if d.index == body["index"]]
        assert len(matches) == 1, (case.name, body)
        want = matches[0]
        assert body["reason"] == want.reason, (case.name, body)
        assert dict(rec.headers)["x-collector-reason"] == want.reason.encode(), case.name
        assert body["source"] == case.source, case.name
        assert rec.key == case.key or (rec.key in (None, b"") and case.key in (None, b""))
        if want.loc is not None:
            assert want.loc in [e["loc"] for e in body["errors"]], (case.name, body["errors"])
        payload, encoding = expected_payload(case, want)
        assert (body["payload"], body["payload_encoding"]) == (payload, encoding), case.name
        if encoding == "base64":
            assert base64.b64decode(body["payload"]) == case.value
        dead_topic_by[(case.source, body["reason"])] += 1
    duplicates = {k: n for k, n in seen.items() if n != 1}
    assert not duplicates, f"dead-lettered more than once: {duplicates}"
    missing = [
        (c.name, d.index) for where, c in located.items() for d in c.dead
        if (*where, d.index) not in seen
    ]
    assert not missing, f"never dead-lettered: {missing}"
    assert dead_topic_by == dead_by

    enriched = [orjson.loads(r.value) for r in enriched_records]
    ids = Counter(e["event_id"] for e in enriched)
    want_ids = Counter(eid for c in cases for eid in c.valid)
    assert ids == want_ids, f"enriched differs: extra {ids - want_ids}, missing {want_ids - ids}"
    source_of = {eid: c.source for c in cases for eid in c.valid}
    assert all(e["source"] == source_of[e["event_id"]] for e in enriched)
    assert all(r.key == orjson.loads(r.value)["user_id"].encode() for r in enriched_records)
    enriched_by_source = Counter(e["source"] for e in enriched)
    for source in settings.kafka.sources:
        dead_here = sum(n for (s, _), n in dead_topic_by.items() if s == source)
        assert enriched_by_source[source] + dead_here == units[source], source

    reasons: Counter[str] = Counter()
    for (_, reason), n in dead_by.items():
        reasons[reason] += n
    report = {
        "messages": len(cases),
        "produced_units": total_units,
        "produced_units_by_source": dict(sorted(units.items())),
        "valid": n_valid,
        "valid_by_source": dict(sorted(valid_by_source.items())),
        "dead_lettered": n_dead,
        "dead_lettered_by_reason": dict(sorted(reasons.items())),
        "dead_lettered_by_source_reason": {
            f"{s}/{r}": n for (s, r), n in sorted(dead_by.items())
        },
        "cases": [c.name for c in cases],
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "poison_corpus.json").write_text(json.dumps(report, indent=2) + "\n")
    print("poison corpus:", json.dumps({k: v for k, v in report.items() if k != "cases"}))
