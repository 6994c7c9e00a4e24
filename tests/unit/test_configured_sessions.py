"""A session window declared in configuration (``window = session``), in memory
(combiner -> flusher -> rows), against tests/oracle.py's configured_session_oracle.

The per-user windows fold the aggregate's own measures (under ``agg["sessions"]``), and
the sessions are chained from them as user_sessions' are: so the scenarios are
user_sessions' (tests/unit/test_sessions.py): a gap, a late event bridging two emitted
sessions, an out-of-order event moving the start, random arrival; and with no such
aggregate the per-user state is what it was.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from collector.aggregates import DEFINITIONS
from collector.aggregates.configured import build
from collector.config.aggregates import AggregateSettings
from collector.engine.aggregator import Specs
from collector.engine.sessions import session_key
from collector.engine.specs import EXTRA
from collector.engine.windows import WindowSpec
from collector.sinks import Row
from tests.oracle import configured_session_oracle, session_oracle
from tests.unit.test_sessions import Feeder, settle
from tests.unit.test_windows import T0, Clock, Loop, event

GAP_MS = 600_000
MIN_MS = 60_000
NAME = "purchase_sessions"
MEASURES = "count,revenue=sum(properties.amount),min(properties.amount),max(value)," \
           "distinct(type)"
ORACLE: list[tuple[str, str, str | None]] = [
    ("count", "count", None), ("revenue", "sum", "properties.amount"),
    ("min_properties_amount", "min", "properties.amount"), ("max_value", "max", "value"),
    ("distinct_type", "distinct", "type")]


def specs_with(*configured: bool) -> Specs:
    extra = tuple(build(NAME, AggregateSettings(window="session", measures=MEASURES.split(",")),
                        (GAP_MS // 1000, GAP_MS // 1000)) for _ in configured[:1] if _)
    return Specs(WindowSpec.tumbling(60, 60, 3600), WindowSpec.hopping(300, 60, 60, 3600),
                 WindowSpec.sessions(GAP_MS // 1000, 60, 3600), expires_ms=7_200_000,
                 dedupe_ms=3_600_000, aggregates=(*DEFINITIONS, *extra))


@pytest.fixture
def specs() -> Specs:
    return specs_with(True)


def buy(uid: str, ts: int, amount: float | None, etype: str = "buy",
        value: float | None = None) -> dict[str, Any]:
    e = event(uid, etype, ts, value)
    if amount is not None:
        e["properties"] = {"amount": amount}
    return e


def rows(loop: Loop, table: str = NAME) -> dict[tuple[Any, ...], Row]:
    return {i: r for i, r in loop.rows.items() if r.table == table}


def live(loop: Loop) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {i: dict(r.values) for i, r in rows(loop).items()
            if r.values.get("merged_into") is None}


def ident(start: int, user: str = "u1") -> tuple[Any, ...]:
    return (NAME, start, GAP_MS // 1000, (user,))


def expected(events: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    return configured_session_oracle(events, NAME, ORACLE, gap_ms=GAP_MS)


async def started(specs: Specs, clock: Clock, update_s: float = 0.0) -> tuple[Loop, Feeder]:
    loop = Loop(specs, clock, session_update_s=update_s)
    await loop.tick()
    return loop, Feeder(loop)


async def test_each_measure_per_session(specs: Specs) -> None:
    clock = Clock(T0 / 1000 + 4 * 3600)
    loop, send = await started(specs, clock)
    events = [buy("u1", T0, 10.5, value=3.0), buy("u1", T0 + 1_000, None, "view"),
              buy("u1", T0 + GAP_MS - 1, -2.0, "cart", value=7.0),
              buy("u1", T0 + 2 * GAP_MS - 1, 4.0),  # one gap after the previous: new
              buy("u2", T0 + 5, 1.0)]
    assert send(events) == []
    await loop.tick()
    # merging a session's panes changed none of them (nor the user windows they copy),
    # and user_sessions' entry holds no configured session's state
    seen = 0
    for key, value in loop.agg.state.items():
        if key.startswith("u|u1|"):
            own = {e["type"] for e in events
                   if e["user_id"] == "u1" and e["ts"] - e["ts"] % MIN_MS == value["ws"]}
            assert set(value["agg"][EXTRA][NAME]["distinct_type"]) == own
            seen += 1
        elif key.startswith("g|"):
            for pane in [*value["panes"].values(), *value["pieces"]]:
                assert EXTRA not in pane and len(pane.get("distinct_type", ())) < 3
            seen += 1
    assert seen == 7  # u1's 3 user windows; 2 sessions entries (both tables) per user
    await settle(loop, clock)
    assert live(loop) == expected(events)
    first = rows(loop)[ident(T0)]
    assert first.final and first.revision == 0
    assert first.values == {"first_ts": T0, "last_ts": T0 + GAP_MS - 1, "count": 3,
                            "revenue": 8.5, "min_properties_amount": -2.0, "max_value": 7.0,
                            "distinct_type": 3, "distinct_type_truncated": False}
    second = rows(loop)[ident(T0 + 2 * GAP_MS - 1)]
    assert second.values["max_value"] is None and second.values["count"] == 1


async def test_a_late_event_bridges_two_emitted_sessions(specs: Specs) -> None:
    clock = Clock(T0 / 1000 + 45 * 60)
    loop, send = await started(specs, clock)
    a = [buy("u1", T0 + i * 1_000, 1.0, "click") for i in range(5)]
    b = [buy("u1", T0 + 15 * MIN_MS + i * 1_000, 2.0, "view") for i in range(5)]
    ahead = [buy("u1", T0 + 40 * MIN_MS, 100.0)]
    assert send(a + b + ahead) == []
    clock.now += 31
    await loop.tick()
    assert rows(loop)[ident(T0)].final and rows(loop)[ident(T0 + 15 * MIN_MS)].final
    bridge = [buy("u1", T0 + 8 * MIN_MS, 0.5, "scroll")]
    assert send(bridge) == []
    await loop.tick()
    assert live(loop) == expected(a + b + ahead + bridge)
    merged = rows(loop)[ident(T0)]
    assert merged.final and merged.revision == 1
    assert merged.values["count"] == 11 and merged.values["revenue"] == 15.5
    assert merged.values["distinct_type"] == 3
    marker = rows(loop)[ident(T0 + 15 * MIN_MS)]
    assert marker.final and marker.values["merged_into"] == T0
    assert marker.values["count"] == 0 and marker.values["revenue"] == 0.0
    assert marker.values["min_properties_amount"] is None
    await loop.tick()  # confirmed: the marker leaves the state
    entry = loop.agg.state.get(0, session_key(NAME, "u1"))
    assert entry is not None and entry["dead"] == [] and len(entry["rows"]) == 2


async def test_an_out_of_order_event_moves_the_start(specs: Specs) -> None:
    clock = Clock(T0 / 1000 + 20 * 60)
    loop, send = await started(specs, clock)
    first = [buy("u1", T0 + 5 * MIN_MS + i, 3.0) for i in range(3)]
    assert send(first) == []
    await loop.tick()
    assert not rows(loop)[ident(T0 + 5 * MIN_MS)].final
    earlier = [buy("u1", T0 + MIN_MS, -1.0, "view")]
    assert send(earlier) == []
    await loop.tick()
    assert live(loop) == expected(first + earlier)
    moved = rows(loop)[ident(T0 + MIN_MS)].values
    assert moved["count"] == 4 and moved["min_properties_amount"] == -1.0
    assert rows(loop)[ident(T0 + 5 * MIN_MS)].values["merged_into"] == T0 + MIN_MS


@pytest.mark.parametrize("update_s", [0.0, 60.0])
async def test_random_arrival_equals_the_oracle_and_leaves_the_built_ins_alone(
    update_s: float,
) -> None:
    rnd = random.Random(16)
    events = []
    for n in range(400):
        ts = T0 + rnd.randrange(0, 300 * MIN_MS)  # ~9 min apart per user
        uid = f"u{rnd.randrange(6)}"
        amount = rnd.choice([None, 1.0, 2.5, -4.0, 8.25])
        e = buy(uid, ts, amount, rnd.choice(["buy", "view", "click", "cart"]),
                value=rnd.choice([None, 1.0, 3.0]))
        e["event_id"] = f"e{n}"
        events.append(e)
    ordered = sorted(events, key=lambda e: e["ts"] + rnd.randrange(0, 20 * MIN_MS))
    out: dict[bool, Loop] = {}
    for with_sessions in (False, True):  # the same arrival, with and without it
        clock = Clock(T0 / 1000 + 6 * 3600)
        loop, send = await started(specs_with(with_sessions), clock, update_s)
        for lo in range(0, len(ordered), 50):
            assert send(ordered[lo:lo + 50]) == []
            clock.now += 20
            await loop.tick()
        clock.now += 3 * 3600  # quiet: everything closes by the idle rule
        for _ in range(4):
            clock.now += 61
            await loop.tick()
        out[with_sessions] = loop
    assert live(out[True]) == expected(events)
    assert all(r.final for r in live_rows(out[True]))
    for table in ("user_activity", "user_sessions"):  # unchanged by the extra state
        assert {i: r.values for i, r in rows(out[True], table).items()} == \
            {i: r.values for i, r in rows(out[False], table).items()}
    sessions = {i: dict(r.values) for i, r in rows(out[True], "user_sessions").items()
                if r.values.get("merged_into") is None}
    assert sessions == session_oracle(events, gap_ms=GAP_MS)


def live_rows(loop: Loop) -> list[Row]:
    return [r for r in rows(loop).values() if r.values.get("merged_into") is None]


async def test_the_user_window_carries_extra_state_only_when_configured() -> None:
    for with_sessions in (False, True):
        clock = Clock(T0 / 1000 + 600)
        loop, send = await started(specs_with(with_sessions), clock)
        assert send([buy("u1", T0, 2.0)]) == []
        (value,) = [v for k, v in loop.agg.state.items() if k.startswith("u|")]
        if with_sessions:
            assert set(value["agg"]) == {"count", "types", "first_ts", "last_ts", "latest",
                                         EXTRA}
            assert value["agg"][EXTRA][NAME]["revenue"] == 2.0
        else:
            assert set(value["agg"]) == {"count", "types", "first_ts", "last_ts", "latest"}


def test_a_session_answer_from_mysql_fits_its_openapi_path() -> None:
    """A configured session's MySQL row, read back as the query API does (history_sql's
    SELECT, history_window), holds first_ts, last_ts and the measures, and validates
    against the document's schema for its path; the SELECT leaves markers out."""
    import jsonschema

    from collector.aggregates.definition import naive_utc
    from collector.web import query_logic as ql
    from collector.web.openapi import openapi_document

    specs = specs_with(True)
    defn, spec = specs.definition(NAME), specs.for_table(NAME)
    query = ql.parse_aggregate(defn, {"from": str(T0), "to": str(T0 + GAP_MS),
                                      "user_id": "u1"}, ["web"], T0)
    sql, args = ql.history_sql(query, spec.seconds, defn)
    assert "merged_into IS NULL" in sql and "`user_id` = %s" in sql and "u1" in args
    # a user id /users/{id}/sessions refuses is refused here too (400 naming the field)
    with pytest.raises(ql.ParamError) as refused:
        ql.parse_aggregate(defn, {"user_id": "no such user"}, ["web"], T0)
    assert refused.value.field == "user_id"
    by_value = {"last_ts": naive_utc(T0 + 5_000), "count": 2, "revenue": 3.5,
                "min_properties_amount": None, "max_value": 1.0, "distinct_type": 2,
                "distinct_type_truncated": 0}
    raw = (naive_utc(T0), "u1", *(by_value[c.value or ""] for c in defn.history_columns), 1)
    window = ql.history_window(NAME, spec, raw, defn)
    assert window["values"] == {"first_ts": T0, "last_ts": T0 + 5_000, "count": 2,
                                "revenue": 3.5, "min_properties_amount": None,
                                "max_value": 1.0, "distinct_type": 2,
                                "distinct_type_truncated": False}
    assert window["window_end"] == ql.rfc3339(T0 + 5_000)  # a session ends at its last
    body = ql.response(query, spec, [window])
    doc = openapi_document(["web"], specs.aggregates)
    for path in (f"/api/v1/aggregates/{NAME}", "/api/v1/aggregates/{name}"):
        schema = doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]
        jsonschema.Draft202012Validator({"components": doc["components"],
                                         **schema["schema"]}).validate(body)


async def test_a_session_aggregate_no_longer_declared_is_left_alone() -> None:
    """Its sessions entries recovered from the changelog are neither indexed nor
    visited: without that, each such user was flushed on every tick."""
    clock = Clock(T0 / 1000 + 600)
    first, send = await started(specs_with(True), clock)
    assert send([buy("u1", T0, 2.0), buy("u2", T0 + 5, 1.0)]) == []
    await first.tick()
    kept = session_key(NAME, "u1")
    assert first.agg.state.get(0, kept) is not None
    again = Loop(specs_with(False), clock, state=first.agg.state)
    await again.tick()
    assert kept not in again.agg.index and kept not in again.flusher.session_flush.entries
    assert again.agg.state.get(0, kept) is not None  # not deleted either
    assert rows(again) == {}  # and nothing written for it
    assert rows(again, "user_sessions")  # user_sessions go on
