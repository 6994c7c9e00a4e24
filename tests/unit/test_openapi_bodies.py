"""The bodies the real code builds conform to the OpenAPI document's schemas.

The document's component schemas come from pydantic models (``collector.web.schemas``)
and forbid undocumented fields, so a handler that adds or renames a field fails here
until the model says so.  Validated with ``jsonschema`` (OpenAPI 3.1 is JSON Schema
2020-12); ``tests/e2e/test_query_api.py`` does the same with a worker's HTTP answers.
"""

from __future__ import annotations

import time
from typing import Any

import jsonschema
import pytest

from collector.aggregates import DEFINITIONS
from collector.engine.delivery import TopicHealth
from collector.engine.windows import WindowSpec, add_activity, add_segment, add_stats
from collector.models.contract import Limits
from collector.observability import health
from collector.observability.lag import PartitionLag
from collector.sinks.base import SinkHealth
from collector.web import query_logic as ql
from collector.web.ingest_logic import Planner
from collector.web.openapi import openapi_document

SOURCES = ["web", "mobile"]
NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DOC = openapi_document(SOURCES)


def check(body: Any, path: str, status: str, method: str = "get") -> None:
    """Validate ``body`` against the response schema of ``method path`` ``status``."""
    schema = DOC["paths"][path][method]["responses"][status]["content"]["application/json"]
    root = {"components": DOC["components"], **schema["schema"]}
    jsonschema.Draft202012Validator(root).validate(body)


def fold(table: str, value: float | None) -> dict[str, Any]:
    agg = DEFINITIONS[[d.name for d in DEFINITIONS].index(table)].new()
    if table == "event_stats":
        add_stats(agg, value, NOW + 1)
    elif table == "segment_stats":
        add_segment(agg, None, NOW + 1)
    else:
        add_activity(agg, "click", NOW + 1, 30)
    return agg


@pytest.mark.parametrize("defn", DEFINITIONS, ids=lambda d: d.name)
def test_a_query_answer_fits_its_path(defn: Any) -> None:
    spec = WindowSpec.tumbling(60, 60)
    query = ql.parse_events({"from": str(NOW), "to": str(NOW + 60_000)}, SOURCES, NOW)
    key = ["web", "click"] if len(defn.key_names) == 2 else ["u1"]
    key = key[:len(defn.key_names)]
    window = ql.window(defn.name, spec, key, NOW, fold(defn.name, 2.5), False)
    valueless = ql.window(defn.name, spec, key, NOW, fold(defn.name, None), True)  # min: null
    check(ql.response(query, spec, [window, valueless]), defn.route, "200")
    check(ql.response(query, spec, [], complete=False, incomplete="mysql down"), defn.route,
          "200")
    with pytest.raises(jsonschema.ValidationError, match="undocumented"):
        check(ql.response(query, spec, [window], undocumented=1), defn.route, "200")


def test_a_query_error_fits_the_error_schema() -> None:
    with pytest.raises(ql.ParamError) as caught:
        ql.parse_events({"from": "yesterday"}, SOURCES, NOW)
    check(caught.value.body(), "/api/v1/stats/events", "400")


def test_an_ingest_answer_fits_its_path() -> None:
    planner = Planner("web", Limits(), int(time.time() * 1000), max_echoed=1)
    good = {"event_id": "e1", "user_id": "u1", "type": "click", "ts": int(time.time() * 1000)}
    planner.add([good, {"user_id": 3}, {}])
    answer = planner.finish().answer()
    assert answer["accepted"] == 1 and answer["rejected_total"] == 2
    check(answer, "/api/v1/events/{source}", "202", "post")
    check({"error": "broker unavailable; nothing was accepted", "accepted": 0},
          "/api/v1/events/{source}", "503", "post")


def test_health_bodies_fit_their_paths() -> None:
    thresholds = health.Thresholds(stall_s=30, sink_failing_s=60)
    now = time.time()
    sinks = {"mysql": SinkHealth(False, now - 120, "down", 12, now - 130),
             "influxdb": SinkHealth(True, None, None, 0, now)}
    ok, body = health.readiness(
        recovered=False, rebalancing=True, now=now, thresholds=thresholds, sink_health=sinks,
        stalled=[PartitionLag("t.raw.web", 0, 10, 4, 6, 45.0)],
        producing={"t.enriched": TopicHealth(now - 30, "timeout", 3)})
    assert not ok and len(body["reasons"]) == 4
    check(body, "/readyz", "503")
    ok, body = health.sink_status(sinks, now, thresholds)
    assert not ok
    check(body, "/healthz/sinks", "503")
