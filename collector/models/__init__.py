"""The event contract: limits, validators, message decoding and dead-letter records.

Pure logic without I/O, so agents, HTTP ingest and tests share one definition of a valid
event.  The contract itself is described in ``docs/events.md``.
"""

from collector.models.contract import ErrorItem, Limits, Reason, Validator
from collector.models.decode import (
    DEADLETTER_REASON_HEADER,
    Decoded,
    Reject,
    dead_letter_for_event,
    dead_letter_record,
    decode_message,
)
from collector.models.reference import Event, LenientEvent, validate_event_pydantic
from collector.models.validate import parse_rfc3339_ms, validate_event

__all__ = [
    "DEADLETTER_REASON_HEADER",
    "Decoded",
    "ErrorItem",
    "Event",
    "LenientEvent",
    "Limits",
    "Reason",
    "Reject",
    "Validator",
    "dead_letter_for_event",
    "dead_letter_record",
    "decode_message",
    "parse_rfc3339_ms",
    "validate_event",
    "validate_event_pydantic",
]
