"""Two workers of one group with different ``web.api_token``\\s: a query that needs the
other worker answers 503 saying why, and the worker logs it (before, 503 forever with
nothing pointing at the tokens)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from collector.config import Settings
from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import settings_for
from tests.e2e.test_windows_robust import until
from tests.e2e.workers import Worker, free_port, isolated_env

pytestmark = pytest.mark.e2e


async def stats(port: int, token: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(
        f"http://127.0.0.1:{port}/api/v1/stats/events",
        headers={"Authorization": f"Bearer {token}"}, timeout=aiohttp.ClientTimeout(total=10),
    ) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_different_api_tokens_are_named_in_the_503_and_the_log(
    stack: Settings, tmp_path: Path
) -> None:
    tag = "m" + uuid.uuid4().hex[:6]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    token_a, token_b = "a" * 24 + tag, "b" * 24 + tag
    env_a = isolated_env(tmp_path / "a", COLLECTOR_KAFKA__SOURCES=f"{tag}a,{tag}b",
                         COLLECTOR_WEB__API_TOKEN=token_a)
    env_b = {**env_a, "COLLECTOR_WEB__PORT": str(free_port()),
             "COLLECTOR_APP__DATADIR": str(tmp_path / "b" / "faust"),
             "COLLECTOR_WEB__API_TOKEN": token_b}
    await ensure_topics(settings_for(env_a))
    a = Worker(env_a, tmp_path / "a.log").start()
    b = Worker(env_b, tmp_path / "b.log").start()
    try:
        await asyncio.to_thread(a.wait_ready, 90)
        await asyncio.to_thread(b.wait_ready, 90)

        async def refused() -> tuple[bool, Any]:
            status, body = await stats(a.port, token_a)  # needs b's partitions too
            return status == 503 and "web.api_token" in body.get("error", ""), (status, body)

        _, body = await until(refused, 60, "a 503 naming web.api_token")
        assert "COLLECTOR_WEB__API_TOKEN" in body["error"]
        assert body["retry_after"] >= 1
        assert "answered 401 to a query this worker accepted" in a.text()
    finally:
        a.stop()
        b.stop()
