"""HTTP ingest of protobuf bodies and the Collector-Schema header (no HTTP server)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from collector.models import Limits
from collector.models.proto import ENVELOPE_CONTENT_TYPE, JSON, PROTOBUF_ENVELOPE, PROTOBUF_EVENT
from collector.models.proto_encode import encode_envelope, encode_event
from collector.web.ingest_logic import BodyError, TooManyEvents, plan_ingest
from collector.web.ingest_proto import (
    UnsupportedMediaType,
    UnsupportedVersion,
    body_format,
    check_version,
    parse_protobuf_body,
)

NOW = 1_795_514_400_000
GOOD: dict[str, Any] = {"event_id": "e-1", "user_id": "u1", "type": "click", "ts": NOW - 1000}


@pytest.mark.parametrize(("header", "media"), [
    (None, JSON), ("application/json", JSON), ("application/x-ndjson", JSON),
    ("text/plain", JSON), ("application/x-protobuf", PROTOBUF_EVENT),
    (ENVELOPE_CONTENT_TYPE, PROTOBUF_ENVELOPE),
])
def test_body_format(header: str | None, media: Any) -> None:
    assert body_format(header) == media


def test_a_protobuf_body_of_an_unknown_message_type_is_415() -> None:
    with pytest.raises(UnsupportedMediaType) as info:
        body_format("application/x-protobuf; messageType=foo.Bar")
    assert info.value.status == 415


def test_collector_schema_header() -> None:
    check_version(None)
    check_version("1")
    with pytest.raises(UnsupportedVersion, match="unsupported_version") as info:
        check_version("2")
    assert info.value.status == 400


def test_a_protobuf_event_and_envelope_plan_like_their_json() -> None:
    other = {**GOOD, "event_id": "e-2", "user_id": "u2", "properties": {"a": 1}}
    bad = {**GOOD, "event_id": "e-3", "type": "Bad"}
    items = parse_protobuf_body(encode_envelope([GOOD, other, bad]), PROTOBUF_ENVELOPE, 10)
    from_proto = plan_ingest(items, "web", Limits(), NOW)
    from_json = plan_ingest(orjson.loads(orjson.dumps([GOOD, other, bad])), "web", Limits(), NOW)
    assert from_proto.answer() == from_json.answer()
    assert from_proto.accepted == 2 and from_proto.rejected[0]["index"] == 2
    assert sorted(from_proto.envelopes) == sorted(from_json.envelopes)
    single = parse_protobuf_body(encode_event(GOOD), PROTOBUF_EVENT, 10)
    assert plan_ingest(single, "web", Limits(), NOW).envelopes == [
        ("u1", orjson.dumps(GOOD))]


def test_unusable_protobuf_bodies() -> None:
    with pytest.raises(BodyError, match="not a protobuf"):
        parse_protobuf_body(b"\x0a\x05ab", PROTOBUF_EVENT, 10)
    with pytest.raises(BodyError, match="empty"):
        parse_protobuf_body(b"", PROTOBUF_ENVELOPE, 10)
    with pytest.raises(TooManyEvents):
        parse_protobuf_body(encode_envelope([GOOD] * 3), PROTOBUF_ENVELOPE, 2)
    unknown = encode_envelope([GOOD]) + b"\x10\x01"
    with pytest.raises(BodyError, match="unknown fields"):
        parse_protobuf_body(unknown, PROTOBUF_ENVELOPE, 10)
    assert parse_protobuf_body(unknown, PROTOBUF_ENVELOPE, 10, allow_unknown_fields=True)
