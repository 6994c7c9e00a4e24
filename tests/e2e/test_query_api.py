"""The query API against a real worker: ranges, filters, finality, 400s, 401s, OpenAPI.

Input is produced before the worker starts: old events (30 min ago, closed by the idle
timeout, so final; closed user windows are then read back from MySQL) and recent ones
(open: grace is 10 min).  Expected windows come from ``tests.oracle``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from collector.config import Settings
from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import settings_for
from tests.e2e.query_io import (
    expected,
    get,
    make_events,
    produce_events,
    profiles,
    seed_profiles,
    strip,
)
from tests.e2e.workers import Worker, isolated_env

pytestmark = pytest.mark.e2e

TOKEN = "qsecret"
MIN = 60_000


@dataclass
class Served:
    worker: Worker
    settings: Settings
    tag: str
    events: list[dict[str, Any]]
    users: list[str]
    profiles: dict[str, tuple[str, str]]
    old_ms: int
    now_ms: int

    async def get(self, path: str, params: dict[str, Any] | None = None,
                  token: str | None = TOKEN) -> tuple[int, dict[str, str], Any]:
        return await get(self.worker.port, path, params, token)


@pytest.fixture(scope="module")
def served(migrated: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("query")
    tag = "q" + uuid.uuid4().hex[:6]
    env = isolated_env(
        tmp, COLLECTOR_KAFKA__SOURCES=f"{tag}a,{tag}b", COLLECTOR_WEB__API_TOKEN=TOKEN,
        COLLECTOR_WINDOWS__FLUSH_INTERVAL_SECONDS="0.5",
        COLLECTOR_WINDOWS__IDLE_TIMEOUT_SECONDS="8", COLLECTOR_WINDOWS__GRACE_SECONDS="600",
        COLLECTOR_INFLUX__DATABASE=f"{tag}db",
    )
    settings = settings_for(env)
    now_ms = int(time.time() * 1000)
    old_ms = (now_ms - 30 * MIN) // MIN * MIN
    users = [f"{tag}u{i}" for i in range(6)]
    sources = settings.kafka.sources
    events = (make_events(tag, users, sources, old_ms, 60, 2 * MIN, seed=1)
              + make_events(tag, users, sources, now_ms - 90_000, 60, MIN, seed=2))

    users_map = profiles(tag, users)

    async def setup() -> None:
        await ensure_topics(settings)
        await seed_profiles(settings, users_map)
        await produce_events(settings, events)

    asyncio.run(setup())
    worker = Worker(env, tmp / "worker.log").start()
    try:
        worker.wait_ready()
        yield Served(worker, settings, tag, events, users, users_map, old_ms, now_ms)
    finally:
        worker.stop()


async def poll(check: Callable[[], Awaitable[Any]], limit_s: float, what: str) -> Any:
    deadline = time.monotonic() + limit_s
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last is True or (last and not isinstance(last, tuple)):
            return last
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r:.3000}")


async def test_event_stats_over_a_range(served: Served) -> None:
    lo, hi = served.old_ms - 10 * MIN, served.now_ms + MIN
    # MySQL is shared with other tests: ask for this test's sources only
    for source in served.settings.kafka.sources:
        want = expected(served.events, "event_stats", lo, hi, served.profiles, source=source)

        async def check(source: str = source, want: list[dict[str, Any]] = want) -> Any:
            status, _, body = await served.get("/api/v1/stats/events",
                                               {"from": lo, "to": hi, "source": source})
            if status == 200 and strip(body["windows"]) == want and all(
                    w["final"] for w in body["windows"]
                    if w["window_start_ms"] < served.old_ms + 10 * MIN):
                return body
            return (status, body)

        body = await poll(check, 90, f"{source} windows equal to the oracle, old ones final")
        assert body["table"] == "event_stats" and body["window_seconds"] == 60
        assert body["complete"] is True
        assert any(w["final"] for w in body["windows"])
        assert not any(w["final"] for w in body["windows"]
                       if w["window_start_ms"] >= served.now_ms - 3 * MIN)
        first = body["windows"][0]
        assert first["window_start"].endswith("Z") and first["window_end"].endswith("Z")

    # both filters, and RFC 3339 bounds with an offset
    source = served.settings.kafka.sources[0]
    status, _, body = await served.get("/api/v1/stats/events", {
        "source": source, "type": "click",
        "from": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(lo / 1000)), "to": hi})
    assert status == 200
    assert strip(body["windows"]) == expected(served.events, "event_stats", lo, hi,
                                              served.profiles, source=source, type="click")


async def test_segments_and_empty_range(served: Served) -> None:
    lo, hi = served.old_ms - 10 * MIN, served.now_ms + MIN
    segment = f"{served.tag}s0"
    want = expected(served.events, "segment_stats", lo, hi, served.profiles, segment=segment)

    async def check() -> Any:
        status, _, body = await served.get("/api/v1/segments",
                                           {"from": lo, "to": hi, "segment": segment})
        return body if status == 200 and strip(body["windows"]) == want else (status, body)

    body = await poll(check, 90, "segment_stats windows equal to the oracle")
    assert body["window_seconds"] == 300
    assert {w["key"]["country"] for w in body["windows"]} == {"DE", "FR"}
    status, _, body = await served.get("/api/v1/segments", {
        "from": lo, "to": hi, "segment": segment, "country": "DE"})
    assert strip(body["windows"]) == expected(served.events, "segment_stats", lo, hi,
                                              served.profiles, segment=segment, country="DE")
    status, _, body = await served.get("/api/v1/segments", {
        "from": "2021-01-01T00:00:00Z", "to": "2021-01-02T00:00:00Z"})
    assert (status, body["windows"]) == (200, [])


async def test_user_activity(served: Served) -> None:
    lo, hi = served.now_ms - 5 * MIN, served.now_ms + MIN
    for user in served.users:
        want = expected(served.events, "user_activity", lo, hi, served.profiles,
                        user_id=user)

        async def check(user: str = user, want: list[dict[str, Any]] = want) -> Any:
            status, _, body = await served.get(f"/api/v1/users/{user}/activity",
                                               {"from": lo, "to": hi})
            return body if status == 200 and strip(body["windows"]) == want else (status, body)

        body = await poll(check, 60, f"activity of {user}")
        assert body["table"] == "user_activity"
        assert not any(w["final"] for w in body["windows"])
    # default range: the last hour
    status, _, body = await served.get(f"/api/v1/users/{served.users[0]}/activity")
    assert status == 200 and body["windows"]
    status, _, body = await served.get(f"/api/v1/users/{served.tag}-nobody/activity")
    assert (status, body["windows"]) == (200, [])


async def test_user_activity_history_from_the_sink(served: Served) -> None:
    """Closed user windows leave the table once MySQL has them; the API still answers."""
    lo, hi = served.old_ms - 10 * MIN, served.now_ms + MIN
    user = served.users[1]
    want = expected(served.events, "user_activity", lo, hi, served.profiles,
                        user_id=user)

    async def check() -> Any:
        status, _, body = await served.get(f"/api/v1/users/{user}/activity",
                                           {"from": lo, "to": hi})
        old = [w for w in body["windows"] if w["window_start_ms"] < served.old_ms + 10 * MIN]
        if status == 200 and strip(body["windows"]) == want and old and all(
                w["final"] for w in old):
            return body
        return (status, body)

    body = await poll(check, 90, f"old and recent activity of {user}")
    assert body["complete"] is True
    # over 5000 one-minute windows: the owner scans the table instead of point reads
    status, _, long = await served.get(f"/api/v1/users/{user}/activity",
                                       {"from": served.now_ms - 5 * 86_400_000, "to": hi})
    assert status == 200 and long["windows"] == body["windows"]


@pytest.mark.parametrize(("path", "params", "field"), [
    ("/api/v1/stats/events", {"source": "nope"}, "source"),
    ("/api/v1/stats/events", {"type": "Bad Type"}, "type"),
    ("/api/v1/stats/events", {"from": "yesterday"}, "from"),
    ("/api/v1/stats/events", {"to": "2026-01-01T00:00:00"}, "to"),
    ("/api/v1/stats/events", {"from": "2000", "to": "1000"}, "from"),
    ("/api/v1/segments", {"from": 0, "to": 40 * 86_400_000}, "from"),
    ("/api/v1/segments", {"segment": "a|b"}, "segment"),
    ("/api/v1/segments", {"scope": "local", "partitions": "x"}, "partitions"),
    ("/api/v1/users/bad%20id/activity", {}, "user_id"),
    ("/api/v1/users/u1/activity", {"from": "1e9"}, "from"),
])
async def test_bad_parameters_are_400(served: Served, path: str, params: dict[str, Any],
                                      field: str) -> None:
    status, _, body = await served.get(path, params)
    assert status == 400, body
    assert body["field"] == field and body["error"]


async def test_auth(served: Served) -> None:
    for path in ("/api/v1/stats/events", "/api/v1/segments", "/api/v1/users/u1/activity"):
        for token in (None, "wrong"):
            status, headers, body = await served.get(path, token=token)
            assert status == 401, (path, token, body)
            assert headers.get("WWW-Authenticate") == "Bearer"


async def test_openapi(served: Served) -> None:
    status, _, doc = await served.get("/api/openapi.json", token=None)
    assert status == 200
    assert doc["openapi"].startswith("3.")
    for path in ("/api/v1/stats/events", "/api/v1/segments", "/api/v1/users/{user_id}/activity",
                 "/api/v1/events/{source}", "/metrics", "/livez", "/readyz", "/"):
        assert path in doc["paths"], path
    sources = doc["paths"]["/api/v1/stats/events"]["get"]["parameters"][0]["schema"]["enum"]
    assert sources == served.settings.kafka.sources


async def test_the_answers_fit_the_served_document(served: Served) -> None:
    """Every body this worker answers matches the schema its own document gives for it
    (the schemas forbid undocumented fields, so a new field must be documented)."""
    import jsonschema

    _, _, doc = await served.get("/api/openapi.json", token=None)

    def fits(body: Any, path: str, status: int) -> None:
        schema = doc["paths"][path]["get"]["responses"][str(status)]["content"]
        jsonschema.Draft202012Validator(
            {"components": doc["components"], **schema["application/json"]["schema"]}
        ).validate(body)

    window = {"from": str(served.old_ms), "to": str(served.now_ms + MIN)}
    user = served.users[0]
    asked = [("/api/v1/stats/events", "/api/v1/stats/events", window),
             ("/api/v1/segments", "/api/v1/segments", window),
             ("/api/v1/segments", "/api/v1/segments", {**window, "scope": "local"}),
             (f"/api/v1/users/{user}/activity", "/api/v1/users/{user_id}/activity", window),
             ("/api/v1/stats/events", "/api/v1/stats/events", {"from": "yesterday"}),
             ("/livez", "/livez", {}), ("/readyz", "/readyz", {})]
    statuses = []
    for url, path, params in asked:
        status, _, body = await served.get(url, params)
        fits(body, path, status)
        statuses.append(status)
    assert statuses == [200, 200, 200, 200, 400, 200, 200]
    status, _, body = await served.get("/api/v1/segments", token="wrong")
    fits(body, "/api/v1/segments", status)
    assert status == 401
