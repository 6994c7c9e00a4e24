"""The JSON Schema (draft 2020-12) of a raw JSON message, generated from the models.

The pydantic reference model :class:`collector.models.reference.Event` states the
rules; its generated schema is completed here with what pydantic cannot derive from
type hints (the ``ts`` forms and lower bound, the envelope, the version).  Rules that
need the worker's clock or topic cannot be said in JSON Schema and are left to the
worker: ``ts`` at most now + skew, calendar validity of an RFC 3339 date (February
30th matches the pattern), an integer ``ts`` written as an integer (to JSON Schema
``1.7e12`` is one), and ``source`` equal to the topic's source.  The shipped
copy is ``collector/schemas/event.v1.schema.json``; a test keeps it equal to this.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Final

import orjson

from collector.models.contract import MIN_TS_MS, RFC3339_PATTERN, Limits
from collector.models.proto import SCHEMA_VERSION
from collector.models.reference import Event

SCHEMA_ID: Final = f"urn:collector:event:{SCHEMA_VERSION}"
#: the shipped copy of :func:`contract_schema` (package data, linked from docs/events.md)
SCHEMA_PATH: Final = (
    Path(__file__).resolve().parents[1] / "schemas" / f"event.v{SCHEMA_VERSION}.schema.json"
)


def contract_schema(limits: Limits | None = None) -> dict[str, Any]:
    """The schema of one raw message value: an event object or a batch envelope."""
    limits = limits or Limits()
    event = copy.deepcopy(Event.model_json_schema())
    event["title"] = "Event"
    event["description"] = (
        "One event (docs/events.md). Not expressible here, checked by the worker: ts at "
        "most now + ingest.future_skew_seconds, a real calendar date in an RFC 3339 ts, "
        "an integer ts written without fraction or exponent (JSON Schema counts 1.7e12 "
        "as an integer), source equal to the raw topic's source."
    )
    props = event["properties"]
    props["ts"] = {
        "description": "Event time: integer epoch milliseconds, or an RFC 3339 date-time "
        "with a mandatory offset (fraction truncated to milliseconds).",
        "anyOf": [
            {"type": "integer", "minimum": MIN_TS_MS},
            {"type": "string", "pattern": RFC3339_PATTERN},
        ],
    }
    props["source"]["description"] = "If present, the raw topic's source."
    for spec in props.values():
        spec.pop("title", None)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"collector raw message, contract version {SCHEMA_VERSION}",
        "description": (
            "The value of a JSON message on a raw topic (headers content-type: "
            f"application/json, collector-schema: {SCHEMA_VERSION}): one event, or a "
            "batch envelope of one user's events whose Kafka key is that user_id."
        ),
        "anyOf": [{"$ref": "#/$defs/Event"}, {"$ref": "#/$defs/Envelope"}],
        "$defs": {
            "Event": event,
            "Envelope": {
                "title": "Envelope",
                "description": "Events of one user; the message key is their user_id.",
                "type": "array",
                "minItems": 1,
                "maxItems": limits.max_batch_events,
                "items": {"$ref": "#/$defs/Event"},
            },
        },
    }


def schema_text(limits: Limits | None = None) -> str:
    """:func:`contract_schema` as the shipped file spells it (sorted keys, 2 spaces)."""
    text = orjson.dumps(contract_schema(limits), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    return text.decode("utf-8") + "\n"


__all__ = ["SCHEMA_ID", "SCHEMA_PATH", "contract_schema", "schema_text"]
