"""Who may call what: one bearer-token check in front of every route the worker serves.

A middleware, not a check per view, so a route nobody thought of (one of Faust's own
blueprints, a view added later) is closed by default instead of open by default.
Only the probes, the page shell and the OpenAPI document are public; ingest has its own
token, everything else needs ``web.api_token``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web as aioweb

#: routes anyone may call: load-balancer probes, the page shell (it sends ?token= on
#: to the API itself) and the API description
PUBLIC_PATHS = frozenset({"/livez", "/readyz", "/", "/api/openapi.json"})
#: ingest routes check ``web.ingest_token`` instead of ``web.api_token``
INGEST_PREFIX = "/api/v1/events/"

Handler = Callable[[aioweb.Request], Awaitable[aioweb.StreamResponse]]


def bearer_ok(request: Any, token: str) -> bool:
    """Constant-time check of ``Authorization: Bearer <token>`` (no token configured: ok)."""
    if not token:
        return True
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    # bytes: compare_digest raises on a non-ASCII str, which answered 500 instead of 401
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8"))


def required_token(path: str, web_settings: Any) -> str:
    """The token a request to ``path`` must carry ("" when none is needed)."""
    if path in PUBLIC_PATHS:
        return ""
    if path.startswith(INGEST_PREFIX):
        return str(web_settings.ingest_token.get_secret_value())
    return str(web_settings.api_token.get_secret_value())


def denied() -> aioweb.Response:
    return aioweb.json_response(
        {"error": "missing or wrong bearer token", "field": "Authorization"},
        status=401, headers={"WWW-Authenticate": "Bearer"})


def middleware(web_settings: Any) -> Any:
    """An aiohttp middleware enforcing :func:`required_token` on every request."""

    @aioweb.middleware
    async def check_token(request: aioweb.Request, handler: Handler) -> aioweb.StreamResponse:
        if not bearer_ok(request, required_token(request.path, web_settings)):
            return denied()
        return await handler(request)

    return check_token


__all__ = ["INGEST_PREFIX", "PUBLIC_PATHS", "bearer_ok", "denied", "middleware",
           "required_token"]
