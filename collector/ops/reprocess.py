"""Rebuild the aggregates from the raw topics (``collector reprocess --from TIME``).

A reprocess runs a temporary worker under a new app id, so a new consumer group with new,
empty tables, whose raw offsets are set to the time asked for.  It shares the raw topics
and the sinks with the running workers and nothing else: its partials, dead-letter and
users topics are its own (deleted at the end), it forwards no enriched events, and its
sinks write only windows starting at or after ``--from`` (``sinks.write_windows_from``).
Windows that started earlier are re-read only in part, so writing them would replace
complete rows with short ones.  Rows are absolute values and the upserts idempotent, so
the rewritten rows converge to what the pipeline computes now; the running workers do
not have to stop.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from collector.config import Settings, env_name, settings_for_env
from collector.kafka.clients import client_kwargs
from collector.kafka.topics import ensure_topics
from collector.ops.kafka import partitions_of
from collector.ops.times import iso

Progress = Callable[[int, int], None]


class ReprocessError(RuntimeError):
    """The reprocess could not finish (worker died, timed out); the message says why."""


def aligned_start(settings: Settings, from_ms: int) -> int:
    """``from_ms`` rounded down to a start shared by every window family, so that the
    window holding ``from_ms`` is rebuilt too."""
    w = settings.windows
    unit = math.lcm(w.tumbling_seconds, w.hopping_step_seconds) * 1000
    return from_ms // unit * unit


def read_start(settings: Settings, aligned_ms: int) -> int:
    """Kafka time to read from: an event stamped up to ``ingest.future_skew_seconds``
    ahead of its producer's clock may sit before ``aligned_ms`` in the log."""
    return aligned_ms - settings.ingest.future_skew_seconds * 1000


def new_app_id(settings: Settings, now: datetime | None = None) -> str:
    moment = now or datetime.now(UTC)
    return f"{settings.app.id}-reprocess-{moment:%Y%m%dT%H%M%S}"


def worker_env(settings: Settings, app_id: str, aligned_ms: int, datadir: Path,
               port: int) -> dict[str, str]:
    """What the temporary worker changes; every other setting is the operator's."""
    names = {
        "app.id": app_id, "app.store": "memory", "app.datadir": str(datadir),
        "app.instance_id": "", "app.standby_replicas": "0",
        "kafka.partials_topic": f"{app_id}.partials",
        "kafka.deadletter_topic": f"{app_id}.deadletter",
        "kafka.users_topic": f"{app_id}.users",
        "ingest.forward_enriched": "false",
        "sinks.write_windows_from": iso(aligned_ms),
        "web.port": str(port),
    }
    return {env_name(tuple(key.split("."))): value for key, value in names.items()}


@dataclass
class Plan:
    """Where the reprocess reads from and to, per raw partition."""

    app_id: str
    aligned_ms: int
    read_from_ms: int
    start: dict[TopicPartition, int]
    end: dict[TopicPartition, int]

    @property
    def messages(self) -> int:
        return sum(max(0, self.end[tp] - self.start[tp]) for tp in self.start)


async def plan(settings: Settings, from_ms: int, app_id: str | None = None) -> Plan:
    aligned = aligned_start(settings, from_ms)
    read_from = read_start(settings, aligned)
    tps = await partitions_of(settings, settings.kafka.raw_topics)
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        end = await consumer.end_offsets(tps)
        found = await consumer.offsets_for_times({tp: max(0, read_from) for tp in tps})
    finally:
        await consumer.stop()
    start = {tp: found[tp].offset if found.get(tp) else end[tp] for tp in tps}
    return Plan(app_id or new_app_id(settings), aligned, read_from, start, end)


async def commit_start(settings: Settings, the_plan: Plan) -> None:
    """Give the new consumer group its start offsets before its worker joins."""
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=the_plan.app_id,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(list(the_plan.start))
        await consumer.commit(dict(the_plan.start))
    finally:
        await consumer.stop()


async def committed(settings: Settings, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _faust() -> str:
    beside = Path(sys.executable).with_name("faust")
    return str(beside) if beside.exists() else (shutil.which("faust") or "faust")


@dataclass
class Outcome:
    """What the temporary worker did, from its own summary (``/api/v1/summary``)."""

    app_id: str
    aligned_ms: int
    read_from_ms: int
    messages: int
    partitions: int
    totals: dict[str, float] = field(default_factory=dict)
    rows_written: dict[str, float] = field(default_factory=dict)
    windows_closed: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    log: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"app_id": self.app_id, "from": iso(self.aligned_ms),
                "read_from": iso(self.read_from_ms), "partitions": self.partitions,
                "messages": self.messages,
                "events": {k: int(v) for k, v in self.totals.items()},
                "rows_written": {k: int(v) for k, v in self.rows_written.items()},
                "windows_closed": {k: int(v) for k, v in self.windows_closed.items()},
                "seconds": round(self.seconds, 1), "worker_log": self.log}


async def _summary(settings: Settings, port: int) -> dict[str, Any] | None:
    token = settings.web.api_token.get_secret_value()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{port}/api/v1/summary", headers=headers,
            timeout=aiohttp.ClientTimeout(total=5),
        ) as resp:
            if resp.status != 200:
                return None
            body: dict[str, Any] = await resp.json()
            return body
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None


class TempWorker:
    """The reprocess worker: a ``faust -A collector worker`` child with its own env."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [_faust(), "-A", "collector", "worker", "-l", "info"],
                env={**os.environ, **self.env}, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise ReprocessError(f"the reprocess worker exited {self.proc.returncode}; "
                                 f"end of {self.log}:\n{tail}")

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


async def _catch_up(settings: Settings, the_plan: Plan, worker: TempWorker,
                    progress: Progress, deadline: float) -> None:
    """Until the new group's committed offsets reach the end offsets of the plan."""
    total = the_plan.messages
    while True:
        worker.check()
        done_offsets = await committed(settings, the_plan.app_id)
        done = sum(min(the_plan.end[tp], done_offsets.get(tp, the_plan.start[tp]))
                   - the_plan.start[tp] for tp in the_plan.start)
        progress(max(0, done), total)
        if done >= total:
            return
        if time.monotonic() > deadline:
            raise ReprocessError(f"timed out after reading {done} of {total} messages")
        await asyncio.sleep(1.0)


async def _settle(settings: Settings, port: int, worker: TempWorker, quiet_s: float,
                  deadline: float) -> dict[str, Any]:
    """Until the worker's sinks hold nothing and wrote nothing new for ``quiet_s``:
    the windows it read have closed (by event time, or idle after ``idle_timeout``)."""
    last: tuple[Any, ...] | None = None
    since = time.monotonic()
    while True:
        worker.check()
        summary = await _summary(settings, port)
        if summary is not None:
            sinks = summary["sinks"]
            state = (tuple(s["rows_written"] for s in sinks.values()),
                     summary["windows"]["closes"], summary["totals"]["consumed"])
            pending = sum(s["pending"] for s in sinks.values())
            if state != last or pending:
                last, since = state, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return summary
        if time.monotonic() > deadline:
            raise ReprocessError("timed out waiting for the rebuilt windows to be written")
        await asyncio.sleep(0.5)


async def _cleanup(settings: Settings, app_id: str) -> None:
    """Delete the temporary worker's own topics (scratch and Faust's changelogs)."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics()
                if t.startswith((f"{app_id}.", f"{app_id}-"))]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


async def reprocess(settings: Settings, from_ms: int, *, app_id: str | None = None,
                    timeout_s: float = 3600.0, keep: bool = False,
                    progress: Progress | None = None, workdir: Path | None = None) -> Outcome:
    """Rebuild every window starting at or after ``from_ms`` (aligned down); see the module
    docstring.  Raises :class:`ReprocessError` when it cannot finish."""
    began = time.monotonic()
    deadline = began + timeout_s
    the_plan = await plan(settings, from_ms, app_id)
    report = progress or (lambda _done, _total: None)
    workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{the_plan.app_id}-"))
    port = _free_port()
    env = worker_env(settings, the_plan.app_id, the_plan.aligned_ms, workdir / "faust", port)
    await ensure_topics(settings_for_env(env))
    await commit_start(settings, the_plan)
    worker = TempWorker(env, workdir / "worker.log")
    outcome = Outcome(the_plan.app_id, the_plan.aligned_ms, the_plan.read_from_ms,
                      the_plan.messages, len(the_plan.start), log=str(worker.log))
    worker.start()
    try:
        await _catch_up(settings, the_plan, worker, report, deadline)
        w = settings.windows
        quiet = w.idle_timeout_seconds + 2 * w.flush_interval_seconds + 1
        summary = await _settle(settings, port, worker, quiet, deadline)
    finally:
        worker.stop()
        if not keep:
            await _cleanup(settings, the_plan.app_id)
    outcome.totals = dict(summary["totals"])
    outcome.rows_written = {n: s["rows_written"] for n, s in summary["sinks"].items()}
    outcome.windows_closed = dict(summary["windows"]["closes"])
    outcome.seconds = time.monotonic() - began
    return outcome


__all__ = ["Outcome", "Plan", "ReprocessError", "aligned_start", "new_app_id", "plan",
           "read_start", "reprocess", "worker_env"]
