"""The JSON and the protobuf decoder must decide alike on equivalent messages.

For each generated event (or envelope of them) that protobuf can carry, the JSON bytes
go through :func:`decode_message` and the protobuf bytes, encoded by the producer
helper's :func:`encode_event`, through :func:`decode_protobuf`.  Compared: the
accepted normalised events (values and types), and per reject its reason, its index
and the SET of error locations.  Messages are not compared: proto3 cannot tell ``""``
from absent, so one side says "field required" where the other says "1-64 chars".
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from collector.models import Decoded, Limits, decode_message
from collector.models.contract import MIN_TS_MS
from collector.models.proto import decode_protobuf
from collector.models.proto_encode import Unrepresentable, encode_envelope, encode_event

NOW = 1_795_514_400_000  # 2026-11-24T10:00:00Z
INT64 = st.integers(-(2**63), 2**63 - 1)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
ABSENT = object()


def field(valid: st.SearchStrategy[Any], *odd: Any) -> st.SearchStrategy[Any]:
    """A field's valid values (mostly), representable invalid ones, null or absent."""
    bad = st.sampled_from([None, ABSENT, *odd]) if odd else st.sampled_from([None, ABSENT])
    return valid | valid | valid | bad


IDS = st.text(min_size=1, max_size=70)
USERS = st.sampled_from(["u1", "u-2", "a.b:c@d_e"]) | st.text(max_size=66)
TYPES = st.sampled_from(["click", "view", "a.b_c"]) | st.text(max_size=66)
TS = (
    st.integers(MIN_TS_MS - 5, NOW + 300_001)
    | st.sampled_from([0, -1, MIN_TS_MS - 1, MIN_TS_MS, NOW + 300_000, NOW + 300_001])
    | INT64
)
PROPERTY_VALUES = (
    st.none() | st.booleans() | INT64 | FINITE | st.text(max_size=260)
    | st.sampled_from([0, -0.0, 1.0, "", True])
)
PROPERTIES = st.dictionaries(
    st.text(max_size=66) | st.sampled_from(["color", "k"]), PROPERTY_VALUES, max_size=34
)


@st.composite
def events(draw: st.DrawFn, user: str | None = None) -> dict[str, Any]:
    drawn = {
        "event_id": draw(field(IDS, "")),
        "user_id": user if user is not None and draw(st.integers(0, 9)) else draw(
            field(USERS, "")),
        "type": draw(field(TYPES, "", "Click")),
        "ts": draw(field(TS)),
        "value": draw(field(FINITE | INT64, 0, -0.0)),
        "device_id": draw(field(st.text(max_size=66), "")),
        "properties": draw(field(PROPERTIES, {})),
        "source": draw(st.sampled_from([ABSENT, ABSENT, None, "web", "mobile", ""])),
    }
    return {k: v for k, v in drawn.items() if v is not ABSENT}


def outcome(decoded: Decoded) -> tuple[Any, ...]:
    rejects = [(r.reason, r.index, frozenset(e["loc"] for e in r.errors))
               for r in decoded.rejects]
    return decoded.events, rejects


def both(json_value: bytes, proto_value: bytes, key: bytes | None, limits: Limits,
         envelope: bool = False) -> None:
    from_json = decode_message(json_value, key, "web", limits, NOW)
    from_proto = decode_protobuf(proto_value, key, "web", limits, NOW, envelope=envelope)
    assert outcome(from_proto) == outcome(from_json)
    for event in from_proto.events:  # value types too: 1 and 1.0 compare equal
        assert [type(v) for v in event.values()] == [
            type(v) for v in from_json.events[from_proto.events.index(event)].values()]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events(), st.sampled_from([None, b"", b"u1", b"other"]), st.booleans())
@example({"event_id": "", "user_id": "", "type": "", "ts": 0}, b"u1", False)
@example({"event_id": "e", "user_id": "u1", "type": "t", "ts": NOW, "value": 2**63 - 1},
         None, False)
@example({"event_id": "e", "user_id": "u1", "type": "t", "ts": NOW,
          "properties": {"a": None, "b": 1, "c": 1.0, "d": True, "e": ""}}, None, False)
def test_single_events_decide_alike(event: dict[str, Any], key: bytes | None,
                                    lenient: bool) -> None:
    try:
        proto = encode_event(event)
    except Unrepresentable:
        assume(False)
    both(orjson.dumps(event), proto, key, Limits(allow_unknown_fields=lenient))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events(user="u1"), min_size=0, max_size=6),
       st.sampled_from([None, b"u1", b"u1", b"u2"]), st.integers(1, 8))
def test_envelopes_decide_alike(items: list[dict[str, Any]], key: bytes | None,
                                max_batch: int) -> None:
    try:
        proto = encode_envelope(items)
    except Unrepresentable:
        assume(False)
    both(orjson.dumps(items), proto, key, Limits(max_batch_events=max_batch), envelope=True)
