"""HTTP ingest of protobuf bodies and of the contract version header, without the HTTP.

A body is protobuf when its ``Content-Type`` says so (``application/x-protobuf``, with
``messageType=collector.v1.Envelope`` for an envelope); any other type is read as
JSON or NDJSON, as before.  Each event becomes its JSON form, so from there on a
protobuf body takes exactly the JSON path: same validation, same answer, and JSON
envelopes on the raw topic (marked ``content-type: application/json``).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError

from collector.models.proto import (
    EVENT_MESSAGE,
    JSON,
    SCHEMA_VERSION,
    SUPPORTED_VERSIONS,
    MediaType,
    event_obj,
    parse_media_type,
    unknown_fields,
)
from collector.models.protogen import pb2
from collector.web.ingest_logic import BodyError, TooManyEvents

_PROTOBUF_PREFIXES = ("application/x-protobuf", "application/protobuf")


class UnsupportedMediaType(BodyError):
    """A protobuf body naming a message type other than Event or Envelope (415)."""

    status = 415


class UnsupportedVersion(BodyError):
    """A ``Collector-Schema`` header this worker does not read (400)."""


def body_format(content_type: str | None) -> MediaType:
    """How to read a body with this ``Content-Type``: protobuf, or JSON/NDJSON."""
    if not content_type or not content_type.strip().lower().startswith(_PROTOBUF_PREFIXES):
        return JSON
    media = parse_media_type(content_type)
    if isinstance(media, str):
        raise UnsupportedMediaType(media)
    return media


def check_version(header: str | None) -> None:
    """Refuse a request whose ``Collector-Schema`` is not a supported version."""
    if header is not None and header.strip() not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(
            f"unsupported_version: Collector-Schema {header[:40]!r} is not supported; "
            f"supported: {SCHEMA_VERSION}")


def parse_protobuf_body(
    body: bytes, media: MediaType, max_events: int, allow_unknown_fields: bool = False
) -> list[Any]:
    """The events of a protobuf body as JSON-form items for :class:`Planner`.

    Over HTTP an Envelope may hold several users' events (a JSON array may too):
    they are grouped per user before they are produced.
    """
    if not body:
        raise BodyError("empty body")
    module = pb2()
    try:
        parsed = (module.Envelope if media.envelope else module.Event).FromString(body)
    except (DecodeError, RecursionError) as exc:
        name = "collector.v1.Envelope" if media.envelope else EVENT_MESSAGE
        raise BodyError(f"body is not a protobuf {name}: {str(exc)[:200]}") from None
    if not media.envelope:
        return [event_obj(parsed)]
    unknown = unknown_fields(parsed)
    if unknown and not allow_unknown_fields:
        raise BodyError(f"the Envelope has unknown fields {unknown}")
    if len(parsed.events) > max_events:
        raise TooManyEvents(f"{len(parsed.events)} events; at most {max_events} per request "
                            "(ingest.max_request_events): split it")
    return [event_obj(event) for event in parsed.events]
