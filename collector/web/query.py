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
import time
from collections.abc import Awaitable, Callable
from typing import Any

from faust import web

from collector.agents.runtime import Runtime
from collector.engine.aggregator import user_key
from collector.engine.merger import mark_key
from collector.web import query_logic as ql
from collector.web.history import HistoryUnavailable
from collector.web.openapi import openapi_document
from collector.web.ops import runtime_of
from collector.web.routing import Unavailable, is_me, owners, peer, unavailable

log = logging.getLogger(__name__)

#: up to this many windows in the range, read each user window key; beyond, scan
USER_POINT_READS = 5000

blueprint = web.Blueprint("query")


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
    live = ql.session_windows(sessions, user_id, query, plan.spec, closed,
                              rt.specs.definition(query.table))
    # starts that are no session now: markers, and rows written there before a merge
    starts = {agg["first_ts"] for agg, _ in sessions}
    moved = {m["s"] for m in entry["dead"]} | {int(s) for s in rows if int(s) not in starts}
    return live, sorted(moved)


async def sessions_answer(rt: Runtime, query: ql.Query, live: list[dict[str, Any]],
                          moved: list[int]) -> dict[str, Any]:
    spec = rt.specs.for_table(query.table)
    defn = rt.specs.definition(query.table)
    try:
        rows = await rt.sink_history.windows(query, spec, defn if defn.configured else None)
    except HistoryUnavailable as exc:
        return ql.response(query, spec, live, complete=False, incomplete=str(exc))
    return ql.response(query, spec, ql.overlay_sessions(rows, live, moved))


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
        if is_me(rt, url):
            return local_stats(rt, query, parts)
        sub = {**params, "scope": "local", "partitions": ",".join(map(str, parts)),
               "from": str(query.from_ms), "to": str(query.to_ms)}
        body = await peer(rt, url, request, sub)
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
        return unavailable(view, exc)


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


#: a per-user query's (windows, body fields) from this worker's state, for a partition
Local = Callable[[int], tuple[list[dict[str, Any]], dict[str, Any]]]
#: the full answer from the owner's (windows, body fields): live over the sink's rows
Full = Callable[[list[dict[str, Any]], dict[str, Any]], Awaitable[dict[str, Any]]]


async def answer_user(view: web.View, request: web.Request, query: ql.Query, user_id: str,
                      local: Local, full: Full) -> web.Response:
    """A per-user query, answered from the state of the worker owning the user's
    partition (asked with ``scope=local`` when that is another worker)."""
    rt = runtime_of(view)
    partition = ql.user_partition(user_id, rt.settings.kafka.partitions)
    if _params(request).get("scope") == "local":
        windows, fields = local(partition)
        return view.json(ql.response(query, rt.specs.for_table(query.table), windows,
                                     **fields))
    owner = owners(rt, rt.tables.state).get(partition)
    if owner is None:
        raise Unavailable(f"partition {partition} has no owner yet (rebalancing)")
    if is_me(rt, owner):
        windows, fields = local(partition)
    else:
        sub = {"scope": "local", "from": str(query.from_ms), "to": str(query.to_ms)}
        body = await peer(rt, owner, request, sub)
        windows, fields = body["windows"], {k: body[k] for k in ("moved",) if k in body}
    return view.json(await full(windows, fields))


def session_answers(rt: Runtime, query: ql.Query) -> tuple[Local, Full]:
    """``answer_user``'s parts for a session aggregate: live sessions (and the starts
    that moved) over the MySQL rows."""

    def local(partition: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        live, moved = local_sessions(rt, query, partition)
        return live, {"moved": moved}

    async def full(windows: list[dict[str, Any]], fields: dict[str, Any]) -> dict[str, Any]:
        return await sessions_answer(rt, query, windows, fields.get("moved", []))

    return local, full


async def _user_view(view: web.View, request: web.Request,
                     parse: Callable[[], tuple[ql.Query, str, Local, Full]]) -> web.Response:
    try:
        query, user_id, local, full = parse()
        return await answer_user(view, request, query, user_id, local, full)
    except ql.ParamError as exc:
        return view.json(exc.body(), status=400)
    except Unavailable as exc:
        return unavailable(view, exc)


@blueprint.route("/api/v1/users/{user_id}/activity", name="user_activity")
class UserActivityView(web.View):
    """One user's activity windows, answered by the worker owning the user's partition."""

    async def get(self, request: web.Request, user_id: str) -> web.Response:
        rt = runtime_of(self)

        def parse() -> tuple[ql.Query, str, Local, Full]:
            query = ql.parse_user(user_id, _params(request), int(time.time() * 1000))

            async def full(windows: list[dict[str, Any]], _: dict[str, Any]
                           ) -> dict[str, Any]:
                return await full_answer(rt, query, windows)

            return query, user_id, lambda p: (local_user(rt, query, p), {}), full

        return await _user_view(self, request, parse)


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

        if defn.window == "session" and _params(request).get("user_id"):
            # one user's sessions: live from the owner's state, like /users/{id}/sessions
            def per_user() -> tuple[ql.Query, str, Local, Full]:
                query = parse()
                user_id = query.key["user_id"]
                assert user_id is not None
                return (query, user_id, *session_answers(rt, query))

            return await _user_view(self, request, per_user)
        return await _stats_view(self, request, parse)


@blueprint.route("/api/v1/users/{user_id}/sessions", name="user_sessions")
class UserSessionsView(web.View):
    """One user's sessions starting in the range, answered by the worker owning the
    user's partition: live ones from its state over the MySQL rows."""

    async def get(self, request: web.Request, user_id: str) -> web.Response:
        rt = runtime_of(self)

        def parse() -> tuple[ql.Query, str, Local, Full]:
            query = ql.parse_sessions(user_id, _params(request), int(time.time() * 1000))
            return (query, user_id, *session_answers(rt, query))

        return await _user_view(self, request, parse)


@blueprint.route("/api/openapi.json", name="openapi")
class OpenAPIView(web.View):
    """The OpenAPI 3 description of every HTTP endpoint (public: no token needed)."""

    async def get(self, request: web.Request) -> web.Response:
        rt = runtime_of(self)
        return self.json(openapi_document(rt.settings.kafka.sources, rt.specs.aggregates))
