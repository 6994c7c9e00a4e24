"""Log output for the worker: Faust's text lines, or one JSON object a line (``app.log_format``).

JSON is for log pipelines (Loki, Elasticsearch, CloudWatch): every line carries ``time``
(UTC, ms), ``level``, ``logger`` and ``message``, plus ``topic``, ``partition`` and
``offset`` when the call passed them (``extra=where(...)``), any ``fields`` it passed,
and ``exc_info`` as text.  The formatter is installed on the handlers Faust set up, so
the level, the destination and stdout redirection stay Faust's.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Final

import orjson

#: record attributes copied to the JSON object when a log call set them
LOCATION_KEYS: Final = ("topic", "partition", "offset")


def where(topic: str, partition: int, offset: int, **fields: Any) -> dict[str, Any]:
    """``extra=`` for a log call about one Kafka record (``fields``: more structure)."""
    extra: dict[str, Any] = {"topic": topic, "partition": partition, "offset": offset}
    if fields:
        extra["fields"] = fields
    return extra


class JsonFormatter(logging.Formatter):
    """One compact JSON object per record; never raises on odd arguments."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        out: dict[str, Any] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in LOCATION_KEYS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value
        fields = record.__dict__.get("fields")
        if isinstance(fields, dict):
            for key, value in fields.items():
                out.setdefault(str(key), value)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        return orjson.dumps(out, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def apply(log_format: str, root: logging.Logger | None = None) -> None:
    """Put the JSON formatter on every handler of ``root`` when ``log_format`` is json."""
    if log_format != "json":
        return
    formatter = JsonFormatter()
    for handler in (root or logging.getLogger()).handlers:
        handler.setFormatter(formatter)


__all__ = ["JsonFormatter", "apply", "where"]
