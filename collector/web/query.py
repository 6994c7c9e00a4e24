"""Table query endpoints: windows of event_stats, segment_stats, user_activity and
user_sessions.

State lives in partitioned tables, so a worker can only answer for partitions it owns:

- user activity and sessions are routed to the owner of the user's partition, computed like the
  producers' default partitioner (murmur2 of the raw user_id bytes), not Faust's
  ``table_route`` (which hashes the json-serialized key and lands elsewhere);
- stats are scatter-gathered: every owner of the merged table's partitions answers
  for its own (``scope=local&partitions=…``) and the results are concatenated.

A partition with no owner, still recovering, or whose owner does not answer makes the
request fail with 503 and ``Retry-After`` rather than return a silently partial result.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from faust import web
from yarl import URL

from collector.agents.runtime import Runtime
from collector.engine.aggregator import user_key
from collector.engine.merger import mark_key
from collector.web import query_logic as ql
from collector.web.history import HistoryUnavailable
from collector.web.openapi import openapi_document
from collector.web.ops import runtime_of

log = logging.getLogger(__name__)

#: seconds a sub-request to another worker may take
PEER_TIMEOUT = 5.0
RETRY_AFTER_S = 1
#: up to this many windows in the range, read each user window key; beyond, scan
USER_POINT_READS = 5000

blueprint = web.Blueprint("query")


class Unavailable(Exception):
    """A needed partition is unowned, recovering, or its owner did not answer."""


def _ident(url: str | URL) -> tuple[str, int]:
    parsed = URL(str(url))
    return parsed.host or "", parsed.port or 80


def _is_me(rt: Runtime, url: str) -> bool:
    return _ident(url) == _ident(rt.app.conf.canonical_url)


def owners(rt: Runtime, table: Any) -> dict[int, str]:
    """partition -> URL of the worker actively owning it, from the assignor's metadata."""
    topic = table.changelog_topic.get_topic_name()
    out: dict[int, str] = {}
    for url, topics in rt.app.assignor.tables_metadata().items():
        for partition in topics.get(topic, ()):
            out[partition] = url
    return out


def _check_local(rt: Runtime, partitions: list[int], owned: set[int]) -> None:
    app = rt.app
    recovery = app.tables.recovery  # type: ignore[attr-defined]
    if app.rebalancing:
        raise Unavailable("rebalancing")
    if app.in_recovery or not recovery.completed.is_set():
        raise Unavailable("table recovery in progress")
    missing = sorted(set(partitions) - owned)
    if missing:
        raise Unavailable(f"partitions {missing} are not owned by this worker (moving)")


def _owned(rt: Runtime, topics: list[str]) -> set[int]:
    return {p for _, p in rt.owned(topics)}


def _merged_close_mark(rt: Runtime, partition: int) -> int:
    merger = rt.merger
    closed = []
    for slot in merger.expected_slots:
        mark = merger.state.get(partition, mark_key(partition, slot))
        closed.append(int(mark["closed"]) if mark else 0)
    return min(closed, default=0)


def local_stats(rt: Runtime, query: ql.Query, partitions: list[int]
                ) -> list[dict[str, Any]]:
    _check_local(rt, partitions, _owned(rt, [rt.settings.kafka.partials_topic]))
    spec = rt.specs.for_table(query.table)
    return ql.merged_windows(rt.merger.state.items(), query, spec, partitions,
                             lambda partition: _merged_close_mark(rt, partition),
                             rt.specs.definition(query.table))


def local_user(rt: Runtime, query: ql.Query, partition: int) -> list[dict[str, Any]]:
    raw_topics = rt.settings.kafka.raw_topics
    _check_local(rt, [partition], _owned(rt, raw_topics))
    spec = rt.specs.user
    state = rt.window_state
    user_id = query.key["user_id"]
    assert user_id is not None
    starts = ql.user_window_starts(query, spec)
    if len(starts) <= USER_POINT_READS:
        found = [(ws, state.get(partition, user_key(user_id, ws))) for ws in starts]
    else:  # tiny windows over a long range: one pass over the table is cheaper
        prefix = user_key(user_id, 0)[:-1]
        found = [(v["ws"], v) for k, v in state.items()
                 if k.startswith(prefix) and v.get("partition") == partition
                 and query.from_ms <= v["ws"] < query.to_ms]
    closed: int | None = None
    out = []
    for ws, entry in found:
        if entry is None:
            continue
        if closed is None:  # the same computation as the flusher's
            slots = [rt.aggregator.slot(t, partition) for t in raw_topics]
            closed = min(max(s["wm"], s["idle"]) for s in slots)
        final = spec.is_closed(ws, closed)
        out.append(ql.window(query.table, spec, [user_id], ws, entry["agg"], final))
    return ql.sort_windows(out)


def local_sessions(rt: Runtime, query: ql.Query, partition: int
                   ) -> tuple[list[dict[str, Any]], list[int]]:
    """The user's live sessions (and the starts that moved) from this worker's state."""
    raw_topics = rt.settings.kafka.raw_topics
    _check_local(rt, [partition], _owned(rt, raw_topics))
    user_id = query.key["user_id"]
    assert user_id is not None
    # with the user windows still waiting to be copied in (engine/session_flush.py)
    entry = rt.flusher.session_flush.live(partition, query.table, user_id)
    if entry is None:
        return [], []
    plan = rt.flusher.sessions[query.table]
    slots = [rt.aggregator.slot(t, partition) for t in raw_topics]
    closed = min(max(s["wm"], s["idle"]) for s in slots)  # as the flusher computes it
    rows = entry["rows"]
    sessions = [(agg, bool(rows.get(str(agg["first_ts"]), {}).get("fin")))
                for agg in plan.sessions(entry)]
    live = ql.session_windows(sessions, user_id, query, plan.spec, closed)
    # starts that are no session now: markers, and rows written there before a merge
    starts = {agg["first_ts"] for agg, _ in sessions}
    moved = {m["s"] for m in entry["dead"]} | {int(s) for s in rows if int(s) not in starts}
    return live, sorted(moved)


async def sessions_answer(rt: Runtime, query: ql.Query, live: list[dict[str, Any]],
                          moved: list[int]) -> dict[str, Any]:
    spec = rt.specs.for_table(query.table)
    try:
        rows = await rt.sink_history.windows(query, spec)
    except HistoryUnavailable as exc:
        return ql.response(query, spec, live, complete=False, incomplete=str(exc))
    return ql.response(query, spec, ql.overlay_sessions(rows, live, moved))


#: what a 401 from another worker means, in its log line and in the 503 it causes
TOKEN_MISMATCH = ("every worker of a group must have the same web.api_token "
                  "(COLLECTOR_WEB__API_TOKEN); queries that need that worker fail until "
                  "they do")
#: peer url -> monotonic time of its last mismatch log line (one a minute per peer)
_mismatch_logged: dict[str, float] = {}


def _token_mismatch(url: str) -> None:
    now = time.monotonic()
    if now - _mismatch_logged.get(url, -math.inf) >= 60.0:
        _mismatch_logged[url] = now
        log.error("worker %s answered 401 to a query this worker accepted: %s", url,
                  TOKEN_MISMATCH)


async def _peer(rt: Runtime, url: str, request: web.Request, params: Mapping[str, str]
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
                _token_mismatch(url)
                raise Unavailable(f"worker {url} refused this worker's web.api_token: "
                                  f"{TOKEN_MISMATCH}")
            if resp.status == 503:
                raise Unavailable(f"{url}: {body.get('error', 'unavailable')}")
            if resp.status != 200:
                raise Unavailable(f"{url} answered {resp.status}: {body.get('error')}")
            return body
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise Unavailable(f"worker {url} did not answer ({exc!r})") from exc


async def full_answer(rt: Runtime, query: ql.Query, live: list[dict[str, Any]]
                      ) -> dict[str, Any]:
    """Live windows over the sink's rows; without MySQL, the live ones, marked incomplete."""
    spec = rt.specs.for_table(query.table)
    defn = rt.specs.definition(query.table)
    if "mysql" not in defn.sinks:  # a configured aggregate written to InfluxDB only
        kept_from = int(time.time() * 1000) - rt.specs.expires_ms
        if query.from_ms >= kept_from:
            return ql.response(query, spec, live)
        return ql.response(query, spec, live, complete=False, incomplete=(
            f"{query.table} is not written to MySQL: windows that started before "
            f"{ql.rfc3339(kept_from)} (windows.expires_seconds) are only in InfluxDB"))
    try:
        rows = await rt.sink_history.windows(query, spec, defn if defn.configured else None)
    except HistoryUnavailable as exc:
        return ql.response(query, spec, live, complete=False, incomplete=str(exc))
    return ql.response(query, spec, ql.overlay(rows, live))


def _unavailable(view: web.View, exc: Unavailable) -> web.Response:
    return view.json({"error": f"state not available: {exc}", "retry_after": RETRY_AFTER_S},
                     status=503, headers={"Retry-After": str(RETRY_AFTER_S)})


async def answer_stats(view: web.View, request: web.Request, query: ql.Query) -> web.Response:
    rt = runtime_of(view)
    params = dict(request.query)
    count = rt.settings.kafka.partitions
    spec = rt.specs.for_table(query.table)
    if params.get("scope") == "local":
        parts = ql.parse_partitions(params.get("partitions"), count)
        parts = sorted(_owned(rt, [rt.settings.kafka.partials_topic])) if parts is None else parts
        windows = local_stats(rt, query, parts)
        return view.json(ql.response(query, spec, windows, partitions=parts))
    by_partition = owners(rt, rt.tables.merged)
    missing = [p for p in range(count) if p not in by_partition]
    if missing:
        raise Unavailable(f"partitions {missing} have no owner yet (rebalancing)")
    by_url: dict[str, list[int]] = {}
    for partition, url in sorted(by_partition.items()):
        by_url.setdefault(url, []).append(partition)

    async def one(url: str, parts: list[int]) -> list[dict[str, Any]]:
        if _is_me(rt, url):
            return local_stats(rt, query, parts)
        sub = {**params, "scope": "local", "partitions": ",".join(map(str, parts)),
               "from": str(query.from_ms), "to": str(query.to_ms)}
        body = await _peer(rt, url, request, sub)
        if sorted(body.get("partitions", [])) != parts:
            raise Unavailable(f"{url} answered for other partitions than {parts}")
        windows: list[dict[str, Any]] = body["windows"]
        return windows

    answers = await asyncio.gather(*(one(url, p) for url, p in by_url.items()))
    return view.json(await full_answer(rt, query, ql.gather(answers)))


def _params(request: web.Request) -> dict[str, str]:
    return dict(request.query)


async def _stats_view(
    view: web.View, request: web.Request, parse: Callable[[], ql.Query]
) -> web.Response:
    """Parameters (400), scatter-gather (503 while a partition is unavailable); the
    token was checked by collector.web.auth."""
    try:
        return await answer_stats(view, request, parse())
    except ql.ParamError as exc:
        return view.json(exc.body(), status=400)
    except Unavailable as exc:
        return _unavailable(view, exc)


@blueprint.route("/api/v1/stats/events", name="stats_events")
class EventStatsView(web.View):
    """event_stats windows (per source and type) over a time range."""

    async def get(self, request: web.Request) -> web.Response:
        def parse() -> ql.Query:
            return ql.parse_events(_params(request), runtime_of(self).settings.kafka.sources,
                                   int(time.time() * 1000))

        return await _stats_view(self, request, parse)


@blueprint.route("/api/v1/segments", name="segments")
class SegmentsView(web.View):
    """segment_stats windows (per segment and country) over a time range."""

    async def get(self, request: web.Request) -> web.Response:
        def parse() -> ql.Query:
            return ql.parse_segments(_params(request), int(time.time() * 1000))

        return await _stats_view(self, request, parse)


@blueprint.route("/api/v1/users/{user_id}/activity", name="user_activity")
class UserActivityView(web.View):
    """One user's activity windows, answered by the worker owning the user's partition."""

    async def get(self, request: web.Request, user_id: str) -> web.Response:
        rt = runtime_of(self)
        params = _params(request)
        try:
            query = ql.parse_user(user_id, params, int(time.time() * 1000))
            partition = ql.user_partition(user_id, rt.settings.kafka.partitions)
            if params.get("scope") != "local":
                owner = owners(rt, rt.tables.state).get(partition)
                if owner is None:
                    raise Unavailable(f"partition {partition} has no owner yet (rebalancing)")
                if not _is_me(rt, owner):
                    sub = {"scope": "local", "from": str(query.from_ms), "to": str(query.to_ms)}
                    body = await _peer(rt, owner, request, sub)
                    return self.json(await full_answer(rt, query, body["windows"]))
                return self.json(await full_answer(rt, query, local_user(rt, query, partition)))
            windows = local_user(rt, query, partition)
            return self.json(ql.response(query, rt.specs.user, windows))
        except ql.ParamError as exc:
            return self.json(exc.body(), status=400)
        except Unavailable as exc:
            return _unavailable(self, exc)


@blueprint.route("/api/v1/aggregates/{name}", name="aggregates")
class ConfiguredAggregateView(web.View):
    """Windows of an aggregate declared in configuration ([aggregate.<name>])."""

    async def get(self, request: web.Request, name: str) -> web.Response:
        rt = runtime_of(self)
        defn = rt.specs.by_name.get(name)
        if defn is None or not defn.configured:
            configured = sorted(n for n, d in rt.specs.by_name.items() if d.configured)
            return self.json({"error": f"no configured aggregate {name!r}; configured: "
                              f"{', '.join(configured) or 'none'}", "field": "name"},
                             status=404)

        def parse() -> ql.Query:
            return ql.parse_aggregate(defn, _params(request), rt.settings.kafka.sources,
                                      int(time.time() * 1000))

        return await _stats_view(self, request, parse)


@blueprint.route("/api/v1/users/{user_id}/sessions", name="user_sessions")
class UserSessionsView(web.View):
    """One user's sessions starting in the range, answered by the worker owning the
    user's partition: live ones from its state over the MySQL rows."""

    async def get(self, request: web.Request, user_id: str) -> web.Response:
        rt = runtime_of(self)
        params = _params(request)
        try:
            query = ql.parse_sessions(user_id, params, int(time.time() * 1000))
            partition = ql.user_partition(user_id, rt.settings.kafka.partitions)
            if params.get("scope") != "local":
                owner = owners(rt, rt.tables.state).get(partition)
                if owner is None:
                    raise Unavailable(f"partition {partition} has no owner yet (rebalancing)")
                if not _is_me(rt, owner):
                    sub = {"scope": "local", "from": str(query.from_ms), "to": str(query.to_ms)}
                    body = await _peer(rt, owner, request, sub)
                    return self.json(await sessions_answer(rt, query, body["windows"],
                                                           body.get("moved", [])))
                live, moved = local_sessions(rt, query, partition)
                return self.json(await sessions_answer(rt, query, live, moved))
            live, moved = local_sessions(rt, query, partition)
            spec = rt.specs.for_table(query.table)
            return self.json(ql.response(query, spec, live, moved=moved))
        except ql.ParamError as exc:
            return self.json(exc.body(), status=400)
        except Unavailable as exc:
            return _unavailable(self, exc)


@blueprint.route("/api/openapi.json", name="openapi")
class OpenAPIView(web.View):
    """The OpenAPI 3 description of every HTTP endpoint (public: no token needed)."""

    async def get(self, request: web.Request) -> web.Response:
        rt = runtime_of(self)
        return self.json(openapi_document(rt.settings.kafka.sources, rt.specs.aggregates))
