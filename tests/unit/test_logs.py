"""JSON log lines (``app.log_format = json``)."""

from __future__ import annotations

import io
import json
import logging

from collector.observability.logs import JsonFormatter, apply, where


def emit(logger_name: str, *args: object, **kwargs: object) -> dict[str, object]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger("root-under-test")
    root.handlers[:] = [handler]
    root.propagate = False
    apply("json", root)
    assert isinstance(handler.formatter, JsonFormatter)
    root.getChild(logger_name).warning(*args, **kwargs)  # type: ignore[arg-type]
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    parsed: dict[str, object] = json.loads(lines[0])
    return parsed


def test_a_json_line_has_time_level_logger_message() -> None:
    line = emit("collector.x", "consumed %d of %s", 3, "web")
    assert line["message"] == "consumed 3 of web"
    assert line["level"] == "WARNING"
    assert line["logger"] == "root-under-test.collector.x"
    assert str(line["time"]).endswith("Z") and "T" in str(line["time"])
    assert "topic" not in line


def test_location_and_fields_when_given() -> None:
    line = emit("p", "record failed", extra=where("collect.raw.web", 2, 41, attempt=1))
    assert (line["topic"], line["partition"], line["offset"]) == ("collect.raw.web", 2, 41)
    assert line["attempt"] == 1


def test_exceptions_and_odd_values_stay_one_line() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        line = emit("p", "failed: %r", object(), exc_info=True,
                    extra={"fields": {"when": {1, 2}}})
    assert "ValueError: boom" in str(line["exc_info"])
    assert line["when"] == "{1, 2}"


def test_text_format_leaves_the_handlers_alone() -> None:
    root = logging.Logger("text-root")
    handler = logging.StreamHandler(io.StringIO())
    root.addHandler(handler)
    apply("text", root)
    assert handler.formatter is None
