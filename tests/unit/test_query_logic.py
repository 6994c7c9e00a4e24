"""The query API's pure logic: parameters, ranges, windows out of state, the merge."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner

from collector.aggregates import USER_SESSIONS
from collector.engine.windows import WindowSpec, new_segment, new_stats
from collector.web import query_logic as ql
from collector.web.openapi import openapi_document

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SOURCES = ["mobile", "web"]
MIN = 60_000
T0 = NOW


def test_times_rfc3339_and_epoch_ms() -> None:
    assert ql.parse_time("2026-01-01T00:00:00Z", "from") == NOW
    assert ql.parse_time("2026-01-01T01:00:00+01:00", "from") == NOW
    assert ql.parse_time(str(NOW), "to") == NOW
    assert ql.rfc3339(NOW + 5) == "2026-01-01T00:00:00.005Z"
    for bad in ("2026-01-01T00:00:00", "2026-01-01", "yesterday", "1e9", "-5", "", "2026-02-30T"
                "00:00:00Z"):
        with pytest.raises(ql.ParamError) as err:
            ql.parse_time(bad, "from")
        assert err.value.body()["field"] == "from"


def test_range_defaults_and_limits() -> None:
    assert ql.parse_range({}, NOW) == (NOW - 3_600_000, NOW)
    assert ql.parse_range({"to": str(NOW - MIN)}, NOW) == (NOW - MIN - 3_600_000, NOW - MIN)
    assert ql.parse_range({"from": "0", "to": str(MIN)}, NOW) == (0, MIN)
    with pytest.raises(ql.ParamError, match="before"):
        ql.parse_range({"from": str(NOW), "to": str(NOW)}, NOW)
    with pytest.raises(ql.ParamError, match="days"):
        ql.parse_range({"from": "0", "to": str(ql.MAX_RANGE_MS + 1)}, NOW)
    assert ql.parse_range({"from": "0", "to": str(ql.MAX_RANGE_MS)}, NOW)


def test_event_params() -> None:
    q = ql.parse_events({"source": "web", "type": "click"}, SOURCES, NOW)
    assert q.table == "event_stats" and q.key == {"source": "web", "type": "click"}
    assert ql.parse_events({}, SOURCES, NOW).key == {"source": None, "type": None}
    for params, field in (({"source": "tv"}, "source"), ({"type": "Click"}, "type"),
                          ({"type": "a b"}, "type"), ({"from": "x"}, "from")):
        with pytest.raises(ql.ParamError) as err:
            ql.parse_events(params, SOURCES, NOW)
        assert err.value.field == field


def test_segment_and_user_params() -> None:
    assert ql.parse_segments({"segment": "pro users", "country": "DE"}, NOW).key == {
        "segment": "pro users", "country": "DE"}
    for bad in ("a|b", "x" * 65, "tab\there"):
        with pytest.raises(ql.ParamError):
            ql.parse_segments({"segment": bad}, NOW)
    assert ql.parse_user("u-1@x", {}, NOW).key == {"user_id": "u-1@x"}
    for bad in ("", "a b", "x" * 65, "ü"):
        with pytest.raises(ql.ParamError) as err:
            ql.parse_user(bad, {}, NOW)
        assert err.value.field == "user_id"


def test_partitions_param() -> None:
    assert ql.parse_partitions(None, 4) is None
    assert ql.parse_partitions("3,1,1", 4) == [1, 3]
    for bad in ("x", "4", "-1"):
        with pytest.raises(ql.ParamError):
            ql.parse_partitions(bad, 4)


def test_user_partition_is_the_producers_partitioner() -> None:
    partitioner = DefaultPartitioner()
    for uid in ("u1", "alice", "user:42", "x" * 64):
        assert ql.user_partition(uid, 4) == partitioner(uid.encode(), [0, 1, 2, 3], [0, 1, 2, 3])


def test_user_window_starts_cover_the_range() -> None:
    spec = WindowSpec.tumbling(60, 60)
    q = ql.parse_user("u1", {"from": str(NOW - 90_000), "to": str(NOW + 1)}, NOW)
    assert list(ql.user_window_starts(q, spec)) == [NOW - MIN, NOW]
    q = ql.parse_user("u1", {"from": str(NOW - MIN), "to": str(NOW)}, NOW)
    assert list(ql.user_window_starts(q, spec)) == [NOW - MIN]


def stats(count: int, value: float | None = None) -> dict[str, Any]:
    agg = new_stats()
    agg.update(count=count, value_count=1 if value is not None else 0,
               value_sum=value or 0.0, value_min=value, value_max=value, latest=1)
    return agg


def merged(partition: int, table: str, key: list[str], ws: int,
           *slots: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return (f"m|{table}|{'|'.join(key)}|{ws}", {
        "kind": "m", "partition": partition, "table": table, "key": key, "ws": ws,
        "slots": {f"t|{i}": s for i, s in enumerate(slots)}})


def test_merged_windows_filter_combine_and_finality() -> None:
    spec = WindowSpec.tumbling(60, 60)
    items = [
        merged(0, "event_stats", ["web", "click"], NOW, stats(2, 1.5), stats(3, 4.0)),
        merged(1, "event_stats", ["web", "view"], NOW - MIN, stats(1)),
        merged(1, "event_stats", ["mobile", "click"], NOW - MIN, stats(1)),
        merged(2, "event_stats", ["web", "click"], NOW - 2 * 3_600_000, stats(1)),  # range
        merged(3, "event_stats", ["web", "click"], NOW - MIN, stats(9)),  # not asked
        merged(0, "segment_stats", ["pro", "DE"], NOW, new_segment()),  # other table
        ("k|0|t|0", {"kind": "k", "partition": 0, "slot": "t|0", "closed": 5}),
    ]
    q = ql.parse_events({"source": "web"}, SOURCES, NOW + MIN)
    marks = {0: 0, 1: NOW + 2 * MIN}  # partition 1 closed past end + grace
    out = ql.merged_windows(items, q, spec, [0, 1, 2], marks.__getitem__)
    assert [(w["window_start_ms"], w["key"], w["final"]) for w in out] == [
        (NOW - MIN, {"source": "web", "type": "view"}, True),
        (NOW, {"source": "web", "type": "click"}, False),
    ]
    assert out[1]["values"] == {"count": 5, "value_count": 2, "value_sum": 5.5,
                                "value_min": 1.5, "value_max": 4.0}
    assert out[1]["window_end"] == ql.rfc3339(NOW + MIN)
    body = ql.response(q, spec, out)
    assert body["table"] == "event_stats" and body["complete"] is True
    assert (body["from"], body["to"], body["window_seconds"]) == (
        ql.rfc3339(NOW - 3_600_000 + MIN), ql.rfc3339(NOW + MIN), 60)


def window(ws: int, key: dict[str, str], count: int, final: bool) -> dict[str, Any]:
    return {"window_start_ms": ws, "key": key, "values": {"count": count}, "final": final}


def test_gather_sorts_and_dedupes() -> None:
    a, b = {"source": "a", "type": "x"}, {"source": "b", "type": "x"}
    one = [window(NOW, b, 1, False), window(NOW + MIN, a, 2, False)]
    two = [window(NOW, a, 3, False), window(NOW, b, 1, True)]
    out = ql.gather([one, two, []])
    assert [(w["window_start_ms"], w["key"]["source"], w["final"]) for w in out] == [
        (NOW, "a", False), (NOW, "b", True), (NOW + MIN, "a", False)]
    assert ql.gather([]) == []


def test_user_window_shape() -> None:
    spec = WindowSpec.tumbling(60, 60)
    agg = {"count": 2, "types": ["buy", "click"], "first_ts": NOW, "last_ts": NOW + 5,
           "latest": NOW + 5}
    assert ql.window("user_activity", spec, ["u1"], NOW, agg, False) == {
        "window_start": "2026-01-01T00:00:00.000Z", "window_end": "2026-01-01T00:01:00.000Z",
        "window_start_ms": NOW, "key": {"user_id": "u1"},
        "values": {"count": 2, "types": ["buy", "click"], "first_ts": NOW, "last_ts": NOW + 5,
                   "types_truncated": False},
        "final": False}


def test_openapi_document_is_json_and_complete() -> None:
    import json

    doc = json.loads(json.dumps(openapi_document(SOURCES)))
    assert doc["openapi"] == "3.1.0"
    assert {"/api/v1/stats/events", "/api/v1/segments", "/api/v1/users/{user_id}/activity",
            "/api/v1/events/{source}", "/metrics", "/livez", "/readyz", "/",
            "/api/openapi.json"} <= set(doc["paths"])
    for path in doc["paths"].values():
        for op in path.values():
            assert "200" in op["responses"] or "202" in op["responses"]


def naive(*parts: int) -> datetime:
    """A naive UTC datetime, as the MySQL driver returns DATETIME columns."""
    return datetime(*parts, tzinfo=UTC).replace(tzinfo=None)  # type: ignore[misc]


def test_history_sql_filters_and_parameters() -> None:
    q = ql.parse_events({"source": "web", "from": str(NOW), "to": str(NOW + MIN)}, SOURCES,
                        NOW)
    sql, args = ql.history_sql(q, 60)
    assert sql.startswith("SELECT window_start, source, type, count, value_count, value_sum, "
                          "value_min, value_max, final FROM event_stats WHERE ")
    assert "source = %s" in sql and "type = %s" not in sql and "LIMIT" in sql
    assert args == [60, naive(2026, 1, 1), naive(2026, 1, 1, 0, 1), "web"]
    sql, args = ql.history_sql(ql.parse_user("u1", {}, NOW), 60)
    assert "FROM user_activity" in sql and "user_id = %s" in sql and args[-1] == "u1"


def test_history_rows_become_windows() -> None:
    spec = WindowSpec.tumbling(60, 60)
    row = (naive(2026, 1, 1), "web", "click", 3, 1, 2.5, 2.5, 2.5, 1)
    assert ql.history_window("event_stats", spec, row) == {
        "window_start": "2026-01-01T00:00:00.000Z", "window_end": "2026-01-01T00:01:00.000Z",
        "window_start_ms": NOW, "key": {"source": "web", "type": "click"},
        "values": {"count": 3, "value_count": 1, "value_sum": 2.5, "value_min": 2.5,
                   "value_max": 2.5}, "final": True}
    row = (naive(2026, 1, 1), "web", "view", 1, 0, 0.0, None, None, 0)
    assert ql.history_window("event_stats", spec, row)["values"]["value_min"] is None
    row = (naive(2026, 1, 1), "u1", 2, "buy,click", naive(2026, 1, 1, 0, 0, 1),
           naive(2026, 1, 1, 0, 0, 2, 500_000), 1, 0)
    got = ql.history_window("user_activity", spec, row)
    assert got["values"] == {"count": 2, "types": ["buy", "click"], "first_ts": NOW + 1000,
                             "last_ts": NOW + 2500, "types_truncated": True}
    assert got["final"] is False


def test_overlay_prefers_live_windows() -> None:
    a = {"source": "a", "type": "x"}
    old = [window(NOW - MIN, a, 4, True), window(NOW, a, 1, False)]
    live = [window(NOW, a, 2, False), window(NOW + MIN, a, 1, False)]
    out = ql.overlay(old, live)
    assert [(w["window_start_ms"], w["values"]["count"]) for w in out] == [
        (NOW - MIN, 4), (NOW, 2), (NOW + MIN, 1)]


def test_openapi_describes_every_registered_route() -> None:
    import importlib
    import pkgutil

    import collector.web

    routes = set()
    for info in pkgutil.iter_modules(collector.web.__path__, "collector.web."):
        blueprint = getattr(importlib.import_module(info.name), "blueprint", None)
        if blueprint is not None:
            routes |= {route.uri for route in blueprint.routes}
    assert "/api/v1/users/{user_id}/activity" in routes
    assert routes <= set(openapi_document(SOURCES)["paths"])


def _sessions() -> list[tuple[dict[str, Any], bool]]:
    out = []
    for start, count, fin in ((T0, 3, True), (T0 + 3_600_000, 2, False)):
        agg = USER_SESSIONS.new()
        agg.update(count=count, types=["click"], first_ts=start, last_ts=start + 60_000,
                   latest=start + 60_000)
        out.append((agg, fin))
    return out


def test_sessions_live_history_and_markers() -> None:
    spec = WindowSpec.sessions(1800, 60, 3600)
    query = ql.parse_sessions("u1", {"from": str(T0), "to": str(T0 + 7_200_000)}, T0)
    assert query.table == "user_sessions" and query.key == {"user_id": "u1"}
    with pytest.raises(ql.ParamError):
        ql.parse_sessions("bad id!", {}, T0)
    # the second session (last at T0+61 min) is final once the close mark passed
    # last + gap + grace; the first was written final before
    live = ql.session_windows(_sessions(), "u1", query, spec, T0 + 3_660_000)
    moved = [T0 + 3_700_000]  # a marker's start
    assert [(w["window_start_ms"], w["values"]["count"], w["final"]) for w in live] == [
        (T0, 3, True), (T0 + 3_600_000, 2, False)]
    assert live[0]["window_end"] == ql.rfc3339(T0 + 60_000)  # a session ends at its last event
    assert ql.session_windows([], "u1", query, spec, 0) == []
    # history: markers are filtered in SQL; a row at a moved start or inside a live session
    # is an older version and gives way
    sql, _ = ql.history_sql(query, spec.seconds)
    assert "merged_into IS NULL" in sql
    row = (datetime.fromtimestamp((T0 + 3_700_000) / 1000, UTC).replace(tzinfo=None), "u1",
           4, "click", datetime.fromtimestamp((T0 + 3_760_000) / 1000, UTC).replace(
               tzinfo=None), 0, 1)
    old = ql.history_window("user_sessions", spec, row)
    assert old["values"] == {"count": 4, "types": ["click"], "first_ts": T0 + 3_700_000,
                             "last_ts": T0 + 3_760_000, "types_truncated": False}
    inside = {**old, "window_start_ms": T0 + 30_000}
    elsewhere = {**old, "window_start_ms": T0 + 5_000_000}
    got = ql.overlay_sessions([old, inside, elsewhere], live, moved)
    assert [w["window_start_ms"] for w in got] == [T0, T0 + 3_600_000, T0 + 5_000_000]
