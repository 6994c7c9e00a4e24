"""``app.log_format = json``: a real worker writes one JSON object a line, progress too."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.config import Settings
from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import produce, settings_for
from tests.e2e.test_windows_robust import start, until
from tests.e2e.workers import Worker, isolated_env

pytestmark = pytest.mark.e2e


def records(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON log records of a worker's output, and the lines that are not JSON."""
    parsed, other = [], []
    for line in text.splitlines():
        try:
            parsed.append(json.loads(line))
        except ValueError:
            other.append(line)
    return parsed, other


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_worker_log_lines_and_progress(
    stack: Settings, worker_factory: Callable[..., Worker], tmp_path: Path, log_format: str
) -> None:
    env = isolated_env(tmp_path, COLLECTOR_APP__LOG_FORMAT=log_format)
    settings = settings_for(env)
    await ensure_topics(settings)
    worker = await start(worker_factory(env, "worker"))
    now_ms = int(time.time() * 1000)
    source = settings.kafka.sources[0]
    await produce(settings, settings.kafka.raw_topic(source), [
        (f"u{i}".encode(), orjson.dumps({"event_id": f"e{i}", "user_id": f"u{i}",
                                         "type": "click", "ts": now_ms}))
        for i in range(30)])

    async def progressed() -> tuple[bool, Any]:
        return "progress: 30 events consumed" in worker.text(), worker.text()[-500:]

    await until(progressed, 40, "the progress line")
    # a record the worker cannot use is logged with where it is: a broken partial
    # (our own topic, so nothing else notices it) makes the merge agent log one
    await produce(settings, settings.kafka.partials_topic, [(b"u0", b"not a partial")])

    async def located() -> tuple[bool, Any]:
        return "bad partial at" in worker.text(), worker.text()[-500:]

    await until(located, 40, "the bad partial's log line")
    parsed, other = records(worker.text())
    if log_format == "text":
        assert not parsed, parsed[:3]
        return
    assert len(parsed) > 10
    for record in parsed:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
    ready = [r for r in parsed if r["message"].endswith("Ready")]
    assert ready and ready[0]["level"] == "INFO"
    (progress,) = [r for r in parsed if r["message"].startswith("progress:")][:1]
    assert progress["logger"] == "collector.agents.windows"
    assert progress["progress"]["consumed"] == 30 and progress["progress"]["valid"] == 30
    (bad,) = [r for r in parsed if r["message"].startswith("bad partial at")]
    assert bad["level"] == "ERROR" and bad["topic"] == settings.kafka.partials_topic, bad
    assert isinstance(bad["partition"], int) and isinstance(bad["offset"], int), bad
    assert bad["message"] == f"bad partial at {bad['topic']}[{bad['partition']}]@{bad['offset']}"
    assert "JSONDecodeError" in bad["exc_info"] and "\n" in bad["exc_info"], bad
    print(f"\n[json-log] {json.dumps(progress)}\n[json-log] {json.dumps(bad)}", flush=True)
    # Faust's start-up banner goes to stdout, the log to stderr: no text log lines here
    assert all(not line.startswith("[20") for line in other), other[:5]
