"""HTTP ingest without the HTTP: parse a body, validate each event, group per user.

Rejected events are returned to the caller, never dead-lettered: they never entered
the system.  Accepted events are grouped into one envelope per user so every Kafka
message pays Faust's per-message cost once for many events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from collector.models import ErrorItem, Limits, validate_event


class BodyError(ValueError):
    """The body as a whole is unusable (not JSON, not NDJSON, wrong shape)."""


@dataclass(slots=True)
class IngestPlan:
    """What to produce (envelopes per user) and what to tell the caller."""

    envelopes: list[tuple[str, bytes]] = field(default_factory=list)
    accepted: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)


def parse_body(body: bytes) -> list[Any]:
    """A JSON object, a JSON array, or NDJSON (one JSON value per line) -> list of items."""
    if not body.strip():
        raise BodyError("empty body")
    try:
        parsed = orjson.loads(body)
    except (orjson.JSONDecodeError, RecursionError):
        parsed = None
        # numbered as the caller sees the body, blank lines included
        lines = [(n, line) for n, line in enumerate(body.splitlines(), 1) if line.strip()]
        if len(lines) < 2:
            raise BodyError("body is neither JSON nor NDJSON") from None
        items = []
        for number, line in lines:
            try:
                items.append(orjson.loads(line))
            except (orjson.JSONDecodeError, RecursionError):
                raise BodyError(f"NDJSON line {number} is not valid JSON") from None
        return items
    if isinstance(parsed, list):
        return parsed
    if isinstance(parsed, dict):
        return [parsed]
    raise BodyError("body must be a JSON object, a JSON array of objects, or NDJSON")


def plan_ingest(items: list[Any], source: str, limits: Limits, now_ms: int) -> IngestPlan:
    """Validate each item with the event contract and build one envelope per user."""
    plan = IngestPlan()
    per_user: dict[str, list[bytes]] = {}
    for index, item in enumerate(items):
        event, errors = validate_event(item, source, limits, now_ms)
        if event is None:
            plan.rejected.append({"index": index, "errors": _plain(errors)})
            continue
        # forward the caller's object as sent (the consumer validates it again)
        encoded = orjson.dumps(item)
        if len(encoded) > limits.max_message_bytes:
            msg = f"event is {len(encoded)} bytes; the limit is {limits.max_message_bytes}"
            plan.rejected.append({"index": index, "errors": [{"loc": "", "msg": msg}]})
            continue
        per_user.setdefault(event["user_id"], []).append(encoded)
        plan.accepted += 1
    for user_id, events in per_user.items():
        plan.envelopes.extend((user_id, value) for value in _envelopes(events, limits))
    return plan


def _envelopes(events: list[bytes], limits: Limits) -> list[bytes]:
    """Pack events into arrays within both the count and the byte limit of a message."""
    out: list[bytes] = []
    parts: list[bytes] = []
    size = 1  # "[" so far; each part adds its bytes plus a "," or the closing "]"
    for encoded in events:
        full = len(parts) >= limits.max_batch_events
        if parts and (full or size + len(encoded) + 1 > limits.max_message_bytes):
            out.append(_pack(parts))
            parts, size = [], 1
        parts.append(encoded)
        size += len(encoded) + 1
    if parts:
        out.append(_pack(parts))
    return out


def _pack(parts: list[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else b"[" + b",".join(parts) + b"]"


def _plain(errors: list[ErrorItem]) -> list[dict[str, str]]:
    return [{"loc": e["loc"], "msg": e["msg"]} for e in errors]
