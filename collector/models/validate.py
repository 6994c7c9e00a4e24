"""The lean event validator: the contract in plain Python, for every event on the hot path.

Pydantic costs several microseconds per event; at 50k events/s per worker that is a
large share of a core, so this module checks the same rules by hand: exact ``type()``
tests (which also keep ``bool`` out of ``int``), precompiled regexes and no allocation
beyond the output dict on the happy path.  ``tests/unit/test_validator_equivalence.py``
holds it to the pydantic reference in :mod:`collector.models.reference`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from collector.models.contract import (
    EPOCH,
    KNOWN_FIELDS,
    MAX_DEVICE_ID_CHARS,
    MAX_ID_CHARS,
    MAX_PROPERTIES,
    MAX_PROPERTY_KEY_CHARS,
    MAX_PROPERTY_STR_CHARS,
    MIN_TS_MS,
    ONE_MS,
    RFC3339_RE,
    TYPE_RE,
    USER_ID_RE,
    ErrorItem,
    Limits,
    ts_range_error,
)

_user_id_match = USER_ID_RE.fullmatch
_type_match = TYPE_RE.fullmatch
_rfc3339_match = RFC3339_RE.fullmatch
_fromisoformat = datetime.fromisoformat
_known_superset = KNOWN_FIELDS.issuperset

#: Event types that passed the regex.  Types are few (a product's event catalogue), so
#: a bounded set turns the common check into one hash lookup; only valid str get in.
_seen_types: set[str] = set()
_MAX_SEEN_TYPES = 4096


def _new_type_ok(etype: str) -> bool:
    if _type_match(etype) is None:
        return False
    if len(_seen_types) < _MAX_SEEN_TYPES:
        _seen_types.add(etype)
    return True


_NOT_OBJECT = "an event must be a JSON object"
_TS_SHAPE = (
    "ts must be integer epoch milliseconds or an RFC 3339 date-time with an offset "
    "(e.g. 2026-11-24T10:00:00Z)"
)


def parse_rfc3339_ms(text: str) -> int | None:
    """Epoch ms (UTC, truncated) of an RFC 3339 date-time, or None if it is not one.

    ``fromisoformat`` alone is too lenient (no offset, week dates, ``+02:60``), so the
    shape is checked by regex first; the regex also keeps to ASCII digits.
    """
    match = _rfc3339_match(text)
    if match is None:
        return None
    if text[10] == "t" or match[8] == "z":
        text = text.upper()  # lower-case 't'/'z' are RFC 3339 but not fromisoformat
    try:
        moment = _fromisoformat(text)
    except ValueError:  # e.g. 2026-02-30, hour 24, second 60, year 0
        return None
    return (moment - EPOCH) // ONE_MS


def _field_error(obj: dict[Any, Any], field: str, rule: str) -> ErrorItem:
    if field not in obj:
        return {"loc": field, "msg": "field required"}
    return {"loc": field, "msg": rule}


def validate_event(
    obj: object, source: str, limits: Limits, now_ms: int
) -> tuple[dict[str, Any] | None, list[ErrorItem]]:
    """Check one parsed event; return ``(normalised, [])`` or ``(None, errors)``.

    Every broken rule is reported (not just the first) so that producers can fix a
    payload in one round trip and so the result can be compared with the reference.
    """
    if type(obj) is not dict:
        return None, [{"loc": "", "msg": _NOT_OBJECT}]
    errors: list[ErrorItem] = []
    get = obj.get

    event_id = get("event_id")
    if type(event_id) is not str or not 0 < len(event_id) <= MAX_ID_CHARS:
        errors.append(_field_error(obj, "event_id", "event_id must be a string of 1-64 chars"))
    user_id = get("user_id")
    if type(user_id) is not str or _user_id_match(user_id) is None:
        errors.append(
            _field_error(obj, "user_id", "user_id must be 1-64 chars of [A-Za-z0-9_.:@-]")
        )
    etype = get("type")
    if type(etype) is not str or (etype not in _seen_types and not _new_type_ok(etype)):
        errors.append(_field_error(obj, "type", "type must match ^[a-z][a-z0-9_.]{0,63}$"))

    ts = get("ts")
    ts_ms: int | None
    if type(ts) is int:
        ts_ms = ts
    elif type(ts) is str:
        ts_ms = parse_rfc3339_ms(ts)
    else:
        ts_ms = None
    if ts_ms is None:
        errors.append(_field_error(obj, "ts", _TS_SHAPE))
    elif ts_ms < MIN_TS_MS or ts_ms > now_ms + limits.future_skew_ms:
        errors.append({"loc": "ts", "msg": ts_range_error(ts_ms, limits, now_ms) or ""})

    value = get("value")
    if value is not None:
        vtype = type(value)
        if vtype is float:
            if value - value != 0.0:  # NaN and +-inf, without a call
                errors.append({"loc": "value", "msg": "value must be a finite number"})
        elif vtype is int:
            try:
                value = float(value)
            except OverflowError:
                errors.append({"loc": "value", "msg": "value must be a finite number"})
        else:
            errors.append({"loc": "value", "msg": "value must be a number (not a bool)"})

    device_id = get("device_id")
    if device_id is not None and (
        type(device_id) is not str or len(device_id) > MAX_DEVICE_ID_CHARS
    ):
        errors.append({"loc": "device_id", "msg": "device_id must be a string of <= 64 chars"})

    properties = get("properties")
    if properties is None:
        properties = {}
    elif type(properties) is not dict:
        errors.append({"loc": "properties", "msg": "properties must be a JSON object"})
    else:
        _check_properties(properties, errors)

    payload_source = get("source")
    if payload_source is not None and payload_source != source:
        errors.append({"loc": "source", "msg": f"source must be absent or {source!r}"})

    if not _known_superset(obj) and not limits.allow_unknown_fields:
        errors.extend(
            {"loc": str(key), "msg": "unknown field"} for key in obj if key not in KNOWN_FIELDS
        )

    if errors:
        return None, errors
    return {
        "event_id": event_id,
        "user_id": user_id,
        "type": etype,
        "ts": ts_ms,
        "value": value,
        "device_id": device_id,
        "properties": properties,
        "source": source,
    }, errors


def _check_properties(properties: dict[Any, Any], errors: list[ErrorItem]) -> None:
    """Append the errors of a properties object (the size only once its items are fine)."""
    start = len(errors)
    for key, item in properties.items():
        if type(key) is not str:
            errors.append({"loc": f"properties.{key}", "msg": "keys must be strings"})
            continue
        if len(key) > MAX_PROPERTY_KEY_CHARS:
            errors.append({"loc": f"properties.{key}", "msg": "key is longer than 64 chars"})
        itype = type(item)
        if itype is str:
            if len(item) > MAX_PROPERTY_STR_CHARS:
                errors.append({"loc": f"properties.{key}", "msg": "string over 256 chars"})
        elif itype is float:
            if item - item != 0.0:
                errors.append({"loc": f"properties.{key}", "msg": "number must be finite"})
        elif not (itype is int or itype is bool or item is None):
            errors.append(
                {"loc": f"properties.{key}", "msg": "must be a string, number, bool or null"}
            )
    if len(errors) == start and len(properties) > MAX_PROPERTIES:
        errors.append({"loc": "properties", "msg": "properties has more than 32 keys"})


__all__ = ["parse_rfc3339_ms", "validate_event"]
