"""The curl examples of docs/api.md, run as written against a worker fed with demo data.

A newcomer pastes them after ``make run``: demo users, demo events, the default port.
Here the port is the test worker's and the topics its own; the users are the demo users
(``collector db seed``) and the events ``collector produce``'s.  Every example must
answer 200 (202 for ingest) with windows in it, and the ingested event must be valid.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from collector.cli.produce import produce
from collector.config import Settings
from collector.db.seed import seed_users
from collector.devtools.generator import GeneratorConfig
from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import settings_for
from tests.e2e.test_windows_robust import metric, metrics, until
from tests.e2e.tools import wait_http
from tests.e2e.workers import ROOT, Worker, isolated_env

pytestmark = pytest.mark.e2e

API_DOC = ROOT / "docs" / "api.md"
DEMO_PORT = "http://127.0.0.1:16066"
EVENTS = 10_000  # each of the 1000 demo users (u00042 too) gets some


def shell_examples(text: str) -> list[str]:
    """The ```sh blocks that call curl, unindented (list items indent theirs)."""
    blocks = re.findall(r"^( *)```sh\n(.*?)^\1```", text, flags=re.S | re.M)
    return ["\n".join(line[len(indent):] for line in body.splitlines())
            for indent, body in blocks if "curl " in body]


def run_example(script: str, port: int) -> list[tuple[int, dict[str, Any]]]:
    """Run one block with bash; every curl's (status, JSON body), in order."""
    script = script.replace(DEMO_PORT, f"http://127.0.0.1:{port}")
    script = script.replace("TOKEN=...", "TOKEN=")
    wrapper = "curl() { command curl -w '\\n@@%{http_code}\\n' \"$@\"; }\n"
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", wrapper + script],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    answers, body = [], ""
    for line in proc.stdout.splitlines():
        if line.startswith("@@"):
            answers.append((int(line[2:]), orjson.loads(body)))
            body = ""
        else:
            body += line
    return answers


@pytest.fixture(scope="module")
def demo_worker(stack: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    tmp = tmp_path_factory.mktemp("api-docs")
    env = isolated_env(tmp)
    settings = settings_for(env)

    async def prepare() -> None:
        from collector.db import migrate

        await migrate(settings)
        await seed_users(settings, 1000, 7)  # what `make run` seeds
        await ensure_topics(settings)

    asyncio.run(prepare())
    worker = Worker(env, tmp / "worker.log").start()
    try:
        worker.wait_ready()
        wait_http(f"http://127.0.0.1:{worker.port}/livez")
        config = GeneratorConfig(events=EVENTS, users=1000,
                                 sources=tuple(settings.kafka.sources))
        asyncio.run(produce(settings, config))
        yield worker
    finally:
        worker.stop()


async def consumed(worker: Worker) -> tuple[float, float]:
    text = await metrics(worker)
    return (metric(text, "collector_events_valid_total") or 0.0,
            metric(text, "collector_events_dead_lettered_total") or 0.0)


async def test_the_docs_examples_answer_with_demo_data(demo_worker: Worker) -> None:
    async def all_in() -> tuple[bool, Any]:
        got = await consumed(demo_worker)
        return got[0] >= EVENTS, got

    await until(all_in, 60, "the demo events to be consumed")
    examples = shell_examples(API_DOC.read_text())
    assert len(examples) == 3, "the window queries, the ingest and the NDJSON examples"
    async def answered() -> tuple[bool, Any]:
        # the windows reach the query API with the next flush (windows.flush_interval)
        queries = run_example(examples[0], demo_worker.port)
        full = all(status == 200 and body["windows"] and body["complete"]
                   for status, body in queries)
        return full, queries

    queries = await until(answered, 30, "every documented query to answer windows")
    tables = [body["table"] for _, body in queries]
    assert tables == ["event_stats", "segment_stats", "user_activity"]

    (status, body), = run_example(examples[1], demo_worker.port)
    assert status == 202 and body["accepted"] == 1 and body["rejected_total"] == 0, body

    (status, body), = run_example(examples[2], demo_worker.port)
    assert status == 202 and body["accepted"] == 2 and body["rejected_total"] == 0, body

    async def ingested() -> tuple[bool, Any]:
        got = await consumed(demo_worker)
        return got == (EVENTS + 3, 0.0), got  # counted, and not dead-lettered as late

    await until(ingested, 30, "the ingested example event to be counted as valid")


def test_examples_are_found_in_list_items_too() -> None:
    text = "x\n```sh\ncurl a\n```\n- item\n\n  ```sh\n  curl b\n  ```\n```sh\nls\n```\n"
    assert shell_examples(text) == ["curl a", "curl b"]


def test_docs_mention_no_user_the_demo_lacks() -> None:
    """Demo users are u00000…u00999; examples with other ids answer empty windows."""
    for example in shell_examples(API_DOC.read_text()):
        for user in re.findall(r"u\d{5}|u-\d+", example):
            assert re.fullmatch(r"u00\d{3}", user), user
