"""Protobuf raw messages: headers, versions, what only protobuf can get wrong, dead letters."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from collector.config import KafkaSettings
from collector.models import Limits, Reason, dead_letter_record
from collector.models.proto import (
    ENVELOPE_CONTENT_TYPE,
    JSON,
    PROTOBUF_ENVELOPE,
    PROTOBUF_EVENT,
    declared_content_type,
    decode_protobuf,
    decode_record,
    parse_media_type,
    read_headers,
)
from collector.models.proto_encode import (
    Unrepresentable,
    encode_envelope,
    encode_event,
    event_message,
)
from collector.models.protogen import pb2

NOW = 1_795_514_400_000
LIMITS = Limits()
GOOD: dict[str, Any] = {"event_id": "e-1", "user_id": "u1", "type": "click", "ts": NOW - 1000}
PB = [("content-type", b"application/x-protobuf")]
PB_ENV = [("content-type", ENVELOPE_CONTENT_TYPE.encode())]
P, S, V = Reason.MALFORMED_PROTOBUF, Reason.SCHEMA_VIOLATION, Reason.UNSUPPORTED_VERSION


def reasons(decoded: Any) -> list[tuple[Reason, int | None, list[str]]]:
    return [(r.reason, r.index, [e["loc"] for e in r.errors]) for r in decoded.rejects]


def dead_letter(decoded: Any, raw: bytes | None, headers: Any = PB) -> dict[str, Any]:
    """The dead letter the processor writes for the first reject (headers: as read)."""
    out = dead_letter_record(decoded.rejects[0], source="web", topic="collect.raw.web",
                             partition=0, offset=7, raw=raw, received_at_ms=NOW,
                             content_type=declared_content_type(headers))
    parsed: dict[str, Any] = orjson.loads(out)
    return parsed


@pytest.mark.parametrize(("text", "expected"), [
    ("application/json", JSON),
    ("application/json; charset=utf-8", JSON),
    ("application/x-protobuf", PROTOBUF_EVENT),
    ("Application/X-Protobuf", PROTOBUF_EVENT),
    ("application/protobuf", PROTOBUF_EVENT),
    ("application/x-protobuf; messageType=collector.v1.Event", PROTOBUF_EVENT),
    ("application/x-protobuf;messagetype=\"collector.v1.Envelope\"", PROTOBUF_ENVELOPE),
    (ENVELOPE_CONTENT_TYPE, PROTOBUF_ENVELOPE),
])
def test_media_types(text: str, expected: Any) -> None:
    assert parse_media_type(text) == expected


@pytest.mark.parametrize("text", ["text/plain", "application/x-protobuf; messageType=x.Y", ""])
def test_refused_media_types_say_why(text: str) -> None:
    assert isinstance(parse_media_type(text), str)


def test_headers_are_case_insensitive_and_the_last_one_wins() -> None:
    headers = [("Content-Type", b"a"), ("x", b"y"), ("CONTENT-TYPE", b"b"),
               ("Collector-Schema", b"1")]
    assert read_headers(headers) == (b"b", b"1")
    assert read_headers({"content-type": b"c"}) == (b"c", None)


def test_protobuf_event_is_accepted_like_its_json() -> None:
    event = {**GOOD, "value": 3, "properties": {"a": 1, "b": "x", "c": None, "d": 1.5}}
    from_proto = decode_record(encode_event(event), b"u1", PB, "web", LIMITS, NOW)
    from_json = decode_record(orjson.dumps(event), b"u1", [], "web", LIMITS, NOW)
    assert from_proto.events == from_json.events and from_proto.events[0]["value"] == 3.0


def test_source_default_decides_without_a_header_and_the_header_overrides_it() -> None:
    proto, text = encode_event(GOOD), orjson.dumps(GOOD)
    assert decode_record(proto, None, None, "web", LIMITS, NOW, PROTOBUF_EVENT).events
    assert reasons(decode_record(proto, None, None, "web", LIMITS, NOW))[0][0] == (
        Reason.MALFORMED_JSON)
    json_header = [("content-type", b"application/json")]
    assert decode_record(text, None, json_header, "web", LIMITS, NOW, PROTOBUF_EVENT).events


@pytest.mark.parametrize(("version", "accepted"), [(b"1", True), (b" 1 ", True), (b"2", False),
                                                   (b"", False), (b"v1", False)])
def test_contract_version_header(version: bytes, accepted: bool) -> None:
    for value, headers in ((orjson.dumps(GOOD), []), (encode_event(GOOD), PB)):
        decoded = decode_record(value, None, [*headers, ("collector-schema", version)], "web",
                                LIMITS, NOW)
        if accepted:
            assert decoded.events
        else:
            assert reasons(decoded) == [(V, None, ["headers.collector-schema"])]
            letter = dead_letter(decoded, value, headers)
            assert letter["reason"] == "unsupported_version"
            assert letter["content_type"] == declared_content_type(headers)


def test_unknown_content_type_is_a_schema_violation_kept_for_replay() -> None:
    raw = orjson.dumps(GOOD)
    decoded = decode_record(raw, None, [("content-type", b"text/csv")], "web", LIMITS, NOW)
    assert reasons(decoded) == [(S, None, ["headers.content-type"])]
    assert dead_letter(decoded, raw, [("content-type", b"text/csv")])["payload"] == raw.decode()


def test_malformed_protobuf_keeps_the_payload_base64_even_when_it_is_utf8() -> None:
    raw = b"\x0a\x05ab"  # field 1, length 5, only 2 bytes follow: ASCII, not protobuf
    decoded = decode_record(raw, b"u1", PB, "web", LIMITS, NOW)
    assert reasons(decoded) == [(P, None, [""])]
    letter = dead_letter(decoded, raw)
    assert (letter["reason"], letter["payload_encoding"]) == ("malformed_protobuf", "base64")
    assert base64.b64decode(letter["payload"]) == raw
    assert letter["content_type"] == "application/x-protobuf"


@pytest.mark.parametrize("raw", [b"\xff\xff\xff", b"\x12\x02\xff\xfe",  # bad UTF-8 user_id
                                 b"\x20" + b"\xff" * 11])  # a varint over 10 bytes
def test_bytes_protobuf_cannot_parse_are_malformed(raw: bytes) -> None:
    assert reasons(decode_protobuf(raw, None, "web", LIMITS, NOW))[0][0] == P


def test_tombstone_and_size() -> None:
    tombstone = decode_protobuf(None, b"u1", "web", LIMITS, NOW)
    assert reasons(tombstone) == [(P, None, [""])]
    assert dead_letter(tombstone, None)["payload"] is None
    big = encode_event({**GOOD, "device_id": "d"}) + b"\x0a\x01x" * 30_000  # 90 kB
    assert reasons(decode_protobuf(big, b"u1", "web", LIMITS, NOW))[0][0] == Reason.TOO_LARGE


def test_an_empty_value_is_an_event_without_fields() -> None:
    decoded = decode_protobuf(b"", None, "web", LIMITS, NOW)
    assert reasons(decoded) == [(S, None, ["event_id", "user_id", "type", "ts"])]


def test_non_finite_value_is_a_schema_violation() -> None:
    for number in (float("nan"), float("inf")):
        message = event_message(GOOD)
        message.value = number
        decoded = decode_protobuf(message.SerializeToString(), None, "web", LIMITS, NOW)
        assert reasons(decoded) == [(S, None, ["value"])]


def test_unknown_fields_are_rejected_unless_allowed_like_json() -> None:
    raw = encode_event(GOOD) + b"\x48\x05"  # field 9, varint: a newer producer's field
    assert reasons(decode_protobuf(raw, None, "web", LIMITS, NOW)) == [(S, None, ["#9"])]
    lenient = decode_protobuf(raw, None, "web", Limits(allow_unknown_fields=True), NOW)
    assert lenient.events and "#9" not in lenient.events[0]


def test_a_property_of_an_unknown_kind_is_never_read_as_null() -> None:
    message = event_message({**GOOD, "properties": {"k": None}})
    entry = message.properties["k"]
    entry.MergeFromString(b"\x28\x01")  # field 5 of PropertyValue: a kind v1 lacks
    raw = message.SerializeToString()
    for limits in (LIMITS, Limits(allow_unknown_fields=True)):
        assert reasons(decode_protobuf(raw, None, "web", limits, NOW)) == [
            (S, None, ["properties.k"])]


def test_envelope_elements_are_dead_lettered_as_their_own_protobuf_event() -> None:
    bad = {**GOOD, "event_id": "e-2", "type": "Bad"}
    raw = encode_envelope([GOOD, bad])
    decoded = decode_record(raw, b"u1", PB_ENV, "web", LIMITS, NOW)
    assert [e["event_id"] for e in decoded.events] == ["e-1"]
    assert reasons(decoded) == [(S, 1, ["type"])]
    letter = dead_letter(decoded, raw, PB_ENV)
    assert (letter["index"], letter["content_type"]) == (1, "application/x-protobuf")
    replayed = decode_protobuf(base64.b64decode(letter["payload"]), None, "web", LIMITS, NOW)
    assert reasons(replayed) == [(S, None, ["type"])]


def test_envelope_rules_match_json() -> None:
    raw = encode_envelope([GOOD])
    assert reasons(decode_record(raw, None, PB_ENV, "web", LIMITS, NOW)) == [(S, None, ["key"])]
    assert reasons(decode_record(b"", b"u1", PB_ENV, "web", LIMITS, NOW)) == [(S, None, [""])]
    whole = decode_record(raw + b"\x10\x01", b"u1", PB_ENV, "web", LIMITS, NOW)
    assert reasons(whole) == [(S, None, ["#2"])]
    assert dead_letter(whole, raw, PB_ENV)["content_type"] == ENVELOPE_CONTENT_TYPE
    assert decode_record(raw + b"\x10\x01", b"u1", PB_ENV, "web",
                         Limits(allow_unknown_fields=True), NOW).events


def test_declared_content_type_for_internal_errors() -> None:
    assert declared_content_type(None) == "application/json"
    assert declared_content_type(None, PROTOBUF_EVENT) == "application/x-protobuf"
    assert declared_content_type(PB_ENV) == ENVELOPE_CONTENT_TYPE
    assert declared_content_type([("content-type", b"text/csv")]) == "application/json"


@pytest.mark.parametrize("event", [
    {**GOOD, "extra": 1}, {**GOOD, "ts": "yesterday"}, {**GOOD, "value": "1"},
    {**GOOD, "properties": {"a": [1]}}, {**GOOD, "properties": {"a": 2**64}},
    {**GOOD, "event_id": 5},
])
def test_encoding_refuses_what_protobuf_cannot_carry(event: dict[str, Any]) -> None:
    with pytest.raises(Unrepresentable):
        encode_event(event)


def test_encoding_converts_rfc3339_ts() -> None:
    message = pb2().Event.FromString(encode_event({**GOOD, "ts": "2026-11-24T12:00:00+02:00"}))
    assert message.ts == NOW


def test_protobuf_sources_must_be_sources() -> None:
    assert KafkaSettings(protobuf_sources="mobile,web").protobuf_sources == ["mobile", "web"]
    with pytest.raises(ValueError, match="not in sources"):
        KafkaSettings(protobuf_sources=["nope"])
