"""The event contract's vocabulary: reasons, limits, error items and the rules' constants.

Both validators (the lean one in :mod:`collector.models.validate` and the pydantic
reference in :mod:`collector.models.reference`) read their rules from here, so the two
cannot drift apart on a number or a pattern.  See ``docs/events.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final, Protocol, TypedDict

from collector.config import IngestSettings


class Reason(StrEnum):
    """Why a message or event went to the dead-letter topic (a stable, public value)."""

    MALFORMED_JSON = "malformed_json"
    SCHEMA_VIOLATION = "schema_violation"
    TOO_LARGE = "too_large"
    LATE = "late"
    SINK_REJECTED = "sink_rejected"
    INTERNAL_ERROR = "internal_error"
    MALFORMED_PROTOBUF = "malformed_protobuf"
    UNSUPPORTED_VERSION = "unsupported_version"


#: media types of raw messages (Kafka header ``content-type``, HTTP ``Content-Type``)
JSON_CONTENT_TYPE: Final = "application/json"
PROTOBUF_CONTENT_TYPE: Final = "application/x-protobuf"


class ErrorItem(TypedDict):
    """One broken rule: ``loc`` is a dotted path (``ts``, ``properties.color``, ``""`` = root)."""

    loc: str
    msg: str


@dataclass(frozen=True, slots=True)
class Limits:
    """The contract's tunable limits, copied out of settings once for the hot path."""

    max_message_bytes: int = 64 * 1024
    max_batch_events: int = 500
    future_skew_ms: int = 300_000
    allow_unknown_fields: bool = False

    @classmethod
    def from_settings(cls, ingest: IngestSettings) -> Limits:
        return cls(
            max_message_bytes=ingest.max_message_bytes,
            max_batch_events=ingest.max_batch_events,
            future_skew_ms=ingest.future_skew_seconds * 1000,
            allow_unknown_fields=ingest.allow_unknown_fields,
        )


class Validator(Protocol):
    """Signature shared by ``validate_event`` and ``validate_event_pydantic``."""

    def __call__(
        self, obj: object, source: str, limits: Limits, now_ms: int
    ) -> tuple[dict[str, Any] | None, list[ErrorItem]]: ...


#: Fields of the normalised event, in output order.
NORMALISED_FIELDS: Final = (
    "event_id",
    "user_id",
    "type",
    "ts",
    "value",
    "device_id",
    "properties",
    "source",
)
#: Top-level fields a raw event may carry (``source`` is optional and checked).
KNOWN_FIELDS: Final = frozenset(NORMALISED_FIELDS)
REQUIRED_FIELDS: Final = ("event_id", "user_id", "type", "ts")

MAX_ID_CHARS: Final = 64
MAX_DEVICE_ID_CHARS: Final = 64
MAX_PROPERTIES: Final = 32
MAX_PROPERTY_KEY_CHARS: Final = 64
MAX_PROPERTY_STR_CHARS: Final = 256

# ASCII classes only: Python's ``\d`` would also match Arabic-Indic and other digits.
USER_ID_PATTERN: Final = r"^[A-Za-z0-9_.:@-]{1,64}$"
TYPE_PATTERN: Final = r"^[a-z][a-z0-9_.]{0,63}$"
#: RFC 3339 ``date-time``: full date, full time and a mandatory offset.  Hours of the
#: offset stop at 23 and minutes at 59 because ``fromisoformat`` would roll ``+02:60``
#: over to ``+03:00``.  Leap seconds (``:60``) are not representable and are rejected.
RFC3339_PATTERN: Final = (
    r"^([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
    r"(?:([Zz])|([+-])((?:[01][0-9]|2[0-3])):([0-5][0-9]))$"
)

# Compiled for the lean validator; ``fullmatch`` so ``$`` cannot match before a ``\n``.
USER_ID_RE: Final = re.compile(USER_ID_PATTERN[1:-1])
TYPE_RE: Final = re.compile(TYPE_PATTERN[1:-1])
RFC3339_RE: Final = re.compile(RFC3339_PATTERN[1:-1])

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS: Final = timedelta(milliseconds=1)
#: 2000-01-01T00:00:00Z: anything earlier is a broken device clock, not an event.
MIN_TS_MS: Final = 946_684_800_000


def ts_range_error(ts_ms: int, limits: Limits, now_ms: int) -> str | None:
    """The message for an event time outside [2000-01-01, now + skew], else None."""
    if ts_ms < MIN_TS_MS:
        return "ts is before 2000-01-01T00:00:00Z"
    if ts_ms > now_ms + limits.future_skew_ms:
        return f"ts is more than {limits.future_skew_ms} ms in the future"
    return None


def format_ms(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC with milliseconds and ``Z``."""
    moment = EPOCH + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
