"""Moments on the command line: ISO 8601, epoch milliseconds, or a duration ago."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_AGO_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_moment(text: str, *, now_ms: int | None = None) -> int:
    """UTC epoch ms of ``text``: ``2026-11-24T10:00:00Z`` (naive means UTC), ``1764000000000``
    or ``90m`` / ``2h`` / ``1d`` (that long ago).  Raises ValueError otherwise."""
    value = text.strip()
    if value.isdigit():
        return int(value)
    ago = _AGO_RE.match(value)
    if ago:
        now = now_ms if now_ms is not None else int(datetime.now(UTC).timestamp() * 1000)
        return now - int(float(ago[1]) * _UNIT_S[ago[2]] * 1000)
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time (ISO 8601, epoch ms, or 30m/2h/1d ago)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def iso(ms: int) -> str:
    """``2026-11-24T10:00:00.123Z`` for epoch ms (UTC)."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
