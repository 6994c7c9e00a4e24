"""Every rule of the event contract, accepted and rejected, against both validators."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from collector.config import IngestSettings
from collector.models import Limits, Reason, Validator, validate_event, validate_event_pydantic


def ms(text: str) -> int:
    """Epoch ms of an ISO date-time, computed independently of the code under test."""
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None
    return int((moment - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1000)


NOW = ms("2026-11-24T10:00:00+00:00")
LIMITS = Limits()
BASE: dict[str, Any] = {"event_id": "e-1", "user_id": "u1", "type": "click", "ts": NOW - 1000}
VALIDATORS = [
    pytest.param(validate_event, id="lean"),
    pytest.param(validate_event_pydantic, id="pydantic"),
]
MISSING = object()


def event(**changes: Any) -> dict[str, Any]:
    """BASE with fields changed; ``MISSING`` removes one."""
    out = dict(BASE)
    for name, value in changes.items():
        if value is MISSING:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def normalised(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        **BASE,
        "value": None,
        "device_id": None,
        "properties": {},
        "source": "web",
    }
    out.update(changes)
    return out


ACCEPTED = [
    ("minimal_int_ts", event(), normalised()),
    ("ts_rfc3339_z", event(ts="2026-11-24T09:00:00Z"), normalised(ts=NOW - 3_600_000)),
    ("ts_offset_plus", event(ts="2026-11-24T11:00:00+02:00"), normalised(ts=NOW - 3_600_000)),
    ("ts_offset_minus", event(ts="2026-11-24T03:30:00-05:30"), normalised(ts=NOW - 3_600_000)),
    ("ts_offset_minus_zero", event(ts="2026-11-24T09:00:00-00:00"), normalised(ts=NOW - 3_600_000)),
    ("ts_lowercase_t_z", event(ts="2026-11-24t09:00:00z"), normalised(ts=NOW - 3_600_000)),
    ("ts_fraction_1", event(ts="2026-11-24T09:00:00.5Z"), normalised(ts=NOW - 3_599_500)),
    ("ts_fraction_3", event(ts="2026-11-24T09:00:00.123Z"), normalised(ts=NOW - 3_599_877)),
    (
        "ts_fraction_6_trunc",
        event(ts="2026-11-24T09:00:00.123999Z"),
        normalised(ts=NOW - 3_599_877),
    ),
    (
        "ts_fraction_9_trunc",
        event(ts="2026-11-24T09:00:00.999999999Z"),
        normalised(ts=NOW - 3_599_001),
    ),
    ("ts_at_future_limit", event(ts=NOW + 300_000), normalised(ts=NOW + 300_000)),
    ("ts_rfc_at_future_limit", event(ts="2026-11-24T10:05:00Z"), normalised(ts=NOW + 300_000)),
    ("ts_at_2000_int", event(ts=946_684_800_000), normalised(ts=946_684_800_000)),
    ("ts_at_2000_rfc", event(ts="2000-01-01T00:00:00Z"), normalised(ts=946_684_800_000)),
    ("ts_2000_via_offset", event(ts="2000-01-01T01:00:00+01:00"), normalised(ts=946_684_800_000)),
    (
        "ts_leap_day",
        event(ts="2024-02-29T00:00:00Z"),
        normalised(ts=ms("2024-02-29T00:00:00+00:00")),
    ),
    ("value_int_to_float", event(value=3), normalised(value=3.0)),
    ("value_float", event(value=-2.5), normalised(value=-2.5)),
    ("value_zero", event(value=0), normalised(value=0.0)),
    ("value_huge_finite", event(value=1.7e308), normalised(value=1.7e308)),
    ("value_null", event(value=None), normalised()),
    ("device_id_64", event(device_id="d" * 64), normalised(device_id="d" * 64)),
    ("device_id_empty", event(device_id=""), normalised(device_id="")),
    ("device_id_null", event(device_id=None), normalised()),
    ("event_id_1", event(event_id="x"), normalised(event_id="x")),
    ("event_id_64", event(event_id="e" * 64), normalised(event_id="e" * 64)),
    ("event_id_unicode_64", event(event_id="é🙂" * 32), normalised(event_id="é🙂" * 32)),
    ("user_id_charset", event(user_id="Az09_.:@-"), normalised(user_id="Az09_.:@-")),
    ("user_id_64", event(user_id="u" * 64), normalised(user_id="u" * 64)),
    ("type_one_char", event(type="a"), normalised(type="a")),
    ("type_64", event(type="a" * 64), normalised(type="a" * 64)),
    ("type_dots_digits", event(type="page.view_2"), normalised(type="page.view_2")),
    (
        "properties_all_kinds",
        event(properties={"s": "x", "i": 1, "f": 1.5, "b": False, "n": None, "": "k"}),
        normalised(properties={"s": "x", "i": 1, "f": 1.5, "b": False, "n": None, "": "k"}),
    ),
    (
        "properties_32_keys",
        event(properties={f"k{i}": i for i in range(32)}),
        normalised(properties={f"k{i}": i for i in range(32)}),
    ),
    (
        "properties_limits_exact",
        event(properties={"k" * 64: "v" * 256}),
        normalised(properties={"k" * 64: "v" * 256}),
    ),
    ("properties_empty", event(properties={}), normalised()),
    ("properties_null", event(properties=None), normalised()),
    ("source_equal", event(source="web"), normalised()),
    ("source_null", event(source=None), normalised()),
]


@pytest.mark.parametrize("validate", VALIDATORS)
@pytest.mark.parametrize(("obj", "expected"), [pytest.param(o, e, id=n) for n, o, e in ACCEPTED])
def test_accepted(validate: Validator, obj: dict[str, Any], expected: dict[str, Any]) -> None:
    result, errors = validate(obj, "web", LIMITS, NOW)
    assert errors == []
    assert result == expected
    assert list(result) == list(expected)  # same key order on both paths
    assert type(result["value"]) is (float if expected["value"] is not None else type(None))


REJECTED: list[tuple[str, object, set[str]]] = [
    ("not_object_list", [BASE], {""}),
    ("not_object_str", "event", {""}),
    ("not_object_int", 1, {""}),
    ("not_object_null", None, {""}),
    ("not_object_bool", True, {""}),
    ("missing_event_id", event(event_id=MISSING), {"event_id"}),
    ("missing_user_id", event(user_id=MISSING), {"user_id"}),
    ("missing_type", event(type=MISSING), {"type"}),
    ("missing_ts", event(ts=MISSING), {"ts"}),
    ("missing_all", {}, {"event_id", "user_id", "type", "ts"}),
    ("event_id_empty", event(event_id=""), {"event_id"}),
    ("event_id_65", event(event_id="e" * 65), {"event_id"}),
    ("event_id_int", event(event_id=12), {"event_id"}),
    ("event_id_null", event(event_id=None), {"event_id"}),
    ("user_id_empty", event(user_id=""), {"user_id"}),
    ("user_id_65", event(user_id="u" * 65), {"user_id"}),
    ("user_id_space", event(user_id="u 1"), {"user_id"}),
    ("user_id_unicode", event(user_id="ü"), {"user_id"}),
    ("user_id_trailing_newline", event(user_id="u1\n"), {"user_id"}),
    ("user_id_int", event(user_id=42), {"user_id"}),
    ("type_upper", event(type="Click"), {"type"}),
    ("type_digit_first", event(type="1click"), {"type"}),
    ("type_empty", event(type=""), {"type"}),
    ("type_65", event(type="a" * 65), {"type"}),
    ("type_dash", event(type="a-b"), {"type"}),
    ("type_trailing_newline", event(type="click\n"), {"type"}),
    ("type_list", event(type=["click"]), {"type"}),
    ("ts_float", event(ts=float(NOW)), {"ts"}),
    ("ts_bool", event(ts=True), {"ts"}),
    ("ts_null", event(ts=None), {"ts"}),
    ("ts_digit_string", event(ts=str(NOW)), {"ts"}),
    ("ts_no_offset", event(ts="2026-11-24T09:00:00"), {"ts"}),
    ("ts_date_only", event(ts="2026-11-24"), {"ts"}),
    ("ts_week_date", event(ts="2026-W48-2T09:00:00Z"), {"ts"}),
    ("ts_space_separator", event(ts="2026-11-24 09:00:00Z"), {"ts"}),
    ("ts_offset_no_colon", event(ts="2026-11-24T09:00:00+0200"), {"ts"}),
    ("ts_offset_minutes_60", event(ts="2026-11-24T09:00:00+02:60"), {"ts"}),
    ("ts_offset_hours_24", event(ts="2026-11-24T09:00:00+24:00"), {"ts"}),
    ("ts_no_seconds", event(ts="2026-11-24T09:00Z"), {"ts"}),
    ("ts_empty_fraction", event(ts="2026-11-24T09:00:00.Z"), {"ts"}),
    ("ts_comma_fraction", event(ts="2026-11-24T09:00:00,5Z"), {"ts"}),
    ("ts_feb_30", event(ts="2026-02-30T09:00:00Z"), {"ts"}),
    ("ts_hour_24", event(ts="2026-11-24T24:00:00Z"), {"ts"}),
    ("ts_leap_second", event(ts="2016-12-31T23:59:60Z"), {"ts"}),
    ("ts_year_zero", event(ts="0000-01-01T00:00:00Z"), {"ts"}),
    ("ts_non_ascii_digits", event(ts="٢٠٢٦-11-24T09:00:00Z"), {"ts"}),
    ("ts_trailing_newline", event(ts="2026-11-24T09:00:00Z\n"), {"ts"}),
    ("ts_future_1ms", event(ts=NOW + 300_001), {"ts"}),
    ("ts_future_rfc", event(ts="2026-11-24T10:05:00.001Z"), {"ts"}),
    ("ts_before_2000", event(ts=946_684_799_999), {"ts"}),
    ("ts_before_2000_rfc", event(ts="1999-12-31T23:59:59.999Z"), {"ts"}),
    ("ts_before_2000_offset", event(ts="2000-01-01T00:30:00+01:00"), {"ts"}),
    ("ts_negative", event(ts=-1), {"ts"}),
    ("ts_seconds_not_ms", event(ts=NOW // 1000), {"ts"}),
    ("value_true", event(value=True), {"value"}),
    ("value_false", event(value=False), {"value"}),
    ("value_string", event(value="1.5"), {"value"}),
    ("value_nan", event(value=float("nan")), {"value"}),
    ("value_inf", event(value=float("inf")), {"value"}),
    ("value_minus_inf", event(value=float("-inf")), {"value"}),
    ("value_list", event(value=[1]), {"value"}),
    ("value_int_overflows_float", event(value=10**400), {"value"}),
    ("device_id_65", event(device_id="d" * 65), {"device_id"}),
    ("device_id_int", event(device_id=7), {"device_id"}),
    ("properties_list", event(properties=[1]), {"properties"}),
    ("properties_string", event(properties="a=1"), {"properties"}),
    ("properties_33_keys", event(properties={f"k{i}": i for i in range(33)}), {"properties"}),
    ("properties_key_65", event(properties={"k" * 65: 1}), {"properties." + "k" * 65}),
    ("properties_str_257", event(properties={"s": "v" * 257}), {"properties.s"}),
    ("properties_nested_object", event(properties={"o": {"a": 1}}), {"properties.o"}),
    ("properties_list_value", event(properties={"l": [1]}), {"properties.l"}),
    ("properties_nan", event(properties={"n": float("nan")}), {"properties.n"}),
    ("properties_inf", event(properties={"n": float("inf")}), {"properties.n"}),
    (
        "properties_33_with_bad_item",  # item errors first, like pydantic
        event(properties={**{f"k{i}": i for i in range(32)}, "x": [1]}),
        {"properties.x"},
    ),
    ("source_mismatch", event(source="mobile"), {"source"}),
    ("source_int", event(source=1), {"source"}),
    ("unknown_field", event(extra=1), {"extra"}),
    ("unknown_fields_two", event(a=1, b=None), {"a", "b"}),
    (
        "many_errors",
        {"event_id": "", "user_id": "u 1", "type": "X", "ts": 1.5, "value": True, "zz": 0},
        {"event_id", "user_id", "type", "ts", "value", "zz"},
    ),
]


@pytest.mark.parametrize("validate", VALIDATORS)
@pytest.mark.parametrize(("obj", "locs"), [pytest.param(o, loc, id=n) for n, o, loc in REJECTED])
def test_rejected(validate: Validator, obj: object, locs: set[str]) -> None:
    result, errors = validate(obj, "web", LIMITS, NOW)
    assert result is None
    assert {error["loc"] for error in errors} == locs
    assert all(isinstance(error["msg"], str) and error["msg"] for error in errors)


@pytest.mark.parametrize("validate", VALIDATORS)
def test_unknown_fields_dropped_when_allowed(validate: Validator) -> None:
    lenient = Limits(allow_unknown_fields=True)
    result, errors = validate(event(extra={"x": 1}, more=[1]), "web", lenient, NOW)
    assert errors == []
    assert result == normalised()


@pytest.mark.parametrize("validate", VALIDATORS)
def test_unknown_fields_do_not_hide_other_errors_when_allowed(validate: Validator) -> None:
    lenient = Limits(allow_unknown_fields=True)
    result, errors = validate(event(ts=True, extra=1), "web", lenient, NOW)
    assert result is None
    assert {error["loc"] for error in errors} == {"ts"}


@pytest.mark.parametrize("validate", VALIDATORS)
def test_future_skew_is_configurable(validate: Validator) -> None:
    strict = Limits(future_skew_ms=0)
    assert validate(event(ts=NOW), "web", strict, NOW)[0] is not None
    assert validate(event(ts=NOW + 1), "web", strict, NOW)[0] is None


@pytest.mark.parametrize("validate", VALIDATORS)
def test_source_comes_from_the_topic(validate: Validator) -> None:
    result, _ = validate(event(), "openapi", LIMITS, NOW)
    assert result is not None and result["source"] == "openapi"
    assert validate(event(source="web"), "openapi", LIMITS, NOW)[0] is None


def test_limits_from_settings() -> None:
    ingest = IngestSettings(
        max_message_bytes=1024,
        max_batch_events=7,
        future_skew_seconds=9,
        allow_unknown_fields=True,
    )
    assert Limits.from_settings(ingest) == Limits(1024, 7, 9000, True)
    assert Limits.from_settings(IngestSettings()) == Limits()


def test_reason_values_are_stable() -> None:
    assert [str(reason) for reason in Reason] == [
        "malformed_json",
        "schema_violation",
        "too_large",
        "late",
        "sink_rejected",
        "internal_error",
        "malformed_protobuf",
        "unsupported_version",
    ]
