"""Asking the worker that owns a partition: who owns it, the sub-request, the 503.

Queries are answered from the state of the workers owning the partitions they need;
these are the pieces every query route shares (collector.web.query).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
from faust import web
from yarl import URL

from collector.agents.runtime import Runtime

log = logging.getLogger(__name__)

#: seconds a sub-request to another worker may take
PEER_TIMEOUT = 5.0
RETRY_AFTER_S = 1


class Unavailable(Exception):
    """A needed partition is unowned, recovering, or its owner did not answer."""


def ident(url: str | URL) -> tuple[str, int]:
    parsed = URL(str(url))
    return parsed.host or "", parsed.port or 80


def is_me(rt: Runtime, url: str) -> bool:
    return ident(url) == ident(rt.app.conf.canonical_url)


def owners(rt: Runtime, table: Any) -> dict[int, str]:
    """partition -> URL of the worker actively owning it, from the assignor's metadata."""
    topic = table.changelog_topic.get_topic_name()
    out: dict[int, str] = {}
    for url, topics in rt.app.assignor.tables_metadata().items():
        for partition in topics.get(topic, ()):
            out[partition] = url
    return out


#: what a 401 from another worker means, in its log line and in the 503 it causes
TOKEN_MISMATCH = ("every worker of a group must have the same web.api_token "
                  "(COLLECTOR_WEB__API_TOKEN); queries that need that worker fail until "
                  "they do")
#: peer url -> monotonic time of its last mismatch log line (one a minute per peer)
_mismatch_logged: dict[str, float] = {}


def token_mismatch(url: str) -> None:
    now = time.monotonic()
    if now - _mismatch_logged.get(url, -math.inf) >= 60.0:
        _mismatch_logged[url] = now
        log.error("worker %s answered 401 to a query this worker accepted: %s", url,
                  TOKEN_MISMATCH)


async def peer(rt: Runtime, url: str, request: web.Request, params: Mapping[str, str]
                ) -> dict[str, Any]:
    """GET the same path from another worker; its JSON, or Unavailable."""
    target = URL(url).with_path(request.url.path).with_query(dict(params))
    headers = {}
    if "Authorization" in request.headers:
        headers["Authorization"] = request.headers["Authorization"]
    try:
        async with rt.app.http_client.get(
            target, headers=headers, timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT),
        ) as resp:
            body: dict[str, Any] = await resp.json(content_type=None)
            if resp.status == 401:  # the caller's token was good here: tokens differ
                token_mismatch(url)
                raise Unavailable(f"worker {url} refused this worker's web.api_token: "
                                  f"{TOKEN_MISMATCH}")
            if resp.status == 503:
                raise Unavailable(f"{url}: {body.get('error', 'unavailable')}")
            if resp.status != 200:
                raise Unavailable(f"{url} answered {resp.status}: {body.get('error')}")
            return body
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise Unavailable(f"worker {url} did not answer ({exc!r})") from exc


def unavailable(view: web.View, exc: Unavailable) -> web.Response:
    return view.json({"error": f"state not available: {exc}", "retry_after": RETRY_AFTER_S},
                     status=503, headers={"Retry-After": str(RETRY_AFTER_S)})


__all__ = ["PEER_TIMEOUT", "RETRY_AFTER_S", "TOKEN_MISMATCH", "Unavailable", "ident", "is_me",
           "owners", "peer", "unavailable"]
