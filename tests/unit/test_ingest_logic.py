"""HTTP ingest without HTTP: body parsing and per-user envelope planning."""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.models import Limits, decode_message
from collector.web.ingest_logic import (
    BodyError,
    Planner,
    TooManyEvents,
    check_size,
    parse_body,
    plan_ingest,
)

NOW = 1_795_514_400_000


def ev(eid: str, uid: str = "u1", **extra: Any) -> dict[str, Any]:
    return {"event_id": eid, "user_id": uid, "type": "click", "ts": NOW, **extra}


def ndjson(*objs: Any) -> bytes:
    return b"\n".join(orjson.dumps(o) for o in objs)


# ---------------------------------------------------------------------------- parse_body


def test_object_is_one_item() -> None:
    assert parse_body(orjson.dumps(ev("a"))) == [ev("a")]


def test_array_is_its_items_in_order() -> None:
    items = [ev("a"), 42, None, ev("b")]
    assert parse_body(orjson.dumps(items)) == items


def test_empty_array_is_no_items() -> None:
    assert parse_body(b"[]") == []


def test_ndjson_lines_are_items() -> None:
    assert parse_body(ndjson(ev("a"), ev("b"), ev("c"))) == [ev("a"), ev("b"), ev("c")]


def test_ndjson_tolerates_crlf_blank_lines_and_a_trailing_newline() -> None:
    body = orjson.dumps(ev("a")) + b"\r\n\r\n" + orjson.dumps(ev("b")) + b"\r\n"
    assert parse_body(body) == [ev("a"), ev("b")]


def test_ndjson_keeps_non_object_lines_for_validation() -> None:
    assert parse_body(b'{"a": 1}\n42\n[1]') == [{"a": 1}, 42, [1]]


@pytest.mark.parametrize("body", [b"", b"   ", b"\n\n", b"\r\n\t "])
def test_empty_body_is_an_error(body: bytes) -> None:
    with pytest.raises(BodyError, match="empty"):
        parse_body(body)


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"a": 1', b"\xff\xfe{}", b"\xef\xbb\xbf{}", b'{"v": NaN}',
     b"[" * 2000 + b"]" * 2000],
)
def test_unparseable_single_line_is_an_error(body: bytes) -> None:
    with pytest.raises(BodyError, match="neither JSON nor NDJSON"):
        parse_body(body)


def test_ndjson_with_a_bad_line_names_that_line() -> None:
    body = ndjson(ev("a"), ev("b")) + b"\n{broken\n" + orjson.dumps(ev("c"))
    with pytest.raises(BodyError, match="line 3"):
        parse_body(body)


def test_ndjson_line_numbers_count_blank_lines() -> None:
    body = orjson.dumps(ev("a")) + b"\n\n\n{broken"
    with pytest.raises(BodyError, match="line 4"):
        parse_body(body)


@pytest.mark.parametrize("body", [b"42", b"null", b'"event"', b"true", b"1.5"])
def test_scalar_body_is_an_error(body: bytes) -> None:
    with pytest.raises(BodyError, match="must be a JSON object"):
        parse_body(body)


# ---------------------------------------------------------------------------- plan_ingest


def decode_all(plan_envelopes: list[tuple[str, bytes]], source: str, limits: Limits) -> list[str]:
    """Decode every planned message as the worker will; all must be valid."""
    ids: list[str] = []
    for user_id, value in plan_envelopes:
        decoded = decode_message(value, user_id.encode(), source, limits, NOW)
        assert decoded.rejects == [], decoded.rejects
        assert all(e["user_id"] == user_id for e in decoded.events)
        ids.extend(e["event_id"] for e in decoded.events)
    return ids


def test_one_envelope_per_user_and_rejects_by_index() -> None:
    items = [ev("a1", "a"), ev("b1", "b"), ev("bad", value=True), ev("a2", "a"), 42,
             ev("c1", "c", ts="2026-11-24T10:00:00+02:00"), ev("src", source="mobile")]
    limits = Limits()
    plan = plan_ingest(items, "web", limits, NOW)
    assert plan.accepted == 4
    assert [r["index"] for r in plan.rejected] == [2, 4, 6]
    assert plan.rejected[0]["errors"] == [
        {"loc": "value", "msg": "value must be a number (not a bool)"}]
    assert plan.rejected[1]["errors"][0]["loc"] == ""
    assert plan.rejected[2]["errors"][0]["loc"] == "source"
    assert [u for u, _ in plan.envelopes] == ["a", "b", "c"]
    values = dict(plan.envelopes)
    assert orjson.loads(values["a"]) == [ev("a1", "a"), ev("a2", "a")]
    # a single event goes out bare, exactly as the caller sent it (ts not normalised)
    assert orjson.loads(values["b"]) == ev("b1", "b")
    assert orjson.loads(values["c"]) == items[5]
    assert sorted(decode_all(plan.envelopes, "web", limits)) == ["a1", "a2", "b1", "c1"]


def test_nothing_valid_means_nothing_to_send() -> None:
    plan = plan_ingest([{}, None, ev("x", "not valid!")], "web", Limits(), NOW)
    assert (plan.envelopes, plan.accepted) == ([], 0)
    assert [r["index"] for r in plan.rejected] == [0, 1, 2]
    assert plan_ingest([], "web", Limits(), NOW).envelopes == []


def test_envelopes_respect_max_batch_events() -> None:
    limits = Limits(max_batch_events=3)
    plan = plan_ingest([ev(f"e{i}") for i in range(7)], "web", limits, NOW)
    sizes = [len(v) if isinstance(v := orjson.loads(value), list) else 1
             for _, value in plan.envelopes]
    assert sizes == [3, 3, 1]
    assert decode_all(plan.envelopes, "web", limits) == [f"e{i}" for i in range(7)]


def test_envelopes_respect_max_message_bytes() -> None:
    one = len(orjson.dumps(ev("e0")))
    limits = Limits(max_message_bytes=3 * one + 4)  # "[" + 3 events + 2 commas + "]"
    plan = plan_ingest([ev(f"e{i}") for i in range(7)], "web", limits, NOW)
    assert [len(v) for _, v in plan.envelopes] == [3 * one + 4, 3 * one + 4, one]
    assert decode_all(plan.envelopes, "web", limits) == [f"e{i}" for i in range(7)]
    tighter = Limits(max_message_bytes=3 * one + 3)
    plan = plan_ingest([ev(f"e{i}") for i in range(7)], "web", tighter, NOW)
    assert max(len(v) for _, v in plan.envelopes) <= 3 * one + 3
    assert len(plan.envelopes) == 4  # 2 + 2 + 2 + 1
    assert decode_all(plan.envelopes, "web", tighter) == [f"e{i}" for i in range(7)]


def test_oversized_single_event_is_rejected() -> None:
    big = ev("big", properties={f"k{i}": "v" * 256 for i in range(4)})
    size = len(orjson.dumps(big))
    limits = Limits(max_message_bytes=size - 1)
    plan = plan_ingest([ev("small"), big], "web", limits, NOW)
    assert plan.accepted == 1
    assert plan.rejected == [{"index": 1, "errors": [
        {"loc": "", "msg": f"event is {size} bytes; the limit is {size - 1}"}]}]
    assert decode_all(plan.envelopes, "web", limits) == ["small"]
    # exactly at the limit it is accepted, and goes out bare
    plan = plan_ingest([big], "web", Limits(max_message_bytes=size), NOW)
    assert plan.accepted == 1 and plan.envelopes == [("u1", orjson.dumps(big))]


def as_list(value: bytes) -> list[bytes]:
    """The events of one planned message, each as orjson writes it."""
    parsed = orjson.loads(value)
    return [orjson.dumps(e) for e in parsed] if isinstance(parsed, list) else [value]


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 600)), max_size=40),
    max_events=st.integers(1, 6),
    max_bytes=st.integers(256, 2000),
)
def test_envelopes_never_exceed_limits_nor_split_early(
    sizes: list[tuple[int, int]], max_events: int, max_bytes: int
) -> None:
    limits = Limits(max_message_bytes=max_bytes, max_batch_events=max_events)
    items = [ev(f"e{i}", f"u{user}", properties={k: k * (pad // 3) for k in "pqr"})
             for i, (user, pad) in enumerate(sizes)]
    plan = plan_ingest(items, "web", limits, NOW)
    too_big = {i for i, item in enumerate(items) if len(orjson.dumps(item)) > max_bytes}
    assert {r["index"] for r in plan.rejected} == too_big
    assert plan.accepted == len(items) - len(too_big)
    per_user: dict[str, list[list[bytes]]] = {}
    for user, value in plan.envelopes:
        assert len(value) <= max_bytes
        events = as_list(value)
        assert len(events) <= max_events
        per_user.setdefault(user, []).append(events)
    for user, envelopes in per_user.items():
        # per-user order is kept ...
        got = [orjson.loads(e)["event_id"] for env in envelopes for e in env]
        assert got == [it["event_id"] for i, it in enumerate(items)
                       if it["user_id"] == user and i not in too_big]
        # ... and an envelope is only closed when the next event would not fit
        for current, following in itertools.pairwise(envelopes):
            packed = 2 + sum(map(len, current)) + len(current) - 1
            assert len(current) == max_events or packed + 1 + len(following[0]) > max_bytes
    assert len(decode_all(plan.envelopes, "web", limits)) == plan.accepted


# ---------------------------------------------------------------- bounded requests


@pytest.mark.parametrize("body", [
    b"[" + b",".join([b"{}"] * 1_300_000) + b"]",   # the 4 MB body that stalled a worker
    b"\n".join([b"{}"] * 1_300_000),                # the same as NDJSON (no commas)
    b"[" + b",".join([b"1"] * 400_000) + b"]",
], ids=["array", "ndjson", "numbers"])
def test_a_body_of_a_million_items_is_refused_unparsed(body: bytes) -> None:
    with pytest.raises(TooManyEvents, match="max_request_events") as info:
        check_size(body, 5000)
    assert info.value.status == 413
    with pytest.raises(TooManyEvents):
        parse_body(body, 5000)


def test_the_event_cap_is_exact() -> None:
    at_cap = orjson.dumps([ev(f"e{i}") for i in range(50)])
    assert len(parse_body(at_cap, 50)) == 50
    with pytest.raises(TooManyEvents, match="51 events; at most 50"):
        parse_body(orjson.dumps([ev(f"e{i}") for i in range(51)]), 50)
    ndjson = b"\n".join(orjson.dumps(ev(f"e{i}")) for i in range(51))
    with pytest.raises(TooManyEvents):
        parse_body(ndjson, 50)
    # events with many properties are still fine under the separator budget
    wide = [ev(f"w{i}", properties={f"p{k}": k for k in range(40)}) for i in range(50)]
    assert len(parse_body(orjson.dumps(wide), 50)) == 50


def test_rejects_are_echoed_up_to_the_cap_and_all_counted() -> None:
    items: list[object] = [{} for _ in range(250)] + [ev("ok")]
    big = ev("big", properties={f"k{i}": "v" * 256 for i in range(4)})
    items.append(big)
    limits = Limits(max_message_bytes=len(orjson.dumps(big)) - 1)
    plan = plan_ingest(items, "web", limits, NOW, max_echoed=100)
    answer = plan.answer()
    assert answer["accepted"] == 1
    assert len(answer["rejected"]) == 100
    assert [r["index"] for r in answer["rejected"]] == list(range(100))
    assert answer["rejected_total"] == 251
    assert answer["rejected_by_reason"] == {"schema_violation": 250, "too_large": 1}
    assert len(orjson.dumps(answer)) < 20_000


def test_planning_in_chunks_equals_planning_at_once() -> None:
    items: list[object] = [ev(f"e{i}", f"u{i % 7}") if i % 5 else {} for i in range(2500)]
    whole = plan_ingest(items, "web", Limits(), NOW, max_echoed=10_000)
    planner = Planner("web", Limits(), NOW, 10_000)
    for start in range(0, len(items), 1000):
        planner.add(items[start:start + 1000], start)
    stepped = planner.finish()
    assert stepped.answer() == whole.answer()
    assert sorted(stepped.envelopes) == sorted(whole.envelopes)
