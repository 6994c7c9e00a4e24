"""Aggregates declared in configuration: parsing and validation (INI and environment),
the definitions built from them, their SQL, the schema check, and the in-memory
pipeline (combiner -> partials -> merge) against the independent group-by oracle."""

from __future__ import annotations

import os
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from collector.aggregates import DEFINITIONS
from collector.aggregates.configured import build, configured_aggregates
from collector.aggregates.fields import DistinctCount, label, reader
from collector.config import Settings, SettingsError, load_settings
from collector.config.aggregates import RESERVED, AggregateSettings
from collector.config.ini import CONFIG_ENV
from collector.db.tables import canonical_type, create_sql, ident, mismatches
from collector.engine.aggregator import Specs
from collector.engine.specs import plan
from collector.sinks import Row
from collector.sinks.influx import to_point
from collector.sinks.mysql import row_params, upsert_sql
from collector.web import query_logic as ql
from collector.web.openapi import openapi_document
from tests.oracle import group_by_oracle
from tests.unit.test_windows import PARTS, T0, Clock, Loop, feed

ENV = "COLLECTOR_AGGREGATES__"


@pytest.fixture(autouse=True)
def _no_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    for key in [k for k in os.environ if k.startswith(ENV)]:
        monkeypatch.delenv(key)


def from_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> Settings:
    for key, value in values.items():
        monkeypatch.setenv(ENV + key, value)
    return load_settings()


def from_ini(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "collector.ini"
    path.write_text(text)
    monkeypatch.setenv(CONFIG_ENV, str(path))
    return load_settings()


def test_ini_and_env_declare_the_same_aggregate(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    ini = from_ini(monkeypatch, tmp_path, "[aggregate.plans]\ngroup_by = source, "
                   "properties.plan\nmeasures = count, sum(value), users=distinct(user_id)\n")
    monkeypatch.delenv(CONFIG_ENV)
    env = from_env(monkeypatch, PLANS__GROUP_BY="source,properties.plan",
                   PLANS__MEASURES="count,sum(value),users=distinct(user_id)")
    assert ini.aggregates == env.aggregates
    agg = ini.aggregates["plans"]
    assert (agg.window, agg.sinks) == ("tumbling", ["mysql", "influxdb"])
    assert [m.name for m in agg.parsed_measures()] == ["count", "sum_value", "users"]


def test_env_overrides_one_key_of_an_ini_declaration(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.setenv(ENV + "PLANS__WINDOW", "hopping")
    monkeypatch.setenv(ENV + "PLANS__SIZE_SECONDS", "120")
    got = from_ini(monkeypatch, tmp_path, "[aggregate.plans]\ngroup_by = type\n"
                   "window = tumbling\n").aggregates["plans"]
    assert (got.group_by, got.window, got.size_seconds) == (["type"], "hopping", 120)


#: (env suffix -> value) of a bad declaration of aggregate "x", the field its message
#: must name, and a part of the message
INVALID = [
    ({"GROUP_BY": "source,colour"}, "aggregates.x.group_by", "unknown field 'colour'"),
    ({"GROUP_BY": "user_id"}, "aggregates.x.group_by", "distinct(user_id)"),
    ({"GROUP_BY": "properties.Plan"}, "aggregates.x.group_by", "property key 'Plan'"),
    ({"GROUP_BY": "properties.a,properties.b,properties.c,properties.d"},
     "aggregates.x.group_by", "at most 760"),
    ({"GROUP_BY": "type,type"}, "aggregates.x.group_by", "unique"),
    ({"GROUP_BY": ""}, "aggregates.x.group_by", "at least one field"),
    ({"GROUP_BY": "type", "MEASURES": "count,median(value)"}, "aggregates.x.measures",
     "unknown measure 'median'"),
    ({"GROUP_BY": "type", "MEASURES": "sum"}, "aggregates.x.measures", "sum needs a field"),
    ({"GROUP_BY": "type", "MEASURES": "count(value)"}, "aggregates.x.measures",
     "count takes no field"),
    ({"GROUP_BY": "type", "MEASURES": "max(type)"}, "aggregates.x.measures",
     "value or properties.<key>"),
    ({"GROUP_BY": "type", "MEASURES": "distinct(ts)"}, "aggregates.x.measures",
     "distinct(ts): unknown field"),
    ({"GROUP_BY": "type", "MEASURES": "Bad-Name=count"}, "aggregates.x.measures",
     "measure name 'Bad-Name'"),
    ({"GROUP_BY": "type", "MEASURES": "count,count"}, "aggregates.x", "also measure count"),
    ({"GROUP_BY": "type", "MEASURES": "final=count"}, "aggregates.x",
     "one every aggregate has"),
    ({"GROUP_BY": "type", "MEASURES": "type=count"}, "aggregates.x", "also group_by type"),
    ({"GROUP_BY": "type", "WINDOW": "sliding"}, "aggregates.x.window", "tumbling"),
    ({"GROUP_BY": "type", "WINDOW": "session"}, "aggregates.x.group_by",
     "leave group_by empty"),
    ({"MEASURES": "count"}, "aggregates.x.group_by", "at least one field is needed"),
    ({"WINDOW": "session", "GAP_SECONDS": "30"}, "aggregates.x.gap_seconds",
     "less than windows.tumbling_seconds 60"),
    ({"GROUP_BY": "type", "GAP_SECONDS": "600"}, "aggregates.x",
     "gap_seconds is for session windows only"),
    ({"WINDOW": "session", "SINKS": "influxdb"}, "aggregates.x",
     "sinks: a session window needs mysql"),
    ({"WINDOW": "session", "SIZE_SECONDS": "600"}, "aggregates.x",
     "not for session windows"),
    ({"WINDOW": "session", "MEASURES": "session_end=max(value)"}, "aggregates.x",
     "also the session window's"),
    ({"WINDOW": "session", "MEASURES": "merged_into=count"}, "aggregates.x",
     "also the session window's"),
    ({"GROUP_BY": "type", "STEP_SECONDS": "30"}, "aggregates.x",
     "step_seconds is for hopping windows only"),
    ({"GROUP_BY": "type", "WINDOW": "hopping", "SIZE_SECONDS": "100", "STEP_SECONDS": "30"},
     "aggregates.x", "multiple of step_seconds"),
    ({"GROUP_BY": "type", "WINDOW": "hopping", "SIZE_SECONDS": "30"},
     "aggregates.x.step_seconds", "exceeds size_seconds 30"),
    ({"GROUP_BY": "type", "SIZE_SECONDS": "7200"}, "aggregates.x.size_seconds",
     "exceeds windows.expires_seconds"),
    ({"GROUP_BY": "type", "SINKS": "mysql,kafka"}, "aggregates.x.sinks", "mysql"),
    ({"GROUP_BY": "type", "MAX_DISTINCT": "0"}, "aggregates.x.max_distinct", "1"),
    ({"GROUP_BY": "type", "COLOUR": "red"}, "aggregates.x.colour", "Extra inputs"),
    ({"GROUP_BY": "type", "MEASURES": "distinct(properties.a),distinct(properties.b)"},
     "aggregates.x", "must fit in one Kafka message"),
]


@pytest.mark.parametrize(("values", "field", "message"), INVALID,
                         ids=[f"{i}-{'-'.join(v)}" for i, (v, _, _) in enumerate(INVALID)])
@pytest.mark.parametrize("form", ["env", "ini"])
def test_an_invalid_declaration_names_its_field(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, form: str, values: dict[str, str],
    field: str, message: str,
) -> None:
    with pytest.raises(SettingsError) as err:
        if form == "env":
            from_env(monkeypatch, **{f"X__{k}": v for k, v in values.items()})
        else:
            body = "".join(f"{k.lower()} = {v}\n" for k, v in values.items())
            from_ini(monkeypatch, tmp_path, f"[aggregate.x]\n{body}")
    text = str(err.value)
    assert field in text and message in text, text
    key = field.split(".")[-1]
    if form == "ini" and key in {"group_by", "measures", "window", "sinks", "colour"}:
        assert f"INI [aggregate.x] {key}" in text, text


def test_the_default_step_is_checked_against_a_configured_size(
        monkeypatch: pytest.MonkeyPatch) -> None:
    got = from_env(monkeypatch, X__GROUP_BY="type", X__WINDOW="hopping", X__SIZE_SECONDS="120")
    assert configured_aggregates(got)[0].sizes == (120, 60)


@pytest.mark.parametrize("name", ["event_stats", "segment_stats", "user_activity", "users",
                                  "schema_migrations", "Plans", "9lives", "a" * 49])
def test_a_name_clashing_or_not_an_identifier_is_refused(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    with pytest.raises(SettingsError, match="aggregate name") as err:
        from_ini(monkeypatch, tmp_path, f"[aggregate.{name}]\ngroup_by = type\n")
    assert name in str(err.value)


@pytest.mark.parametrize("name", ["x; DROP TABLE users; --", "x`y", "plans stats", "x.y",
                                  "événements"])
def test_a_name_can_never_carry_sql(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                    name: str) -> None:
    with pytest.raises(SettingsError, match="must match"):
        from_ini(monkeypatch, tmp_path, f"[aggregate.{name}]\ngroup_by = type\n")
    with pytest.raises(ValueError, match="not a safe SQL identifier"):
        ident(name)


def test_every_built_in_name_is_reserved() -> None:
    assert {d.name for d in DEFINITIONS} <= RESERVED
    with pytest.raises(ValueError, match="built-in"):
        build("event_stats", AggregateSettings(group_by=["type"]), (60, 60))


def test_no_declaration_leaves_the_built_ins_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    specs = Specs.from_settings(load_settings())
    assert specs.aggregates == DEFINITIONS
    assert "/api/v1/aggregates/{name}" in openapi_document(["web"])["paths"]


# ------------------------------------------------------------------ the definition


def plans(monkeypatch: pytest.MonkeyPatch, **extra: str) -> Settings:
    return from_env(monkeypatch, PLANS__GROUP_BY="source,properties.plan",
                    PLANS__MEASURES="count,sum(value),min(value),max(properties.amount),"
                                    "users=distinct(user_id)", **extra)


def test_the_definition_its_columns_and_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    (defn,) = configured_aggregates(plans(monkeypatch))
    assert defn.configured and not defn.per_user and defn.route == "/api/v1/aggregates/plans"
    assert defn.key_names == ("source", "properties_plan")
    assert defn.schema_columns() == {
        "window_start": ("DATETIME(3)", False), "window_seconds": ("INT", False),
        "revision": ("INT", False), "final": ("BOOL", False),
        "updated_at": ("DATETIME(3)", False), "source": ("VARCHAR(32)", False),
        "properties_plan": ("VARCHAR(256)", False), "count": ("BIGINT", False),
        "sum_value": ("DOUBLE", False), "min_value": ("DOUBLE", True),
        "max_properties_amount": ("DOUBLE", True), "users": ("BIGINT", False),
        "users_truncated": ("BOOL", False)}
    key_of = plan(Specs.from_settings(plans(monkeypatch)), defn)[5]
    assert key_of({"source": "web", "properties": {"plan": "pro"}}) == ("web", "pro")
    assert key_of({"source": "web", "properties": {}}) == ("web", "unknown")
    assert key_of({"source": "web", "properties": {"plan": 3.0}}) == ("web", "3")
    assert key_of({"source": "web", "properties": {"plan": True}}) == ("web", "true")


def test_field_labels_and_numbers() -> None:
    assert [label(v) for v in (None, "a", True, False, 3, 3.0, 2.5)] == [
        "unknown", "a", "true", "false", "3", "3", "2.5"]
    assert reader("properties.plan")({"properties": None}) is None


def test_distinct_count_merges_by_union_and_stops_at_its_limit() -> None:
    m = DistinctCount("users", reader("user_id"), limit=3)
    a, b = m.initialize(), m.initialize()
    for uid in "aab":
        m.agg(a, {"user_id": uid}, 0)
    for uid in "bc":
        m.agg(b, {"user_id": uid}, 0)
    m.merge(a, b)
    assert m.result(a) == {"users": 3, "users_truncated": False}
    m.agg(a, {"user_id": "d"}, 0)
    assert m.result(a) == {"users": 3, "users_truncated": True}
    c = m.initialize()
    m.merge(c, a)  # the flag travels with the partial
    assert m.result(c) == {"users": 3, "users_truncated": True}


def test_new_states_share_no_mutable_value(monkeypatch: pytest.MonkeyPatch) -> None:
    (defn,) = configured_aggregates(plans(monkeypatch))
    one, two = defn.new(), defn.new()
    one["users"]["u1"] = 1
    assert two["users"] == {}


def test_rows_params_points_and_sql_are_quoted(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = from_env(monkeypatch, ORDER__GROUP_BY="type",
                        ORDER__MEASURES="select=count,distinct=distinct(user_id)")
    specs = Specs.from_settings(settings)
    defn = specs.definition("order")
    assert upsert_sql("order", defn).startswith(
        "INSERT INTO `order` (window_start, window_seconds, `type`, `select`, `distinct`, "
        "`distinct_truncated`, `revision`, final, updated_at) VALUES (")
    row = Row("order", T0, 60, ("click",), {"select": 3, "distinct": 2,
                                             "distinct_truncated": False}, True, T0, 1)
    params = row_params(row, None, specs.by_name)  # type: ignore[arg-type]
    assert params[2:7] == ("click", 3, 2, False, 1)
    line = to_point(row, specs.by_name).to_line_protocol()
    assert line.startswith("order,type=click distinct=2i,distinct_truncated=false,")
    query = ql.parse_aggregate(defn, {"type": "click", "from": str(T0), "to": str(T0 + 1)},
                               ["web"], T0)
    sql, args = ql.history_sql(query, 60, defn)
    assert sql.startswith("SELECT window_start, `type`, `select`, `distinct`, "
                          "`distinct_truncated`, final FROM `order` WHERE ")
    assert "`type` = %s" in sql and args[-1] == "click"
    with pytest.raises(ql.ParamError) as err:
        ql.parse_aggregate(defn, {"type": "a|b"}, ["web"], T0)
    assert err.value.field == "type"
    doc = openapi_document(["web"], specs.aggregates)
    params_doc = doc["paths"]["/api/v1/aggregates/order"]["get"]["parameters"]
    assert [p["name"] for p in params_doc] == ["type", "from", "to"]
    assert doc["paths"]["/api/v1/aggregates/{name}"]["get"]["parameters"][0]["schema"] == {
        "type": "string", "enum": ["order"]}


# ------------------------------------------------------------------ DDL and the check


def test_create_sql(monkeypatch: pytest.MonkeyPatch) -> None:
    (defn,) = configured_aggregates(plans(monkeypatch))
    sql = create_sql(defn)
    assert sql.startswith("CREATE TABLE IF NOT EXISTS `plans` (\n")
    assert "    `properties_plan` VARCHAR(256) COLLATE utf8mb4_bin NOT NULL,\n" in sql
    assert "    `min_value` DOUBLE NULL,\n" in sql
    assert "    `revision` INT NOT NULL DEFAULT 0,\n" in sql
    assert ("    PRIMARY KEY (`window_start`, `window_seconds`, `source`, "
            "`properties_plan`)\n") in sql


def live_of(defn: Any) -> list[tuple[str, str, str, str]]:
    """information_schema rows as MariaDB reports the table create_sql makes."""
    spelled = {"INT": "int(11)", "BIGINT": "bigint(20)", "BOOL": "tinyint(1)"}
    primary = {"window_start", "window_seconds", *defn.key_names}
    return [(name, spelled.get(sql, sql.lower()), "YES" if null else "NO",
             "PRI" if name in primary else "")
            for name, (sql, null) in defn.schema_columns().items()]


def test_a_matching_table_passes_and_each_difference_is_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    (defn,) = configured_aggregates(plans(monkeypatch))
    live = live_of(defn)
    assert mismatches(defn, live) == []
    retyped = [(n, "bigint(20)" if n == "sum_value" else t, null, k) for n, t, null, k in live]
    assert mismatches(defn, retyped) == [
        "plans.sum_value: the definition says DOUBLE NOT NULL, the table has bigint NOT NULL"]
    nullable = [(n, t, "YES" if n == "count" else null, k) for n, t, null, k in live]
    assert mismatches(defn, nullable) == [
        "plans.count: the definition says BIGINT NOT NULL, the table has bigint NULL"]
    missing = [c for c in live if c[0] != "users"]
    assert mismatches(defn, missing) == ["plans.users: in the definition, not in the table"]
    extra = [*live, ("note", "varchar(16)", "YES", "")]
    assert mismatches(defn, extra) == ["plans.note: in the table, not in the definition"]
    unkeyed = [(n, t, null, "" if n == "properties_plan" else k) for n, t, null, k in live]
    assert mismatches(defn, unkeyed)[0].startswith("plans: primary key (")


def test_canonical_types() -> None:
    assert canonical_type("INT") == canonical_type("int(11)") == "int"
    assert canonical_type("BOOL") == canonical_type("tinyint(1)") == "tinyint(1)"
    assert canonical_type("VARCHAR(32)") == "varchar(32)"
    assert canonical_type("DATETIME(3)") == "datetime(3)"


# ------------------------------------------------------------------ the pipeline


async def test_combiner_and_merge_equal_the_oracle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two sources x two partitions, out of order: the merged rows are the oracle's."""
    settings = plans(monkeypatch, PLANS__WINDOW="hopping", PLANS__SIZE_SECONDS="120",
                     PLANS__STEP_SECONDS="60")
    specs = Specs.from_settings(settings)
    clock = Clock(T0 / 1000 + 3600)
    loop = Loop(specs, clock)
    rng = random.Random(5)
    offsets: defaultdict[tuple[str, int], int] = defaultdict(int)
    events = []
    for i in range(300):
        props: dict[str, Any] = {}
        if rng.random() < 0.8:
            props["plan"] = rng.choice(["free", "pro", 3])
        if rng.random() < 0.5:
            props["amount"] = rng.choice([1, 2.5, "x", True])
        events.append({"event_id": f"e{i}", "user_id": f"u{rng.randrange(9)}", "type": "t",
                       "ts": T0 + i * 400 + rng.randrange(-15_000, 15_000),
                       "value": rng.choice([None, 1.5, 4.0]), "properties": props,
                       "source": rng.choice(["web", "mobile"]), "segment": "s",
                       "country": "DE", "device_id": None})
    items = []
    for e in events:
        topic, part = "raw." + e["source"], int(e["user_id"][1:]) % PARTS
        offsets[(topic, part)] += 1
        items.append((topic, part, offsets[(topic, part)], e))
    for start in range(0, len(items), 37):
        assert feed(loop, items[start:start + 37]) == []
        await loop.tick()
    clock.now += 60  # idle: every window closes
    await loop.tick()
    await loop.tick()
    got = {ident: dict(row.values) for ident, row in loop.rows.items() if ident[0] == "plans"}
    assert all(row.final for ident, row in loop.rows.items() if ident[0] == "plans")
    want = group_by_oracle(events, "plans", ["source", "properties.plan"],
                           {"count": ("count", None), "sum_value": ("sum", "value"),
                            "min_value": ("min", "value"),
                            "max_properties_amount": ("max", "properties.amount"),
                            "users": ("distinct", "user_id")},
                           size_ms=120_000, step_ms=60_000)
    assert set(got) == set(want) and len(want) > 20
    for window, values in want.items():
        assert got[window] == pytest.approx(values), window


def test_a_configured_answer_fits_its_openapi_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The windows the real code builds for a configured aggregate (a null max included)
    validate against the document's schema for its path, as the built-ins' do."""
    import jsonschema

    specs = Specs.from_settings(plans(monkeypatch))
    defn = specs.definition("plans")
    doc = openapi_document(["web"], specs.aggregates)
    state = defn.new()
    defn.compile()(state, {"source": "web", "user_id": "u1", "value": 2.5,
                           "properties": {"plan": "pro", "amount": 3}}, T0 + 1)
    empty = defn.new()
    defn.compile()(empty, {"source": "web", "user_id": "u2", "properties": {}}, T0 + 2)
    spec = specs.for_table("plans")
    query = ql.parse_aggregate(defn, {"from": str(T0), "to": str(T0 + 60_000)}, ["web"], T0)
    body = ql.response(query, spec, [
        ql.window("plans", spec, ["web", "pro"], T0, state, True, defn),
        ql.window("plans", spec, ["web", "unknown"], T0, empty, False, defn)])
    assert body["windows"][1]["values"]["max_properties_amount"] is None
    for path in ("/api/v1/aggregates/plans", "/api/v1/aggregates/{name}"):
        schema = doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        jsonschema.Draft202012Validator({"components": doc["components"],
                                         **schema["schema"]}).validate(body)
