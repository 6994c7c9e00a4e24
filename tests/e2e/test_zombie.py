"""A worker frozen past its session timeout (SIGSTOP), then thawed: a zombie.

While it is frozen its partitions move to the other worker; when it wakes up it still
holds a fetched batch, state and buffered rows from before, and would process and write
them before it learns it lost the partitions.  It must notice the freeze and process
nothing until it rejoined, and the end state must equal the oracle exactly.

Known and measured, not yet fixed (issue 15's notes): while partitions move, a row can
briefly be lower than before (a count or a revision), then corrected; the moves are
printed, not asserted.  Ignoring such writes in the upsert made one rebalance run end
with a wrong final row, so the fix belongs upstream of the sink.  Printed lines start
with ``[zombie]``.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.config import Settings
from collector.db import connect
from collector.kafka.topics import MERGED_TABLE
from tests.e2e.kafka_io import read_until, settings_for
from tests.e2e.sinks_io import mysql_rows
from tests.e2e.test_windows_robust import (
    SMALL,
    SMALL_ENV,
    _quiet,
    expect,
    keys_for,
    over_counts,
    prepare_stream,
    readyz,
    start,
    stream,
    until,
)
from tests.e2e.workers import Worker, free_port, isolated_env

pytestmark = pytest.mark.e2e

SESSION_S = 8  # isolated_env's session timeout


async def revisions(settings: Settings, tag: str) -> dict[tuple[str, Any, Any], tuple[int, int]]:
    """(table, window_start, key) -> (count, revision) of every row of this test."""
    out: dict[tuple[str, Any, Any], tuple[int, int]] = {}
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        for table, key, second in (("event_stats", "source", "type"),
                                   ("user_activity", "user_id", "user_id"),
                                   ("segment_stats", "segment", "country")):
            await cur.execute(
                f"SELECT window_start, {key}, {second}, count, revision FROM {table} "
                f"WHERE {key} LIKE %s", (tag + "%",))
            for ws, k1, k2, count, revision in await cur.fetchall():
                out[(table, ws, (k1, k2))] = (int(count), int(revision))
    return out


async def settled(*workers: Worker) -> tuple[bool, Any]:
    """Every worker has re-indexed after the latest rebalance (it owns its partitions)."""
    counts = [w.text().count("re-indexed") for w in workers]
    return all(n >= 2 for n in counts[:1]) and all(n >= 1 for n in counts), counts


#: worker log lines worth printing when the rows do not settle
STATUS_WORDS = ("WARNING", "ERROR", "CRITICAL", "re-indexed", "Recover", "recover",
                "Assigned", "generation", "did not run")


class Backwards:
    """Samples every row every 0.3 s and keeps each move to a lower count or revision."""

    def __init__(self, settings: Settings, tag: str) -> None:
        self.settings, self.tag = settings, tag
        self.last: dict[Any, tuple[int, int]] = {}
        self.moves: list[tuple[Any, tuple[int, int], tuple[int, int]]] = []
        self.samples = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for ident, (count, rev) in (await revisions(self.settings, self.tag)).items():
                before = self.last.get(ident)
                if before is not None and (count < before[0] or rev < before[1]):
                    self.moves.append((ident, before, (count, rev)))
                self.last[ident] = (count, rev)
            self.samples += 1
            await asyncio.sleep(0.3)


async def status(*workers: Worker) -> None:
    """Print each worker's /readyz and the status lines of its log (what CI keeps)."""
    for worker in workers:
        try:
            print(f"\n[zombie] {worker.log.name} /readyz: {await readyz(worker)}")
        except Exception as exc:  # the diagnosis must not hide the failure
            print(f"\n[zombie] {worker.log.name} /readyz failed: {exc!r}")
        print(f"\n[zombie] {worker.log.name}, status lines:\n" + "\n".join(
            line[:300] for line in worker.text().splitlines()
            if any(w in line for w in STATUS_WORDS))[-12000:], flush=True)


async def trail(settings: Settings, wrong: list[str]) -> None:
    """Print the dead letters, and for the first wrong rows' windows every partial and
    merged changelog record: per slot, the offset and count each one carried."""
    dead = await read_until(settings, [settings.kafka.deadletter_topic], lambda r: False, 2.0)
    print(f"\n[zombie] {len(dead)} dead letters: "
          + "; ".join(r.value[:300].decode(errors="replace") for r in dead[:10]))
    # "('table', ws, ...): ..." or "missing ('table', ws, ...)" or "unexpected (...)"
    windows = {(w.split("'")[1], w.split(", ")[1]) for w in wrong[:6] if "('" in w}
    topics = [settings.kafka.partials_topic, f"{settings.app.id}-{MERGED_TABLE}-changelog"]
    for record in await read_until(settings, topics, lambda r: False, 3.0):
        key = (record.key or b"").decode(errors="replace").strip('"')
        if any(f"{table}|" in key and key.endswith(f"|{ws}") for table, ws in windows):
            print(f"[zombie] {record.topic}[{record.partition}]@{record.offset} "
                  f"t={record.timestamp} {key} {_brief(record.value)}")


def _brief(value: bytes | None) -> str:
    """A partial or merged record as slot -> (off, count)."""
    if value is None:
        return "tombstone"
    doc = orjson.loads(value)
    if "slots" in doc:
        offs = doc.get("offs", {})
        return "merged " + ", ".join(f"{slot}: ({offs.get(slot)}, {agg.get('count')})"
                                     for slot, agg in sorted(doc["slots"].items())) + (
            f" fin={doc.get('fin')} rev={doc.get('rev')}")
    return f"partial {doc.get('slot')}: ({doc.get('off')}, {doc.get('agg', {}).get('count')})"


async def test_a_frozen_worker_holds_back_until_it_rejoins_and_rows_end_exact(
    migrated: Settings, worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    tag = "z" + uuid.uuid4().hex[:8]
    env = isolated_env(tmp_path, **SMALL_ENV, COLLECTOR_KAFKA__SOURCES=f"{tag}a,{tag}b",
                       COLLECTOR_INFLUX__DATABASE=f"{tag}db", COLLECTOR_APP__STORE="rocksdb",
                       COLLECTOR_KAFKA__COMMIT_INTERVAL="2")
    settings = settings_for(env)
    users, segments = await prepare_stream(settings, tag, 8)
    zombie = await start(worker_factory({**env, "COLLECTOR_APP__DATADIR": str(
        tmp_path / "a")}, "zombie"))
    other = await start(worker_factory({**env, "COLLECTOR_APP__DATADIR": str(
        tmp_path / "b"), "COLLECTOR_WEB__PORT": str(free_port())}, "other"))
    # the group settles first: the zombie is about the freeze, not the join rebalance
    await until(lambda: settled(zombie, other), 30, "both workers assigned")
    await asyncio.sleep(2)
    watch = Backwards(settings, tag)
    stop = asyncio.Event()
    watching = asyncio.get_running_loop().create_task(watch.run(stop))
    lo = int(time.time() * 1000) - 60_000
    pace = 0.35
    freeze_at = 6
    thaw_at = freeze_at + int((SESSION_S + 6) / pace)
    marks: dict[str, float] = {}

    async def freeze(i: int) -> None:
        assert zombie.proc is not None
        if i == freeze_at:
            zombie.proc.send_signal(signal.SIGSTOP)
            marks["frozen"] = time.monotonic()
        if i == thaw_at:
            zombie.proc.send_signal(signal.SIGCONT)
            marks["thawed"] = time.monotonic()

    try:
        events = await stream(settings, tag, users, batches=thaw_at + 15, pace_s=pace,
                              rng=random.Random(21), after_batch=freeze)
        expected = expect(events, segments, **SMALL)
        hi = int(time.time() * 1000) + 60_000

        async def all_final() -> tuple[bool, Any]:
            rows = await mysql_rows(settings, lo, hi, keys_for(tag))
            missing = sorted(expected.keys() - rows.keys())[:5]
            open_rows = sorted(i for i, (_, f) in rows.items() if not f)[:5]
            pending = [await _quiet(other), await _quiet(zombie)]
            if not missing and not open_rows and all(ok for ok, _ in pending):
                return True, rows
            return False, {"missing": missing, "not final": open_rows, "pending": pending}

        try:
            rows = await until(all_final, 120, "every window final after the zombie woke up")
        except AssertionError:
            await status(zombie, other)
            raise
        await asyncio.sleep(2)  # a late zombie write would show in the watch by now
    finally:
        stop.set()
        await watching
        assert zombie.proc is not None
        zombie.proc.send_signal(signal.SIGCONT)
    over, wrong = over_counts(rows, expected)
    if wrong or any(over.values()):  # rare in CI (one run in about 15): show what led to it
        try:
            await status(zombie, other)
            await trail(settings, wrong)
        except Exception as exc:  # the diagnosis must not hide the failure below
            print(f"\n[zombie] diagnosis failed: {exc!r}", flush=True)
    print(f"\n[zombie] frozen {marks['thawed'] - marks['frozen']:.1f}s (session {SESSION_S}s); "
          f"{len(events)} events; {watch.samples} samples of {len(watch.last)} rows, "
          f"{len(watch.moves)} moves backwards; over-count {over}", flush=True)
    assert "did not run for" in zombie.text()  # it noticed the freeze and held back
    assert not wrong, wrong[:10]
    assert sum(over.values()) == 0, over
    assert not watch.moves, watch.moves[:10]  # no row ever went back
