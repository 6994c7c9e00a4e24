"""The poison corpus at the message level, dead-letter records, and a no-crash fuzz."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.models import (
    DEADLETTER_REASON_HEADER,
    Decoded,
    Limits,
    Reason,
    Reject,
    dead_letter_for_event,
    dead_letter_record,
    decode_message,
)

NOW = 1_795_514_400_000  # 2026-11-24T10:00:00Z
LIMITS = Limits()
GOOD: dict[str, Any] = {"event_id": "e-1", "user_id": "u1", "type": "click", "ts": NOW - 1000}
GOOD_BYTES = orjson.dumps(GOOD)

M = Reason.MALFORMED_JSON
S = Reason.SCHEMA_VIOLATION
T = Reason.TOO_LARGE


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def good(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


def check_invariant(decoded: Decoded, value: bytes | None) -> None:
    """events + rejects == 1 for a whole-message reject, else one per element."""
    whole = [reject for reject in decoded.rejects if reject.index is None]
    total = len(decoded.events) + len(decoded.rejects)
    if whole:
        assert (total, len(whole)) == (1, 1)
        return
    try:
        parsed = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        pytest.fail("a parse failure must be a whole-message reject")
    assert total == (len(parsed) if isinstance(parsed, list) else 1)


def payload_of(record: bytes) -> bytes | None:
    parsed = orjson.loads(record)
    if parsed["payload"] is None:
        return None
    if parsed["payload_encoding"] == "base64":
        return base64.b64decode(parsed["payload"])
    assert parsed["payload_encoding"] == "utf-8"
    encoded: bytes = parsed["payload"].encode("utf-8")
    return encoded


def record(reject: Reject, raw: bytes | None) -> dict[str, Any]:
    out = dead_letter_record(
        reject,
        source="web",
        topic="collect.raw.web",
        partition=3,
        offset=42,
        raw=raw,
        received_at_ms=NOW + 7,
    )
    parsed: dict[str, Any] = orjson.loads(out)
    return parsed


# (name, value, key, reason, index) for messages that produce exactly one reject.
WHOLE: list[tuple[str, bytes | None, bytes | None, Reason]] = [
    ("none_value", None, None, M),
    ("empty_message", b"", None, M),
    ("whitespace_only", b"  \n", None, M),
    ("truncated_json", b'{"event_id": "e', None, M),
    ("trailing_garbage", GOOD_BYTES + b"x", None, M),
    ("two_objects", GOOD_BYTES + GOOD_BYTES, None, M),
    ("single_quotes", b"{'event_id': 'e'}", None, M),
    ("bad_utf8", b'{"event_id": "\xff\xfe"}', None, M),
    ("latin1_text", '{"event_id": "café"}'.encode("latin-1"), None, M),
    ("utf8_bom", b"\xef\xbb\xbf" + GOOD_BYTES, None, M),
    ("lone_surrogate_escape", b'{"event_id": "\\ud800"}', None, M),
    ("nan_literal", dumps(good())[:-1] + b',"value":NaN}', None, M),
    ("infinity_literal", dumps(good())[:-1] + b',"value":Infinity}', None, M),
    ("minus_infinity_literal", dumps(good())[:-1] + b',"value":-Infinity}', None, M),
    ("number_beyond_double", dumps(good())[:-1] + b',"value":1e400}', None, M),
    ("deep_nesting_100k_is_too_large_first", b"[" * 100_000, None, T),
    ("deep_nesting_closed", b"[" * 5000 + b"]" * 5000, b"u1", M),
    ("deep_object_nesting", b'{"a":' * 3000 + b"1" + b"}" * 3000, None, M),
    ("json_null", b"null", None, S),
    ("json_true", b"true", None, S),
    ("json_number", b"42", None, S),
    ("json_string", b'"hello"', None, S),
    ("nan_as_string", dumps(good(value="NaN")), None, S),
    ("infinity_as_string", dumps(good(value="Infinity")), None, S),
    ("missing_field", dumps({"event_id": "e", "user_id": "u1", "type": "t"}), None, S),
    ("wrong_type_field", dumps(good(event_id=5)), None, S),
    ("over_long_field", dumps(good(event_id="e" * 65)), None, S),
    ("future_ts", dumps(good(ts=NOW + 300_001)), None, S),
    ("ts_before_2000", dumps(good(ts=946_684_799_999)), None, S),
    ("source_mismatch", dumps(good(source="mobile")), None, S),
    ("unknown_field_strict", dumps(good(extra=1)), None, S),
    ("single_key_mismatch", GOOD_BYTES, b"other", S),
    ("key_not_utf8", GOOD_BYTES, b"\xff", S),
    ("envelope_missing_key", dumps([GOOD]), None, S),
    ("envelope_empty_key", dumps([GOOD]), b"", S),
    ("envelope_empty", b"[]", b"u1", S),
    ("envelope_empty_no_key", b"[]", None, S),
    ("envelope_too_many", dumps([good(event_id=f"e{i}") for i in range(501)]), b"u1", S),
    ("oversized", b'{"event_id":"' + b"x" * 65_536 + b'"}', None, T),
    ("oversized_garbage", b"\xff" * 65_537, None, T),
]


@pytest.mark.parametrize(
    ("value", "key", "reason"), [pytest.param(v, k, r, id=n) for n, v, k, r in WHOLE]
)
def test_whole_message_rejects(value: bytes | None, key: bytes | None, reason: Reason) -> None:
    decoded = decode_message(value, key, "web", LIMITS, NOW)
    assert decoded.events == []
    assert len(decoded.rejects) == 1
    reject = decoded.rejects[0]
    assert (reject.reason, reject.index, reject.element) == (reason, None, None)
    assert reject.errors and all(error["msg"] for error in reject.errors)
    rec = record(reject, value)
    assert rec["reason"] == str(reason) and rec["index"] is None
    assert payload_of(dead_letter_record(reject, **_where(), raw=value)) == value


def _where() -> dict[str, Any]:
    return {
        "source": "web",
        "topic": "collect.raw.web",
        "partition": 0,
        "offset": 1,
        "received_at_ms": NOW,
    }


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"[" * 100_000, id="open_arrays_100k"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="closed_arrays_100k"),
        pytest.param(b'{"a":' * 100_000, id="open_objects_100k"),
        pytest.param(b"[" * 1025 + b"]" * 1025, id="depth_1025"),
    ],
)
def test_deep_nesting_is_malformed_not_a_crash(value: bytes) -> None:
    big = Limits(max_message_bytes=10_000_000)
    decoded = decode_message(value, b"u1", "web", big, NOW)
    assert [(r.reason, r.index) for r in decoded.rejects] == [(M, None)]
    assert payload_of(dead_letter_record(decoded.rejects[0], **_where(), raw=value)) == value


def test_bad_utf8_dead_letters_as_base64() -> None:
    raw = b'{"event_id": "\xff"}'
    reject = decode_message(raw, None, "web", LIMITS, NOW).rejects[0]
    rec = record(reject, raw)
    assert rec["payload_encoding"] == "base64"
    assert base64.b64decode(rec["payload"]) == raw


def test_dead_letter_record_schema() -> None:
    raw = dumps(good(ts=True))
    reject = decode_message(raw, None, "web", LIMITS, NOW).rejects[0]
    assert record(reject, raw) == {
        "reason": "schema_violation",
        "errors": [{"loc": "ts", "msg": reject.errors[0]["msg"]}],
        "source": "web",
        "topic": "collect.raw.web",
        "partition": 3,
        "offset": 42,
        "received_at": "2026-11-24T10:00:00.007Z",
        "index": None,
        "payload": raw.decode(),
        "payload_encoding": "utf-8",
        "content_type": "application/json",
    }
    assert DEADLETTER_REASON_HEADER == "x-collector-reason"


def test_tombstone_dead_letters_with_null_payload() -> None:
    reject = decode_message(None, b"u1", "web", LIMITS, NOW).rejects[0]
    rec = record(reject, None)
    assert (rec["payload"], rec["payload_encoding"]) == (None, None)


def test_accepts_single_object_with_and_without_matching_key() -> None:
    for key in (None, b"", b"u1"):
        decoded = decode_message(GOOD_BYTES, key, "web", LIMITS, NOW)
        assert decoded.rejects == [] and len(decoded.events) == 1
        assert decoded.events[0]["source"] == "web"


def test_exactly_max_size_is_parsed() -> None:
    limits = Limits(max_message_bytes=len(GOOD_BYTES))
    assert len(decode_message(GOOD_BYTES, None, "web", limits, NOW).events) == 1
    smaller = Limits(max_message_bytes=len(GOOD_BYTES) - 1)
    assert decode_message(GOOD_BYTES, None, "web", smaller, NOW).rejects[0].reason == T


def test_envelope_elements_are_judged_one_by_one() -> None:
    elements: list[Any] = [
        good(event_id="a"),
        good(event_id="b", user_id="someone_else"),  # mismatched user_id
        [good(event_id="c")],  # nested array
        None,
        "scalar",
        good(event_id="d", value=True),
        good(event_id="e", user_id=None),  # missing user_id cannot match the key
        good(event_id="f"),
    ]
    value = dumps(elements)
    decoded = decode_message(value, b"u1", "web", LIMITS, NOW)
    check_invariant(decoded, value)
    assert [event["event_id"] for event in decoded.events] == ["a", "f"]
    assert [(r.reason, r.index) for r in decoded.rejects] == [(S, i) for i in range(1, 7)]
    assert [r.element for r in decoded.rejects] == elements[1:7]
    assert {e["loc"] for e in decoded.rejects[0].errors} == {"user_id"}
    for reject in decoded.rejects:
        rec = record(reject, value)
        assert rec["index"] == reject.index
        assert orjson.loads(rec["payload"]) == reject.element


def test_envelope_mismatch_is_added_to_other_errors() -> None:
    value = dumps([good(user_id="bob", ts=True)])
    reject = decode_message(value, b"u1", "web", LIMITS, NOW).rejects[0]
    assert {e["loc"] for e in reject.errors} == {"ts", "user_id"}


def test_envelope_at_max_size() -> None:
    limits = Limits(max_batch_events=3)
    three = dumps([good(event_id=str(i)) for i in range(3)])
    assert len(decode_message(three, b"u1", "web", limits, NOW).events) == 3
    four = dumps([good(event_id=str(i)) for i in range(4)])
    assert decode_message(four, b"u1", "web", limits, NOW).rejects[0].index is None


def test_unknown_fields_with_both_settings() -> None:
    value = dumps(good(extra="x"))
    assert decode_message(value, None, "web", LIMITS, NOW).rejects[0].reason == S
    lenient = decode_message(value, None, "web", Limits(allow_unknown_fields=True), NOW)
    assert lenient.rejects == [] and "extra" not in lenient.events[0]


def test_ints_beyond_64_bits() -> None:
    """orjson reads them as floats (older releases refused them): never accepted as ts."""
    value = dumps(good())[:-1] + b',"value":18446744073709551616}'
    assert decode_message(value, None, "web", LIMITS, NOW).events[0]["value"] == 2.0**64
    bad_ts = b'{"event_id":"e","user_id":"u1","type":"t","ts":18446744073709551616}'
    assert decode_message(bad_ts, None, "web", LIMITS, NOW).rejects[0].reason in (S, M)


def test_element_too_deep_to_reserialise_falls_back_to_the_message() -> None:
    value = b"[" * 1024 + b"]" * 1024  # parses (depth 1024), but orjson writes only 254
    decoded = decode_message(value, b"u1", "web", LIMITS, NOW)
    assert [(r.reason, r.index) for r in decoded.rejects] == [(S, 0)]
    rec = record(decoded.rejects[0], value)
    assert rec["index"] == 0 and rec["payload"].encode() == value


def test_dead_letter_for_event() -> None:
    event = decode_message(GOOD_BYTES, None, "web", LIMITS, NOW).events[0]
    out = dead_letter_for_event(
        Reason.LATE,
        event,
        [{"loc": "ts", "msg": "window closed"}],
        source="web",
        topic="collect.raw.web",
        partition=1,
        offset=9,
        received_at_ms=NOW,
    )
    rec = orjson.loads(out)
    assert rec["reason"] == "late" and rec["index"] is None
    assert orjson.loads(rec["payload"]) == event
    assert rec["received_at"] == "2026-11-24T10:00:00.000Z"


# --- fuzz: nothing raises and the count invariant holds, whatever the bytes -------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
near_events = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.sampled_from(["e", "", "e" * 65]) | json_values,
        "user_id": st.sampled_from(["u1", "u2", "", "bad id"]) | json_values,
        "type": st.sampled_from(["click", "Click", ""]) | json_values,
        "ts": st.sampled_from([NOW, NOW + 10**9, "2026-11-24T09:00:00Z", 1.5, True]),
        "value": json_values,
        "device_id": json_values,
        "properties": json_values,
        "source": st.sampled_from(["web", "mobile"]) | json_values,
        "extra": json_values,
    },
)


def text_json(obj: Any) -> bytes:
    """stdlib JSON, which (unlike orjson) also writes integers beyond 64 bits."""
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


messages = (
    st.binary(max_size=300)
    | json_values.map(text_json)
    | near_events.map(text_json)
    | st.lists(near_events | json_values, max_size=8).map(text_json)
    | st.lists(st.just(GOOD), min_size=1, max_size=6).map(dumps)
)
keys = st.none() | st.sampled_from([b"", b"u1", b"u2", b"\xff"]) | st.binary(max_size=8)
limit_sets = st.builds(
    Limits,
    max_message_bytes=st.sampled_from([256, 65_536]),
    max_batch_events=st.sampled_from([1, 3, 500]),
    allow_unknown_fields=st.booleans(),
)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.none() | messages, key=keys, limits=limit_sets)
def test_fuzz_never_raises_and_counts_add_up(
    value: bytes | None, key: bytes | None, limits: Limits
) -> None:
    decoded = decode_message(value, key, "web", limits, NOW)
    check_invariant(decoded, value)
    for event in decoded.events:
        assert list(event) == [
            "event_id",
            "user_id",
            "type",
            "ts",
            "value",
            "device_id",
            "properties",
            "source",
        ]
    for reject in decoded.rejects:
        assert isinstance(reject.reason, Reason)
        assert not any(e["msg"].startswith("internal") for e in reject.errors)
        rec = record(reject, value)
        if reject.index is None:
            assert payload_of(dead_letter_record(reject, **_where(), raw=value)) == value
        else:
            assert rec["index"] == reject.index
