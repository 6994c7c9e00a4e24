"""From raw Kafka message bytes to valid events and dead-letter rejects, never raising.

A raw message holds one event object or a batch envelope (a JSON array of events keyed
by their user_id).  Whatever the bytes, :func:`decode_message` returns a
:class:`Decoded` in which ``len(events) + len(rejects)`` is 1 for a message rejected as
a whole and the number of elements otherwise, so a poison message can never stall a
partition and nothing is lost silently.

Parsing is orjson's, which decides what ``malformed_json`` means: invalid UTF-8, a BOM,
``NaN``/``Infinity`` literals, lone surrogate escapes, numbers beyond the double range
and nesting deeper than 1024 are parse errors.  Integers beyond 64 bits but within the
double range come back as floats, so as ``ts`` they are a ``schema_violation`` (not an
integer) and as ``value`` an ordinary finite number; older orjson releases refused
them instead, making them ``malformed_json``.  Either way they never crash.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from collector.models.contract import (
    JSON_CONTENT_TYPE,
    PROTOBUF_CONTENT_TYPE,
    ErrorItem,
    Limits,
    Reason,
    format_ms,
)
from collector.models.validate import validate_event

#: Kafka header carrying the reason on every dead-letter record (for routing/filters).
DEADLETTER_REASON_HEADER: Final = "x-collector-reason"

_MAX_PARSE_MSG: Final = 200


@dataclass(frozen=True, slots=True)
class Reject:
    """A message (``index`` None) or one envelope element (``index`` set) that failed.

    ``element`` is the parsed JSON element, or a protobuf element's serialised bytes.
    """

    reason: Reason
    errors: list[ErrorItem]
    index: int | None = None
    element: Any = None


@dataclass(frozen=True, slots=True)
class Decoded:
    """The outcome of one raw message: valid normalised events in order, and rejects."""

    events: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def _whole(reason: Reason, loc: str, msg: str) -> Decoded:
    return Decoded([], [Reject(reason, [{"loc": loc, "msg": msg}])])


def decode_message(
    value: bytes | None, key: bytes | None, source: str, limits: Limits, now_ms: int
) -> Decoded:
    """Parse and validate one raw message of ``source``'s topic (see ``docs/events.md``)."""
    if value is not None and len(value) > limits.max_message_bytes:  # before any parsing
        return _whole(
            Reason.TOO_LARGE, "", f"message is {len(value)} bytes, max {limits.max_message_bytes}"
        )
    if not value:
        return _whole(Reason.MALFORMED_JSON, "", "empty message")
    try:
        obj = orjson.loads(value)
    except (orjson.JSONDecodeError, RecursionError, MemoryError) as exc:
        return _whole(Reason.MALFORMED_JSON, "", str(exc)[:_MAX_PARSE_MSG] or "invalid JSON")
    # decode_parsed's first steps, inline: a call less per message on the hot path
    user_key: str | None = None
    if key:  # an empty key counts as no key, as many producers send b"" for "none"
        try:
            user_key = key.decode("utf-8")
        except UnicodeDecodeError:
            return _whole(Reason.SCHEMA_VIOLATION, "key", "message key is not valid UTF-8")
    if type(obj) is not list:
        outcome = _element(obj, None, user_key, source, limits, now_ms)
        if isinstance(outcome, Reject):
            return Decoded([], [outcome])
        return Decoded([outcome], [])
    return _envelope(obj, user_key, source, limits, now_ms)


def decode_parsed(
    obj: object, key: bytes | None, source: str, limits: Limits, now_ms: int
) -> Decoded:
    """Validate a parsed message: a list is a batch envelope, anything else one event.

    Shared by JSON and protobuf (whose events arrive here as their JSON form), so both
    formats meet the same rules with the same reasons.
    """
    user_key: str | None = None
    if key:  # an empty key counts as no key, as many producers send b"" for "none"
        try:
            user_key = key.decode("utf-8")
        except UnicodeDecodeError:
            return _whole(Reason.SCHEMA_VIOLATION, "key", "message key is not valid UTF-8")

    if type(obj) is not list:
        outcome = _element(obj, None, user_key, source, limits, now_ms)
        if isinstance(outcome, Reject):
            return Decoded([], [outcome])
        return Decoded([outcome], [])
    return _envelope(obj, user_key, source, limits, now_ms)


def _envelope(
    obj: list[Any], user_key: str | None, source: str, limits: Limits, now_ms: int
) -> Decoded:
    if user_key is None:
        return _whole(Reason.SCHEMA_VIOLATION, "key", "a batch envelope needs a key (user_id)")
    if not obj:
        return _whole(Reason.SCHEMA_VIOLATION, "", "a batch envelope must not be empty")
    if len(obj) > limits.max_batch_events:
        return _whole(
            Reason.SCHEMA_VIOLATION,
            "",
            f"a batch envelope holds at most {limits.max_batch_events} events, not {len(obj)}",
        )
    decoded = Decoded()
    for index, element in enumerate(obj):
        outcome = _element(element, index, user_key, source, limits, now_ms)
        if isinstance(outcome, Reject):
            decoded.rejects.append(outcome)
        else:
            decoded.events.append(outcome)
    return decoded


def _element(
    obj: object, index: int | None, user_key: str | None, source: str, limits: Limits, now_ms: int
) -> dict[str, Any] | Reject:
    """Validate one event and match its user_id to the key; a reject keeps the element."""
    try:
        event, errors = validate_event(obj, source, limits, now_ms)
    except Exception as exc:  # a validator bug must not become a poison pill
        event, errors = None, [{"loc": "", "msg": f"internal validation error: {exc!r}"[:200]}]
    if user_key is not None:
        user_id = event["user_id"] if event is not None else _get(obj, "user_id")
        if isinstance(user_id, str) and user_id != user_key:
            errors.append({"loc": "user_id", "msg": "user_id must equal the message key"})
            event = None
    if event is None:
        return Reject(Reason.SCHEMA_VIOLATION, errors, index, obj if index is not None else None)
    return event


def _get(obj: object, name: str) -> object:
    return obj.get(name) if isinstance(obj, dict) else None


def _text_or_base64(raw: bytes) -> tuple[str, str]:
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def _record(
    reason: Reason,
    errors: list[ErrorItem],
    index: int | None,
    payload: tuple[str | None, str | None],
    source: str,
    topic: str,
    partition: int,
    offset: int,
    received_at_ms: int,
    content_type: str = JSON_CONTENT_TYPE,
    schema_version: str | None = None,
) -> bytes:
    record: dict[str, Any] = {
        "reason": str(reason),
        "errors": [{"loc": e["loc"], "msg": e["msg"]} for e in errors],
        "source": source,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "received_at": format_ms(received_at_ms),
        "index": index,
        "payload": payload[0],
        "payload_encoding": payload[1],
        "content_type": content_type,
    }
    if schema_version is not None:  # only an unsupported_version letter has one
        record["schema_version"] = schema_version
    return orjson.dumps(record)


def dead_letter_record(
    reject: Reject,
    *,
    source: str,
    topic: str,
    partition: int,
    offset: int,
    raw: bytes | None,
    received_at_ms: int,
    content_type: str = JSON_CONTENT_TYPE,
    schema_version: str | None = None,
) -> bytes:
    """The JSON dead-letter record for a reject from :func:`decode_message`.

    A whole-message reject carries the original bytes (text if UTF-8, else base64) so it
    can be replayed exactly; an element reject carries just that element as JSON.  An
    element orjson cannot write back (nesting over 254 levels) falls back to the whole
    message; ``index`` still says which element failed.  Protobuf (``content_type``) is
    binary: always base64, an element as its own serialised ``Event``.
    """
    payload: tuple[str | None, str | None] = (None, None)  # the value was null
    if content_type.startswith(PROTOBUF_CONTENT_TYPE):
        binary = raw
        if reject.index is not None:  # a single Event, whatever the message was
            binary, content_type = reject.element, PROTOBUF_CONTENT_TYPE
        if isinstance(binary, bytes):
            payload = (base64.b64encode(binary).decode("ascii"), "base64")
    elif reject.index is not None:
        try:
            payload = (orjson.dumps(reject.element).decode("utf-8"), "utf-8")
        except (TypeError, orjson.JSONEncodeError, RecursionError):
            if raw is not None:
                payload = _text_or_base64(raw)
    elif raw is not None:
        payload = _text_or_base64(raw)
    return _record(
        reject.reason,
        reject.errors,
        reject.index,
        payload,
        source,
        topic,
        partition,
        offset,
        received_at_ms,
        content_type,
        schema_version,
    )


def dead_letter_for_event(
    reason: Reason,
    event: dict[str, Any],
    errors: list[ErrorItem],
    *,
    source: str,
    topic: str,
    partition: int,
    offset: int,
    received_at_ms: int,
) -> bytes:
    """A dead-letter record for an already validated event (e.g. ``late``, ``sink_rejected``).

    The payload is the normalised event as JSON, which is what a replay would produce.
    """
    payload = (orjson.dumps(event).decode("utf-8"), "utf-8")
    return _record(reason, errors, None, payload, source, topic, partition, offset, received_at_ms)
