"""The lean validator and the pydantic reference must agree on every input.

Compared for each generated object: the decision (accepted or not); when accepted, the
normalised dict, key order and value types included; when rejected, the SET of error
locations (full dotted locs such as ``ts`` or ``properties.color``).  Messages are not
compared: the lean path writes its own, pydantic writes pydantic's.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from collector.models import Limits, validate_event, validate_event_pydantic
from collector.models.contract import MIN_TS_MS

NOW = 1_795_514_400_000  # 2026-11-24T10:00:00Z
SKEW = 300_000

DAY = 86_400_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Ways to bend a valid RFC 3339 string; each must agree on both paths either way.
BENDS: dict[str, Callable[[str], str]] = {
    "space_separator": lambda t: t[:10] + " " + t[11:],
    "lowercase": str.lower,
    "no_offset": lambda t: t[:19],
    "offset_no_colon": lambda t: t[:19] + "+0200",
    "offset_minutes_60": lambda t: t[:19] + "+02:60",
    "offset_hours_24": lambda t: t[:19] + "-24:00",
    "minus_zero": lambda t: t[:19] + "-00:00",
    "month_13": lambda t: t[:5] + "13" + t[7:],
    "feb_30": lambda t: "2024-02-30" + t[10:],
    "feb_29_non_leap": lambda t: "2025-02-29" + t[10:],
    "day_00": lambda t: t[:8] + "00" + t[10:],
    "hour_24": lambda t: t[:11] + "24" + t[13:],
    "minute_60": lambda t: t[:14] + "60" + t[16:],
    "leap_second": lambda t: t[:17] + "60" + t[19:],
    "year_0": lambda t: "0000" + t[4:],
    "empty_fraction": lambda t: t[:19] + "." + t[19:].lstrip(".0123456789"),
    "comma_fraction": lambda t: t[:19] + ",5" + t[19:].lstrip(".0123456789"),
    "trailing_newline": lambda t: t + "\n",
    "arabic_digit": lambda t: "\u0662" + t[1:],
    "date_only": lambda t: t[:10],
}


@st.composite
def rfc3339ish(draw: st.DrawFn) -> str:
    """A valid RFC 3339 string near the accepted window, bent one way 40% of the time."""
    ms = draw(
        st.integers(MIN_TS_MS - DAY, NOW + SKEW + DAY)
        | st.sampled_from([MIN_TS_MS - 1, MIN_TS_MS, NOW + SKEW, NOW + SKEW + 1])
        | st.integers(-62_000_000_000_000, 253_402_000_000_000)
    )
    micros = draw(st.sampled_from([0, 999]) | st.integers(0, 999))
    offset = draw(st.sampled_from([0, 0, 120, -330, 1439, -1439]) | st.integers(-1439, 1439))
    local = EPOCH + timedelta(milliseconds=ms, microseconds=micros, minutes=offset)
    digits = draw(st.integers(0, 12))
    fraction = f"{local.microsecond:06d}" + draw(st.text("0123456789", min_size=6, max_size=6))
    text = local.strftime("%Y-%m-%dT%H:%M:%S").zfill(19)  # zfill: strftime drops year zeros
    if digits:
        text += "." + fraction[:digits]
    if offset == 0 and draw(st.booleans()):
        text += draw(st.sampled_from("Zz"))
    else:
        sign = "-" if offset < 0 else "+"
        text += f"{sign}{abs(offset) // 60:02d}:{abs(offset) % 60:02d}"
    if draw(st.integers(0, 9)) < 4:
        text = BENDS[draw(st.sampled_from(sorted(BENDS)))](text)
    return text


def near(value: st.SearchStrategy[Any], *odd: Any) -> st.SearchStrategy[Any]:
    """A field's valid values, plus type confusion and the given odd values."""
    junk = st.sampled_from([None, True, False, 0, 1.5, "", [], {}, *odd])
    return value | value | junk


ts_values = st.one_of(
    rfc3339ish(),
    st.integers(MIN_TS_MS - 2, MIN_TS_MS + 2),
    st.integers(NOW + SKEW - 2, NOW + SKEW + 2),
    st.integers(MIN_TS_MS, NOW + SKEW),
    st.integers(-(2**70), 2**70),
    st.sampled_from([float(NOW), True, str(NOW), None]),
)
finite = st.floats(allow_nan=False, allow_infinity=False)
numbers = st.integers(-(2**64), 2**64) | st.floats() | st.sampled_from([10**400, -(10**400)])
user_ids = st.text("abcXYZ019_.:@- \n\té", min_size=0, max_size=66) | st.sampled_from(
    ["u" * 64, "u" * 65]
)
types = st.from_regex(r"[a-z][a-z0-9_.]{0,63}", fullmatch=True) | st.text("aZ0_.-\n", max_size=66)
property_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(),
    st.text(max_size=3) | st.sampled_from(["v" * 256, "v" * 257]),
    st.sampled_from([[1], {"a": 1}]),
)
property_keys = st.text(max_size=4) | st.sampled_from(["k" * 64, "k" * 65])
properties = st.dictionaries(property_keys, property_values, max_size=6) | st.dictionaries(
    st.text(min_size=1, max_size=3), st.integers(0, 9), min_size=30, max_size=34
)

FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "event_id": near(
        st.text(min_size=1, max_size=4) | st.sampled_from(["e" * 64, "e" * 65, "🙂" * 64])
    ),
    "user_id": near(user_ids),
    "type": near(types),
    "ts": ts_values,
    "value": near(numbers, float("nan"), float("inf"), "1.5"),
    "device_id": near(st.text(max_size=3) | st.sampled_from(["d" * 64, "d" * 65]), 7),
    "properties": near(properties, [1], "a=1"),
    "source": near(st.sampled_from(["web", "mobile", "WEB"])),
    "extra": st.integers(),
    "Type": st.text(max_size=2),
}
events = st.fixed_dictionaries({}, optional=FIELDS)
# A valid skeleton with one or two generated fields overlaid, so acceptance is common.
VALID: dict[str, Any] = {"event_id": "e", "user_id": "u1", "type": "click", "ts": NOW}
one_field = st.sampled_from(sorted(FIELDS)).flatmap(
    lambda name: FIELDS[name].map(lambda value: {**VALID, name: value})
)
mostly_valid = st.builds(lambda a, b: {**a, **b}, one_field, one_field)
inputs = events | one_field | mostly_valid | st.sampled_from([None, [], "x", 1, [VALID]])


def locs(errors: list[Any]) -> set[str]:
    return {error["loc"] for error in errors}


def assert_agree(obj: object, limits: Limits) -> bool:
    lean, lean_errors = validate_event(obj, "web", limits, NOW)
    ref, ref_errors = validate_event_pydantic(obj, "web", limits, NOW)
    assert (lean is None) == (ref is None), (lean_errors, ref_errors)
    if lean is None:
        assert locs(lean_errors) == locs(ref_errors)
        assert lean_errors and ref_errors
        return False
    assert lean == ref
    assert ref is not None and list(lean) == list(ref)
    assert {k: type(v) for k, v in lean.items()} == {k: type(v) for k, v in ref.items()}
    assert {k: type(v) for k, v in lean["properties"].items()} == {
        k: type(v) for k, v in ref["properties"].items()
    }
    assert lean_errors == ref_errors == []
    return True


@settings(max_examples=3000, deadline=None)
@given(obj=inputs, allow_unknown=st.booleans())
@example(obj={**VALID, "value": True}, allow_unknown=False)
@example(obj={**VALID, "ts": float(NOW)}, allow_unknown=False)
@example(obj={**VALID, "ts": "2026-11-24T10:05:00.000999+00:00"}, allow_unknown=False)
@example(obj={**VALID, "ts": "9999-12-31T23:59:59.999-23:59"}, allow_unknown=False)
@example(obj={**VALID, "ts": "2026-11-24T12:05:00+02:00"}, allow_unknown=False)
@example(obj={**VALID, "user_id": "u" * 64, "event_id": "é" * 64}, allow_unknown=False)
@example(obj={**VALID, "properties": {"k" * 65: [1]}}, allow_unknown=False)
@example(obj={**VALID, "extra": 1, "ts": True}, allow_unknown=True)
def test_validators_agree(obj: object, allow_unknown: bool) -> None:
    assert_agree(obj, Limits(allow_unknown_fields=allow_unknown))


def test_generators_reach_both_outcomes() -> None:
    """Guard against a strategy that only ever produces rejects (or accepts)."""
    seen: set[bool] = set()

    @settings(max_examples=300, database=None, deadline=None)
    @given(obj=one_field)
    def probe(obj: dict[str, Any]) -> None:
        seen.add(assert_agree(obj, Limits()))

    probe()
    assert seen == {True, False}
