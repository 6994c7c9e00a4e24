"""The JSON Schema of the contract: shipped as generated, valid 2020-12, and it agrees
with the worker on everything JSON Schema can say."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from collector.cli.main import main
from collector.models import Limits, decode_message
from collector.models.schema import SCHEMA_PATH, contract_schema, schema_text

NOW = 1_795_514_400_000  # 2026-11-24T10:00:00Z
GOOD: dict[str, Any] = {"event_id": "e-1", "user_id": "u1", "type": "click", "ts": NOW - 1000}
VALIDATOR = Draft202012Validator(contract_schema())

ACCEPTED: list[Any] = [
    GOOD,
    {**GOOD, "ts": "2026-11-24T12:00:00.250+02:00"},
    {**GOOD, "ts": "2026-11-24t10:00:00z"},
    {**GOOD, "value": 1, "device_id": "d", "source": "web", "properties": {
        "s": "x" * 256, "i": 1, "f": 1.5, "b": True, "n": None}},
    {**GOOD, "value": None, "device_id": None, "properties": None, "source": None},
    {**GOOD, "properties": {f"k{i}": i for i in range(32)}},
    [GOOD, {**GOOD, "event_id": "e-2"}],
    [GOOD] * 500,
]
REJECTED: list[Any] = [
    {},
    None,
    42,
    [],
    [GOOD] * 501,
    [GOOD, 1],
    {**GOOD, "extra": 1},
    {k: v for k, v in GOOD.items() if k != "ts"},
    {**GOOD, "event_id": ""},
    {**GOOD, "event_id": "x" * 65},
    {**GOOD, "user_id": "u 1"},
    {**GOOD, "user_id": 1},
    {**GOOD, "type": "Click"},
    {**GOOD, "ts": True},
    {**GOOD, "ts": 1.5e12 + 0.5},
    {**GOOD, "ts": 946_684_799_999},
    {**GOOD, "ts": "2026-11-24T10:00:00"},
    {**GOOD, "ts": "2026-11-24 10:00:00Z"},
    {**GOOD, "ts": "2026-11-24T10:00:00+0200"},
    {**GOOD, "ts": "2026-11-24T10:00:00+02:60"},
    {**GOOD, "value": True},
    {**GOOD, "value": "1"},
    {**GOOD, "device_id": "d" * 65},
    {**GOOD, "properties": []},
    {**GOOD, "properties": {"a": [1]}},
    {**GOOD, "properties": {"a": {"b": 1}}},
    {**GOOD, "properties": {"a": "x" * 257}},
    {**GOOD, "properties": {"k" * 65: 1}},
    {**GOOD, "properties": {f"k{i}": i for i in range(33)}},
]
#: rules the worker checks that JSON Schema cannot state (see collector.models.schema)
WORKER_ONLY: list[Any] = [
    {**GOOD, "ts": NOW + 300_001},
    {**GOOD, "ts": "2026-02-30T10:00:00Z"},
    {**GOOD, "ts": 1.7e12},
    {**GOOD, "source": "mobile"},
]


def test_shipped_schema_is_the_generated_one() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(), (
        "run: collector contract schema --write collector/schemas/event.v1.schema.json")
    Draft202012Validator.check_schema(contract_schema())
    assert contract_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def worker_accepts(sample: Any) -> bool:
    key = b"u1" if isinstance(sample, list) else None
    return not decode_message(orjson.dumps(sample), key, "web", Limits(), NOW).rejects


@pytest.mark.parametrize("sample", ACCEPTED)
def test_accepted_samples(sample: Any) -> None:
    assert VALIDATOR.is_valid(sample)
    assert worker_accepts(sample)


@pytest.mark.parametrize("sample", REJECTED)
def test_rejected_samples(sample: Any) -> None:
    assert not VALIDATOR.is_valid(sample)
    assert not worker_accepts(sample)


@pytest.mark.parametrize("sample", WORKER_ONLY)
def test_what_only_the_worker_rejects(sample: Any) -> None:
    assert VALIDATOR.is_valid(sample) and not worker_accepts(sample)


def test_limits_reach_the_schema() -> None:
    assert contract_schema(Limits(max_batch_events=7))["$defs"]["Envelope"]["maxItems"] == 7


def test_cli_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["contract", "schema"]) == 0
    assert orjson.loads(capsys.readouterr().out) == contract_schema()
    assert main(["contract", "proto"]) == 0
    assert "message Envelope" in capsys.readouterr().out
