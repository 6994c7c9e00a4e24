"""Raw messages with headers: the declared format and contract version, and protobuf.

A raw message says what it is in Kafka headers: ``content-type`` (``application/json``
or ``application/x-protobuf``, the latter with ``messageType=collector.v1.Envelope``
for a batch envelope) and ``collector-schema`` (the contract version, ``1``).  Without
``content-type`` the source's default applies (``kafka.protobuf_sources``); without
``collector-schema`` the version is 1.

A protobuf event is turned into its JSON form (:func:`event_obj`) and validated by
:func:`collector.models.decode.decode_parsed`, the very code JSON goes through, so the
two formats cannot drift apart on a rule.  proto3 has no presence for plain scalars:
``""`` for a required string and ``0`` for ``ts`` count as absent.  Unknown fields
(a newer producer's) become top-level ``#<number>`` keys, which the validator rejects
as unknown fields or drops under ``ingest.allow_unknown_fields``, as for JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from collector.models.contract import (
    JSON_CONTENT_TYPE,
    PROTOBUF_CONTENT_TYPE,
    ErrorItem,
    Limits,
    Reason,
)
from collector.models.decode import Decoded, Reject, decode_message, decode_parsed
from collector.models.protogen import pb2

CONTENT_TYPE_HEADER: Final = "content-type"
SCHEMA_HEADER: Final = "collector-schema"
#: the contract version this code reads and writes
SCHEMA_VERSION: Final = "1"
SUPPORTED_VERSIONS: Final = frozenset({SCHEMA_VERSION})
_CURRENT: Final = SCHEMA_VERSION.encode()
EVENT_MESSAGE: Final = "collector.v1.Event"
ENVELOPE_MESSAGE: Final = "collector.v1.Envelope"
ENVELOPE_CONTENT_TYPE: Final = f"{PROTOBUF_CONTENT_TYPE}; messageType={ENVELOPE_MESSAGE}"
#: media types read as protobuf (``application/protobuf`` is the IETF draft's name)
_PROTOBUF_TYPES: Final = frozenset({PROTOBUF_CONTENT_TYPE, "application/protobuf"})
_MAX_PARSE_MSG: Final = 200


@dataclass(frozen=True, slots=True)
class MediaType:
    """A raw message's declared format; ``content_type`` is its canonical spelling."""

    protobuf: bool
    envelope: bool
    content_type: str


JSON: Final = MediaType(False, False, JSON_CONTENT_TYPE)
PROTOBUF_EVENT: Final = MediaType(True, False, PROTOBUF_CONTENT_TYPE)
PROTOBUF_ENVELOPE: Final = MediaType(True, True, ENVELOPE_CONTENT_TYPE)

#: header value -> MediaType or the reason it is refused; producers use a handful
_media_cache: dict[bytes, MediaType | str] = {}
_MEDIA_CACHE_MAX: Final = 256


def parse_media_type(text: str) -> MediaType | str:
    """The MediaType a ``content-type`` value declares, or why it is not accepted."""
    media, *params = (part.strip() for part in text.split(";"))
    media = media.lower()
    if media == JSON_CONTENT_TYPE:
        return JSON
    if media not in _PROTOBUF_TYPES:
        return (f"content-type {text!r} is not {JSON_CONTENT_TYPE} or "
                f"{PROTOBUF_CONTENT_TYPE}")
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "messagetype":
            message = value.strip().strip('"')
            if message == ENVELOPE_MESSAGE:
                return PROTOBUF_ENVELOPE
            if message != EVENT_MESSAGE:
                return f"messageType must be {EVENT_MESSAGE} or {ENVELOPE_MESSAGE}, not {message!r}"
    return PROTOBUF_EVENT


def _media(value: bytes) -> MediaType | str:
    media = _media_cache.get(value)
    if media is None:
        media = parse_media_type(value.decode("utf-8", "replace"))
        if len(_media_cache) < _MEDIA_CACHE_MAX:
            _media_cache[value] = media
    return media


Headers = Iterable[tuple[str, bytes | None]] | Mapping[str, bytes | None]


def read_headers(headers: Headers) -> tuple[bytes | None, bytes | None]:
    """``(content-type, collector-schema)`` values; names are case-insensitive, last wins."""
    content_type = version = None
    items = headers if isinstance(headers, list | tuple) else _items(headers)
    for name, value in items:
        if name == CONTENT_TYPE_HEADER or (len(name) == 12 and name.lower() == "content-type"):
            content_type = value
        elif name == SCHEMA_HEADER or (len(name) == 16 and name.lower() == SCHEMA_HEADER):
            version = value
    return content_type, version


def _items(headers: Headers) -> Iterable[tuple[str, bytes | None]]:
    return headers.items() if isinstance(headers, Mapping) else headers


def declared_content_type(headers: Headers | None, default: MediaType = JSON) -> str:
    """The canonical content type a message declares (for a dead letter's replay)."""
    content_type = read_headers(headers)[0] if headers else None
    media = default if content_type is None else _media(content_type)
    return media.content_type if isinstance(media, MediaType) else JSON_CONTENT_TYPE


def declared_version(headers: Headers | None) -> str | None:
    """The ``collector-schema`` a message declares, as text (None: none, so version 1).

    An ``unsupported_version`` dead letter keeps it, so that a replay once the workers
    read that version sends it again instead of passing the message off as version 1.
    """
    version = read_headers(headers)[1] if headers else None
    return None if version is None else version.decode("utf-8", "replace")[:40]


def decode_record(
    value: bytes | None,
    key: bytes | None,
    headers: Headers | None,
    source: str,
    limits: Limits,
    now_ms: int,
    default: MediaType = JSON,
) -> Decoded:
    """:func:`decode_message` for a message with headers (see the module docstring)."""
    content_type = version = None
    if headers:
        content_type, version = read_headers(headers)
    media: MediaType | str = default if content_type is None else _media(content_type)
    if version is not None and version != _CURRENT and (
            version.decode("utf-8", "replace").strip() not in SUPPORTED_VERSIONS):
        shown = version.decode("utf-8", "replace")[:40]
        msg = f"collector-schema {shown!r} is not supported; supported: {SCHEMA_VERSION}"
        return _whole(Reason.UNSUPPORTED_VERSION, "headers.collector-schema", msg)
    if isinstance(media, str):
        return _whole(Reason.SCHEMA_VIOLATION, "headers.content-type", media)
    if not media.protobuf:
        return decode_message(value, key, source, limits, now_ms)
    return decode_protobuf(value, key, source, limits, now_ms, envelope=media.envelope)


def _whole(reason: Reason, loc: str, msg: str) -> Decoded:
    return Decoded([], [Reject(reason, [{"loc": loc, "msg": msg}])])


def decode_protobuf(
    value: bytes | None,
    key: bytes | None,
    source: str,
    limits: Limits,
    now_ms: int,
    *,
    envelope: bool = False,
) -> Decoded:
    """Parse a ``collector.v1.Event`` (or ``Envelope``) and validate it as JSON would be.

    Never raises: bytes protobuf cannot parse (and a null value) are
    ``malformed_protobuf``; everything after parsing has JSON's outcomes.
    """
    if value is not None and len(value) > limits.max_message_bytes:  # before any parsing
        msg = f"message is {len(value)} bytes, max {limits.max_message_bytes}"
        return _whole(Reason.TOO_LARGE, "", msg)
    if value is None:  # b"" is not: it is an Event (or Envelope) with no field set
        return _whole(Reason.MALFORMED_PROTOBUF, "", "null value (tombstone)")
    module = pb2()
    try:
        parsed = (module.Envelope if envelope else module.Event).FromString(value)
    except (DecodeError, RecursionError, MemoryError) as exc:
        msg = str(exc)[:_MAX_PARSE_MSG] or f"not a protobuf {EVENT_MESSAGE}"
        return _whole(Reason.MALFORMED_PROTOBUF, "", msg)
    if not envelope:
        return decode_parsed(event_obj(parsed), key, source, limits, now_ms)
    unknown = unknown_fields(parsed)
    if unknown and not limits.allow_unknown_fields:
        errors: list[ErrorItem] = [{"loc": name, "msg": "unknown field"} for name in unknown]
        return Decoded([], [Reject(Reason.SCHEMA_VIOLATION, errors)])
    events = parsed.events
    decoded = decode_parsed([event_obj(e) for e in events], key, source, limits, now_ms)
    rejects = [  # a rejected element is kept as its own serialised Event
        r if r.index is None else dataclasses.replace(r, element=_bytes(events[r.index]))
        for r in decoded.rejects
    ]
    return Decoded(decoded.events, rejects)


def _bytes(message: Any) -> bytes:
    serialised: bytes = message.SerializeToString()
    return serialised


def unknown_fields(message: Any) -> list[str]:
    """``#<number>`` of each top-level field of ``message`` this version does not know."""
    return [f"#{field.field_number}" for field in UnknownFieldSet(message)]


class _UnknownKind:
    """A property value set in a oneof member this version does not know: never valid."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unknown property kind>"


UNKNOWN_KIND: Final = _UnknownKind()


def event_obj(event: Any) -> dict[str, Any]:
    """The JSON form of a parsed ``collector.v1.Event`` (what the validator reads)."""
    obj: dict[str, Any] = {}
    if event.event_id:
        obj["event_id"] = event.event_id
    if event.user_id:
        obj["user_id"] = event.user_id
    if event.type:
        obj["type"] = event.type
    if event.ts:
        obj["ts"] = event.ts
    if event.HasField("value"):
        obj["value"] = event.value
    if event.HasField("device_id"):
        obj["device_id"] = event.device_id
    properties = event.properties
    if properties:
        obj["properties"] = {name: _property(item) for name, item in properties.items()}
    if event.HasField("source"):
        obj["source"] = event.source
    if len(UnknownFieldSet(event)):
        obj.update((name, True) for name in unknown_fields(event))
    return obj


def _property(item: Any) -> Any:
    kind = item.WhichOneof("kind")
    if len(UnknownFieldSet(item)):
        return UNKNOWN_KIND
    return None if kind is None else getattr(item, kind)


__all__ = [
    "CONTENT_TYPE_HEADER",
    "ENVELOPE_CONTENT_TYPE",
    "ENVELOPE_MESSAGE",
    "EVENT_MESSAGE",
    "JSON",
    "PROTOBUF_ENVELOPE",
    "PROTOBUF_EVENT",
    "SCHEMA_HEADER",
    "SCHEMA_VERSION",
    "SUPPORTED_VERSIONS",
    "MediaType",
    "declared_content_type",
    "declared_version",
    "decode_protobuf",
    "decode_record",
    "event_obj",
    "parse_media_type",
    "read_headers",
    "unknown_fields",
]
