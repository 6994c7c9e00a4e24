"""Aggregates as definitions: the measures, the specialised folds, what derives from the
definitions (state, sinks, queries, schema), and a new aggregate added by definition only."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest

from collector.aggregates import (
    BY_NAME,
    DEFINITIONS,
    EVENT_STATS,
    SEGMENT_STATS,
    USER_ACTIVITY,
    Aggregate,
    Column,
    Count,
    InfluxField,
    KeyField,
    Max,
    Sum,
    WindowSpec,
)
from collector.aggregates.definition import epoch_ms, naive_utc
from collector.config import load_settings
from collector.db.migrate import Migration, load_migrations
from collector.db.schema import migrated_schema, schema_drift
from collector.engine.aggregator import Aggregator
from collector.engine.processor import RawRecord
from collector.engine.sinkhub import SinkHub
from collector.engine.specs import Specs, required_fields
from collector.engine.state import DictState
from collector.sinks.influx import to_point
from collector.sinks.mysql import VALUE_COLUMNS, row_params, upsert_sql
from collector.sinks.rows import KEY_COLUMNS, Row
from collector.web.openapi import openapi_document
from collector.web.query_logic import HISTORY_COLUMNS, KEY_NAMES, history_window

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def events(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    return [{"ts": T0 + rnd.randrange(60_000), "value": rnd.choice([None, -2.5, 0.0, 1.0, 7.5]),
             "type": rnd.choice(["a", "b", "c", "d", "e"]), "source": "web",
             "user_id": "u1", "event_id": f"e{i}"} for i in range(n)]


def generic(defn: Aggregate) -> Aggregate:
    """The same definition folded measure by measure (no specialised fold)."""
    return dataclasses.replace(defn, fold_factory=None)


# ------------------------------------------------------------------ measures and state


def test_the_empty_states_are_the_wire_format() -> None:
    assert EVENT_STATS.new() == {"count": 0, "value_count": 0, "value_sum": 0.0,
                                 "value_min": None, "value_max": None, "latest": 0}
    assert SEGMENT_STATS.new() == {"count": 0, "value_sum": 0.0, "latest": 0}
    assert USER_ACTIVITY.new() == {"count": 0, "types": [], "first_ts": None,
                                   "last_ts": None, "latest": 0}
    a, b = USER_ACTIVITY.new(), USER_ACTIVITY.new()
    a["types"].append("x")
    assert b["types"] == []  # no shared list between windows


def test_measures_fold_merge_and_result() -> None:
    stats = generic(EVENT_STATS).compile()
    agg = EVENT_STATS.new()
    for value, ts in ((2.0, T0 + 10), (None, T0 + 5), (-1.0, T0 + 7)):
        stats(agg, {"value": value}, ts)
    assert EVENT_STATS.row_values(agg) == {"count": 3, "value_count": 2, "value_sum": 1.0,
                                           "value_min": -1.0, "value_max": 2.0}
    assert agg["latest"] == T0 + 10
    other = EVENT_STATS.new()
    stats(other, {"value": 9.0}, T0 + 20)
    total = EVENT_STATS.combine([agg, other])
    assert EVENT_STATS.row_values(total) == {"count": 4, "value_count": 3, "value_sum": 10.0,
                                             "value_min": -1.0, "value_max": 9.0}
    assert total["latest"] == T0 + 20
    user = USER_ACTIVITY.bound(2)
    fold = generic(user).compile()
    agg = user.new()
    for etype, ts in (("x", T0 + 5), ("a", T0 + 3), ("x", T0 + 9), ("z", T0 + 1)):
        fold(agg, {"type": etype}, ts)
    assert agg["types"] == ["a", "x"] and agg["truncated"] is True
    assert user.row_values(agg) == {"count": 4, "types": ["a", "x"], "first_ts": T0 + 1,
                                    "last_ts": T0 + 9, "types_truncated": True}


@pytest.mark.parametrize("defn", DEFINITIONS, ids=lambda d: d.name)
@pytest.mark.parametrize("limit", [2, 30])
def test_each_specialised_fold_equals_folding_its_measures(defn: Aggregate, limit: int) -> None:
    fast, slow = defn.bound(limit).compile(), generic(defn.bound(limit)).compile()
    assert defn.fold_factory is not None
    a, b = defn.new(), defn.new()
    for e in events(500):
        fast(a, e, e["ts"])
        slow(b, e, e["ts"])
    assert a == b and list(a) == list(b)  # same values, same keys in the same order


@pytest.mark.parametrize("defn", DEFINITIONS, ids=lambda d: d.name)
def test_merging_partials_equals_folding_everything_once(defn: Aggregate) -> None:
    fold = defn.compile()
    whole, parts = defn.new(), [defn.new() for _ in range(3)]
    for i, e in enumerate(events(300, seed=3)):
        fold(whole, e, e["ts"])
        fold(parts[i % 3], e, e["ts"])
    assert defn.combine(parts) == whole


def test_a_fold_written_for_other_measures_refuses_to_start() -> None:
    changed = dataclasses.replace(SEGMENT_STATS, measures=(Count("count"),))
    with pytest.raises(ValueError, match=r"segment_stats: its fold is written for"):
        changed.compile()


# ------------------------------------------------------------------ derivations


def test_keys_columns_and_history_derive_from_the_definitions() -> None:
    assert KEY_COLUMNS == KEY_NAMES == {"event_stats": ("source", "type"),
                                        "segment_stats": ("segment", "country"),
                                        "user_activity": ("user_id",),
                                        "user_sessions": ("user_id",)}
    assert VALUE_COLUMNS == {
        "event_stats": ("count", "value_count", "value_sum", "value_min", "value_max",
                        "revision"),
        "segment_stats": ("count", "value_sum", "revision"),
        "user_activity": ("count", "distinct_types", "types", "types_truncated",
                          "first_event_at", "last_event_at", "revision"),
        "user_sessions": ("session_end", "duration_seconds", "count", "distinct_types",
                          "types", "types_truncated", "merged_into", "revision"),
    }
    assert HISTORY_COLUMNS["user_activity"] == ("count", "types", "first_event_at",
                                                "last_event_at", "types_truncated")
    assert upsert_sql("segment_stats").startswith(
        "INSERT INTO segment_stats (window_start, window_seconds, segment, country, count, "
        "value_sum, revision, final, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)")


def test_sink_params_points_and_history_round_trip() -> None:
    values = {"count": 3, "types": ["b", "a", "b"], "first_ts": T0 + 1000,
              "last_ts": T0 + 2500, "types_truncated": False}
    row = Row("user_activity", T0, 60, ("u1",), values, True, T0 + 2500, 2)
    updated = naive_utc(T0 + 86_400_000)
    assert row_params(row, updated) == (
        naive_utc(T0), 60, "u1", 3, 2, "a,b", False, naive_utc(T0 + 1000),
        naive_utc(T0 + 2500), 2, True, updated)
    # what the history SELECT reads back is the window's values again
    selected = (naive_utc(T0), "u1", 3, "a,b", naive_utc(T0 + 1000), naive_utc(T0 + 2500),
                0, 1)
    got = history_window("user_activity", WindowSpec.tumbling(60, 60), selected)
    assert got["values"] == {"count": 3, "types": ["a", "b"], "first_ts": T0 + 1000,
                             "last_ts": T0 + 2500, "types_truncated": False}
    assert epoch_ms(naive_utc(T0 + 7)) == T0 + 7
    stats = Row("event_stats", T0, 60, ("web", "click"),
                {"count": 2, "value_count": 2, "value_sum": 3.0, "value_min": 1.0,
                 "value_max": 2.0}, False, T0, 0)
    assert to_point(stats).to_line_protocol() == (
        "event_stats,source=web,type=click count=2i,final=false,max=2,mean=1.5,min=1,"
        "revision=0i,sum=3,value_count=2i 1767225600000")
    with pytest.raises(ValueError, match="user_activity rows are not written to InfluxDB"):
        to_point(row)


class _Sink:
    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: list[Row] = []

    def add(self, rows: list[Row]) -> None:
        self.rows += rows


def test_the_hub_routes_rows_by_their_definitions_sinks() -> None:
    mysql, influx = _Sink("mysql"), _Sink("influxdb")
    hub = SinkHub([mysql, influx], interval=1.0)  # type: ignore[list-item]
    rows = [Row(name, T0, 60, ("k",) * len(BY_NAME[name].keys), {}, False, T0)
            for name in ("user_activity", "event_stats", "segment_stats")]
    rows.append(Row("unknown", T0, 60, ("k",), {}, False, T0))
    hub.add(rows)
    assert [r.table for r in mysql.rows] == ["user_activity", "event_stats", "segment_stats",
                                             "unknown"]
    assert [r.table for r in influx.rows] == ["event_stats", "segment_stats", "unknown"]


def test_the_openapi_query_endpoints_come_from_the_definitions() -> None:
    paths = openapi_document(["web"])["paths"]
    for defn in DEFINITIONS:
        op = paths[defn.route]["get"]
        assert op["summary"] == f"{defn.name} windows ({defn.window}) {defn.summary}"
        item = op["responses"]["200"]["content"]["application/json"]["schema"][
            "properties"]["windows"]["items"]["properties"]
        assert list(item["values"]["properties"]) == list(defn.outputs)
        assert list(item["key"]["properties"]) == list(defn.key_names)
    user = paths["/api/v1/users/{user_id}/activity"]["get"]["parameters"][0]
    assert user["in"] == "path" and user["schema"]["pattern"] == "^[A-Za-z0-9_.:@-]{1,64}$"


def test_windows_come_from_settings_by_kind() -> None:
    settings = load_settings()
    specs = Specs.from_settings(settings)
    w = settings.windows
    assert specs.for_table("event_stats").size_ms == w.tumbling_seconds * 1000
    assert specs.for_table("user_activity") is specs.user is specs.tumbling
    assert specs.for_table("segment_stats").step_ms == w.hopping_step_seconds * 1000
    assert required_fields(DEFINITIONS) == ("ts", "event_id", "user_id", "source", "type")
    with pytest.raises(ValueError, match="exactly one per-user aggregate"):
        Specs(specs.tumbling, specs.hopping,
              aggregates=(USER_ACTIVITY, dataclasses.replace(USER_ACTIVITY, name="again")))


# ------------------------------------------------------------------ schema


def test_the_migrations_create_every_column_of_every_definition() -> None:
    assert schema_drift() == []


def test_a_definition_without_its_migration_fails_naming_the_column() -> None:
    extra = dataclasses.replace(SEGMENT_STATS, measures=(*SEGMENT_STATS.measures,
                                                         Max("value_max", "value")),
                                columns=(*SEGMENT_STATS.columns,
                                         Column("value_max", "DOUBLE", lambda v: v["value_max"],
                                                nullable=True)))
    assert schema_drift([extra]) == [
        "segment_stats.value_max: in the definition, in no migration"]
    retyped = dataclasses.replace(SEGMENT_STATS, keys=(
        KeyField("segment", "VARCHAR(64)", "unknown"), KeyField("country", "VARCHAR(2)")))
    assert schema_drift([retyped]) == [
        "segment_stats.country: the definition says VARCHAR(2) NOT NULL, the migrations "
        "VARCHAR(8) NOT NULL"]
    missing = dataclasses.replace(SEGMENT_STATS, name="country_stats")
    assert schema_drift([missing]) == ["country_stats: no migration creates the table"]
    dropped = [*load_migrations(), Migration(99, "0099_drop", (
        "ALTER TABLE segment_stats DROP COLUMN value_sum",
        "ALTER TABLE segment_stats ADD COLUMN note VARCHAR(16) NULL COMMENT 'a, b'"))]
    assert migrated_schema(dropped)["segment_stats"]["note"] == ("VARCHAR(16)", True)
    assert schema_drift(migrations=dropped) == [
        "segment_stats.value_sum: in the definition, in no migration",
        "segment_stats.note: in the migrations, not in the definition"]


# ------------------------------------------------------------------ a new aggregate


COUNTRY_STATS = Aggregate(
    name="country_stats",
    keys=(KeyField("country", "VARCHAR(8)", default="unknown"),),
    window="hopping",
    measures=(Count("count"), Sum("value_sum", "value"), Max("value_max", "value")),
    columns=(Column("count", "BIGINT", lambda v: int(v["count"])),),
    measurement="country_stats",
    influx_fields=(InfluxField("count", lambda v: int(v["count"])),),
)


def test_a_new_aggregate_needs_only_its_definition() -> None:
    """Generic fold (no specialised one), hopping windows, partials per input slot."""
    base = Specs.from_settings(load_settings())
    specs = Specs(WindowSpec.tumbling(60, 60), WindowSpec.hopping(120, 60, 60),
                  aggregates=(*DEFINITIONS, COUNTRY_STATS))
    assert base.aggregates == DEFINITIONS
    agg = Aggregator(DictState(), specs, clock=lambda: (T0 + 600_000) / 1000)
    batch = [(RawRecord("raw.web", 0, i, None, None),
              {"ts": T0 + 30_000 + i, "value": float(i), "type": "a", "source": "web",
               "user_id": f"u{i}", "event_id": f"e{i}", **({"country": "DE"} if i else {})})
             for i in range(4)]
    assert agg.apply(batch) == []
    got = {(v["key"][0], v["ws"]): COUNTRY_STATS.row_values(v["agg"])
           for v in agg.state.data.values() if v.get("table") == "country_stats"}
    assert got == {
        ("unknown", T0 - 60_000): {"count": 1, "value_sum": 0.0, "value_max": 0.0},
        ("unknown", T0): {"count": 1, "value_sum": 0.0, "value_max": 0.0},
        ("DE", T0 - 60_000): {"count": 3, "value_sum": 6.0, "value_max": 3.0},
        ("DE", T0): {"count": 3, "value_sum": 6.0, "value_max": 3.0},
    }
