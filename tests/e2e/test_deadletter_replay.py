"""``collector deadletter inspect`` and ``replay`` against a real worker.

A worker dead-letters events whose ``value`` is a string; ``replay`` with a transform
that makes it a number brings them into MySQL, and a second replay of the same records
changes nothing (the windows count an event_id once).  A dry run sends nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.config import Settings
from collector.db import connect
from collector.kafka.topics import ensure_topics
from collector.ops.deadletter import REPLAY_ID_HEADER, REPLAYED_FROM_HEADER
from tests.e2e.kafka_io import produce, read_until, settings_for
from tests.e2e.test_windows_e2e import window_env
from tests.e2e.test_windows_robust import metric, metrics, start, until
from tests.e2e.workers import ROOT, Worker

pytestmark = pytest.mark.e2e

COLLECTOR = Path(sys.executable).with_name("collector")
VALID, BROKEN = 20, 5

FIX = '''
import json

def fix(payload, record):
    event = json.loads(payload)
    event["value"] = float(event["value"])
    return event
'''


def cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    proc = subprocess.run([str(COLLECTOR), "deadletter", *args, "--json"],
                          env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


async def stats_row(settings: Settings, source: str) -> tuple[int, float]:
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        await cur.execute("SELECT COALESCE(SUM(count), 0), COALESCE(SUM(value_sum), 0) "
                          "FROM event_stats WHERE source = %s", (source,))
        count, total = (await cur.fetchall())[0]
    return int(count), float(total)


async def test_replay_brings_fixed_dead_letters_in_exactly_once(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    tag = "d" + uuid.uuid4().hex[:8]
    env = window_env(tmp_path, tag)
    settings = settings_for(env)
    source = settings.kafka.sources[0]
    topic = settings.kafka.raw_topic(source)
    await ensure_topics(settings)
    worker = await start(worker_factory(env, "worker"))

    now_ms = int(time.time() * 1000)
    events = [{"event_id": f"{tag}-{i}", "user_id": f"{tag}u{i % 4}", "type": "click",
               "ts": now_ms - 1000, "value": 1.0} for i in range(VALID + BROKEN)]
    for event in events[VALID:]:
        event["value"] = "2.5"  # a producer bug: schema_violation
    items = [(e["user_id"].encode(), orjson.dumps(e)) for e in events]
    items.append((b"x", b'{"event_id": '))  # malformed_json: not selected below
    await produce(settings, topic, items)

    dl_topic = settings.kafka.deadletter_topic
    await read_until(settings, [dl_topic], lambda recs: len(recs) >= BROKEN + 1, limit_s=60)

    async def counted(want: tuple[int, float]) -> tuple[bool, Any]:
        got = await stats_row(settings, source)
        return got == want, got

    await until(lambda: counted((VALID, VALID * 1.0)), 60, "the valid events in MySQL")

    seen = cli(env, "inspect", "--samples", "2")
    assert seen["by_reason"] == {"schema_violation": BROKEN, "malformed_json": 1}
    assert seen["by_source"] == {source: BROKEN + 1}
    assert len(seen["samples"]) == 2 and seen["samples"][0]["errors"]
    only = cli(env, "inspect", "--reason", "malformed_json")
    assert only["matched"] == 1 and only["scanned"] == BROKEN + 1

    fix = tmp_path / "fix.py"
    fix.write_text(FIX)
    selection = ["--reason", "schema_violation", "--transform", f"{fix}:fix"]
    raw_before = len(await read_until(settings, [topic], lambda r: False, limit_s=3))
    dry = cli(env, "replay", *selection, "--dry-run")
    assert dry["dry_run"] and dry["replayed"] == BROKEN and dry["matched"] == BROKEN
    assert json.loads(dry["samples"][0]["send"])["value"] == 2.5
    first = cli(env, "replay", *selection)
    print(f"\n[replay] {json.dumps(first)}", flush=True)
    assert first["replayed"] == BROKEN and not first["skipped"], first
    assert first["by_topic"] == {topic: BROKEN}
    await until(lambda: counted((VALID + BROKEN, VALID + BROKEN * 2.5)), 60,
                "the replayed events in MySQL")

    second = cli(env, "replay", *selection)
    assert second["replayed"] == BROKEN and second["replay_id"] != first["replay_id"]

    async def deduplicated() -> tuple[bool, Any]:
        text = await metrics(worker)
        dups = metric(text, "collector_events_duplicate_total", source=source) or 0
        return dups >= BROKEN, dups

    await until(deduplicated, 60, "the second replay to be recognised as duplicates")
    await until(lambda: counted((VALID + BROKEN, VALID + BROKEN * 2.5)), 5, "no change")

    raw = await read_until(settings, [topic], lambda r: False, limit_s=3)
    replayed = [r for r in raw if dict(r.headers).get(REPLAYED_FROM_HEADER)]
    assert len(raw) - raw_before == 2 * BROKEN, "the dry run sent nothing"
    assert len(replayed) == 2 * BROKEN
    assert {dict(r.headers)[REPLAY_ID_HEADER].decode() for r in replayed} == {
        first["replay_id"], second["replay_id"]}
    assert all(dict(r.headers)[REPLAYED_FROM_HEADER].decode().startswith(f"{dl_topic}/")
               for r in replayed)


async def test_replay_skips_what_is_not_a_raw_event(
    stack: Settings, tmp_path: Path
) -> None:
    """Sink rows, null payloads and a raising transform are skipped and counted."""
    tag = "d" + uuid.uuid4().hex[:8]
    env = window_env(tmp_path, tag)
    settings = settings_for(env)
    await ensure_topics(settings)
    source = settings.kafka.sources[0]
    base = {"errors": [], "partition": 0, "offset": 1, "received_at": "x", "index": None,
            "payload_encoding": "utf-8"}
    records = [
        {**base, "reason": "sink_rejected", "source": "sink", "topic": "", "payload": "{}"},
        {**base, "reason": "malformed_json", "source": source,
         "topic": settings.kafka.raw_topic(source), "payload": None},
        {**base, "reason": "malformed_json", "source": source,
         "topic": settings.kafka.raw_topic(source), "payload": "not json"},
    ]
    await produce(settings, settings.kafka.deadletter_topic,
                  [(b"k", orjson.dumps(r)) for r in records] + [(b"k", b"junk")])
    fix = tmp_path / "strict.py"
    fix.write_text("import json\ndef fix(payload, record):\n    return json.loads(payload)\n")
    summary = cli(env, "replay", "--all", "--transform", f"{fix}:fix")
    assert summary["scanned"] == 4 and summary["matched"] == 3
    assert summary["replayed"] == 0
    assert summary["skipped"] == {"not_a_raw_event": 1, "no_payload": 1,
                                  "transform_failed": 1}
    assert "JSONDecodeError" in summary["transform_errors"][0]
