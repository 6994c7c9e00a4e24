"""Events in their JSON form to ``collector.v1`` protobuf messages, for producers.

The inverse of :func:`collector.models.proto.event_obj` on everything protobuf can say:
a JSON event that encodes decodes to the same outcome (a property test holds them to
it).  What protobuf cannot say raises instead of being changed silently: a
non-string id, a ``ts`` that is neither integer epoch ms nor RFC 3339, a nested or
out-of-range property, an unknown field.  Validation proper stays with the worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from collector.models.contract import EPOCH, KNOWN_FIELDS, ONE_MS
from collector.models.protogen import pb2
from collector.models.validate import parse_rfc3339_ms

_INT64 = (-(2**63), 2**63 - 1)


class Unrepresentable(ValueError):
    """The event has something a ``collector.v1.Event`` has no field or type for."""


def ts_ms(ts: object) -> int:
    """Epoch ms of an integer, an RFC 3339 string or an aware datetime."""
    if type(ts) is int:
        return ts
    if type(ts) is str:
        parsed = parse_rfc3339_ms(ts)
        if parsed is not None:
            return parsed
    if isinstance(ts, datetime) and ts.tzinfo is not None:
        return (ts - EPOCH) // ONE_MS
    raise Unrepresentable(f"ts must be epoch ms, RFC 3339 or an aware datetime, not {ts!r}")


def _string(event: Mapping[str, Any], name: str) -> str | None:
    value = event.get(name)
    if value is None or type(value) is str:
        return value
    raise Unrepresentable(f"{name} must be a string, not {type(value).__name__}")


def event_message(event: Mapping[str, Any]) -> Any:
    """A ``collector.v1.Event`` holding ``event`` (a dict in the JSON contract's form)."""
    unknown = [name for name in event if name not in KNOWN_FIELDS]
    if unknown:
        raise Unrepresentable(f"unknown fields {unknown}: a v1 Event has no field for them")
    message = pb2().Event()
    for name in ("event_id", "user_id", "type"):
        text = _string(event, name)
        if text:
            setattr(message, name, text)
    if event.get("ts") is not None:
        ts = ts_ms(event["ts"])
        if not _INT64[0] <= ts <= _INT64[1]:
            raise Unrepresentable(f"ts {ts} is out of the int64 range")
        message.ts = ts
    value = event.get("value")
    if value is not None:
        if type(value) not in (int, float):
            raise Unrepresentable(f"value must be a number, not {type(value).__name__}")
        message.value = float(value)
    for name in ("device_id", "source"):
        text = _string(event, name)
        if text is not None:
            setattr(message, name, text)
    properties = event.get("properties")
    if properties is not None:
        if not isinstance(properties, Mapping):
            raise Unrepresentable("properties must be an object")
        for key, item in properties.items():
            if type(key) is not str:
                raise Unrepresentable(f"property key {key!r} is not a string")
            _set_property(message.properties[key], key, item)
    return message


def _set_property(target: Any, key: str, item: object) -> None:
    kind = type(item)
    if item is None:
        return  # the map entry exists with no kind set: null
    if kind is bool:
        target.bool_value = item
    elif kind is int:
        if not _INT64[0] <= item <= _INT64[1]:  # type: ignore[operator]
            raise Unrepresentable(f"property {key!r} is out of the int64 range")
        target.int_value = item
    elif kind is float:
        target.double_value = item
    elif kind is str:
        target.string_value = item
    else:
        raise Unrepresentable(f"property {key!r} must be a string, number, bool or null")


def encode_event(event: Mapping[str, Any]) -> bytes:
    """``event`` as a serialised ``collector.v1.Event``."""
    encoded: bytes = event_message(event).SerializeToString()
    return encoded


def encode_envelope(events: Iterable[Mapping[str, Any]]) -> bytes:
    """``events`` (one user's) as a serialised ``collector.v1.Envelope``."""
    envelope = pb2().Envelope()
    envelope.events.extend(event_message(event) for event in events)
    encoded: bytes = envelope.SerializeToString()
    return encoded


__all__ = ["Unrepresentable", "encode_envelope", "encode_event", "event_message", "ts_ms"]
