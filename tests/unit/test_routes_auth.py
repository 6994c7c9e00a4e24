"""Every route the worker serves, with both tokens set: which ones answer without one.

The list comes from the worker's own aiohttp router (Faust's blueprints and ours, as
the worker builds it), so a route added later, or a Faust upgrade that mounts a new
built-in page, is checked without anyone remembering to add it here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from collector.config import load_settings
from collector.factory import create_app
from collector.web.auth import PUBLIC_PATHS

API, INGEST = "api-token-0123456789abcdef", "ingest-token-0123456789abcdef"


@functools.cache
def _built_web() -> Any:
    """The web server of a worker app built by the factory, with both tokens set."""
    app = create_app(load_settings(web={"api_token": API, "ingest_token": INGEST}))
    web = app.web
    web.init_server()
    return web


def routes() -> list[tuple[str, str]]:
    out = []
    for route in _built_web().web_app.router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue
        path = re.sub(r"\{[^}]+\}", "app", route.resource.canonical)
        out.append((route.method, path))
    return sorted(set(out))


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(_fresh_copy(_built_web().web_app))) as c:
        yield c


def _fresh_copy(built: web.Application) -> web.Application:
    """The worker's routes and middlewares in a new Application: aiohttp binds one to
    the first event loop that serves it, and each test has its own loop."""
    copy = web.Application(middlewares=list(built.middlewares))
    for route in built.router.routes():
        if route.method != "HEAD":
            copy.router.add_route(route.method, route.resource.canonical, route.handler)
    return copy


def test_faust_builtin_pages_are_not_served() -> None:
    paths = {path for _, path in routes()}
    assert not [p for p in paths if p.startswith(("/router", "/table", "/graph", "/stats"))]
    assert {"/livez", "/readyz", "/metrics", "/api/v1/summary"} <= paths


@pytest.mark.parametrize(("method", "path"), routes())
async def test_every_route_needs_its_token(client: TestClient[Any, Any], method: str,
                                           path: str) -> None:
    public = path in PUBLIC_PATHS
    token = INGEST if path.startswith("/api/v1/events/") else API
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"},
                    {"Authorization": "Basic " + token}, {"Authorization": "Bearer"},
                    {"Authorization": "Bearer " + token + "ü"},
                    {"Authorization": "Bearer " + (API if token == INGEST else INGEST)}):
        response = await client.request(method, path, headers=headers, data=b"{}")
        if public:
            assert response.status != 401, (method, path, headers)
        else:
            assert response.status == 401, (method, path, headers)
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert "token" not in (await response.text()).lower().replace("bearer token", "")
            # the body docs/api.md documents, on every route (ingest had no field)
            assert await response.json() == {"error": "missing or wrong bearer token",
                                             "field": "Authorization"}, (method, path)
    response = await client.request(method, path, data=b"{}",
                                    headers={"Authorization": f"Bearer {token}"})
    assert response.status != 401, (method, path)


async def test_unknown_paths_are_refused_before_routing(client: TestClient[Any, Any]) -> None:
    for path in ("/table/collector-state/", "/router/", "/nope", "/metrics/../table/"):
        assert (await client.get(path)).status == 401
