"""The pure parts of ``collector deadletter``: parsing records, selecting, transforms."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from collector.config import Settings
from collector.models import Reason, Reject, dead_letter_record
from collector.ops.deadletter import DeadLetter, Selection, load_transform, target_topic
from collector.ops.times import iso, parse_moment


def dead(reason: str = "schema_violation", source: str = "web", offset: int = 5,
         at: int = 1_000, topic: str = "collect.raw.web") -> DeadLetter:
    return DeadLetter(0, offset, at, b"u1", reason, source, topic, 0, 1, None, [], b"{}")


def test_parse_moment_forms() -> None:
    assert parse_moment("2026-11-24T10:00:00Z") == 1795514400000
    assert parse_moment("2026-11-24T10:00:00") == 1795514400000  # naive means UTC
    assert parse_moment("2026-11-24T11:00:00+01:00") == 1795514400000
    assert parse_moment("1795514400000") == 1795514400000
    assert parse_moment("2h", now_ms=10_000_000) == 10_000_000 - 7_200_000
    assert iso(1795514400123) == "2026-11-24T10:00:00.123Z"
    with pytest.raises(ValueError, match="not a time"):
        parse_moment("yesterday")


def test_parse_reads_what_the_worker_writes() -> None:
    raw = b"\xff\xfe not utf-8"
    record = dead_letter_record(
        Reject(Reason.MALFORMED_JSON, [{"loc": "", "msg": "bad"}]), source="web",
        topic="collect.raw.web", partition=2, offset=9, raw=raw, received_at_ms=0)
    assert orjson.loads(record)["payload"] == base64.b64encode(raw).decode()
    parsed = DeadLetter.parse(1, 7, 123, b"k", record)
    assert parsed is not None
    assert parsed.payload == raw  # base64 decoded back to the original bytes
    assert (parsed.reason, parsed.topic, parsed.raw_partition, parsed.raw_offset) == (
        "malformed_json", "collect.raw.web", 2, 9)
    assert parsed.schema_version is None
    assert DeadLetter.parse(0, 0, 0, None, b"junk") is None
    versioned = dead_letter_record(
        Reject(Reason.UNSUPPORTED_VERSION, [{"loc": "headers.collector-schema", "msg": "no"}]),
        source="web", topic="collect.raw.web", partition=0, offset=1, raw=b"{}",
        received_at_ms=0, schema_version="2")
    assert (again := DeadLetter.parse(0, 1, 0, None, versioned)) is not None
    assert again.schema_version == "2"


def test_every_reason_can_be_selected_on_the_command_line() -> None:
    from collector.cli.main import build_parser

    for reason in Reason:
        args = build_parser().parse_args(["deadletter", "replay", "--reason", reason.value])
        assert args.reason == [reason.value]
    assert DeadLetter.parse(0, 0, 0, None, b'{"reason": "late"}') is None


def test_selection_matches_every_criterion() -> None:
    assert Selection().matches(dead())
    assert not Selection(reasons=frozenset({"late"})).matches(dead())
    assert not Selection(sources=frozenset({"mobile"})).matches(dead())
    assert Selection(since_ms=1_000, until_ms=1_001).matches(dead())
    assert not Selection(since_ms=1_001).matches(dead())
    assert not Selection(until_ms=1_000).matches(dead())
    assert not Selection(partition=0, to_offset=4).matches(dead())
    with pytest.raises(ValueError, match="needs a partition"):
        Selection(from_offset=3)
    with pytest.raises(ValueError, match="before"):
        Selection(since_ms=5, until_ms=5)


def test_target_topic_refuses_what_is_not_a_raw_event() -> None:
    settings = Settings()
    assert target_topic(settings, dead()) == "collect.raw.web"
    assert target_topic(settings, dead(topic="elsewhere")) == "collect.raw.web"
    assert target_topic(settings, dead(reason="sink_rejected", source="sink")) is None
    assert target_topic(settings, dead(source="users", topic="collect.users")) is None
    assert target_topic(settings, dead(source="gone", topic="elsewhere")) is None


def test_load_transform_from_a_file_and_a_module(tmp_path: Path) -> None:
    path = tmp_path / "fixes.py"
    path.write_text("def up(payload, record):\n    return payload.upper()\n")
    assert load_transform(f"{path}:up")(b"ab", dead()) == b"AB"
    assert load_transform("base64:b64encode") is base64.b64encode  # a dotted module
    with pytest.raises(ValueError, match="module:function"):
        load_transform("nocolon")
    with pytest.raises(ValueError, match="not a function"):
        load_transform(f"{path}:missing")
