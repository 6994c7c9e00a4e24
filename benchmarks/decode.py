"""Decode cost per event, JSON against protobuf: the bench's protobuf single mode.

In process, without Kafka: the generator's valid events, one per message (``single``)
and 50 per envelope (``batch50``), each as JSON and as protobuf, go through exactly
what :class:`collector.engine.processor.RawProcessor` calls for them.  A JSON
message without headers takes ``decode_message`` as before; one with a
``content-type`` header, and any message of a protobuf source, takes
``decode_record``.  Decoding is a few µs of the pipeline's per-event CPU, so this
isolates it; best of ``repeat`` runs, µs per event (parse + validate + normalise).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from collector.devtools.generator import Generator, GeneratorConfig
from collector.models import Limits, decode_message
from collector.models.proto import (
    ENVELOPE_CONTENT_TYPE,
    PROTOBUF_EVENT,
    decode_record,
)
from collector.models.proto_encode import encode_envelope, encode_event

Message = tuple[bytes | None, bytes, Any]  # key, value, headers
PROTOBUF_HEADERS = [("content-type", b"application/x-protobuf"), ("collector-schema", b"1")]
ENVELOPE_HEADERS = [("content-type", ENVELOPE_CONTENT_TYPE.encode()), ("collector-schema", b"1")]
JSON_HEADERS = [("content-type", b"application/json"), ("collector-schema", b"1")]


def corpus(n: int, batch: int, users: int) -> tuple[list[Message], list[Message]]:
    """The same ``n`` events as JSON and as protobuf messages of ``batch`` events."""
    generator = Generator(GeneratorConfig(events=n, users=users, batch=batch, seed=7))
    as_json: list[Message] = []
    as_proto: list[Message] = []
    for message in generator:
        parsed = orjson.loads(message.value)
        as_json.append((message.key, message.value, None))
        if isinstance(parsed, list):
            as_proto.append((message.key, encode_envelope(parsed), ENVELOPE_HEADERS))
        else:
            as_proto.append((message.key, encode_event(parsed), PROTOBUF_HEADERS))
    return as_json, as_proto


def best_us_per_event(decode: Callable[[Message], Any], messages: list[Message], events: int,
                      repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for message in messages:
            decode(message)
        best = min(best, time.perf_counter() - started)
    return round(best / events * 1e6, 3)


def run_decode(n: int, users: int = 10_000, repeat: int = 5) -> dict[str, Any]:
    """µs per event for each format and message shape, and a check they agree."""
    limits = Limits()
    now = int(time.time() * 1000)
    src = "web"
    result: dict[str, Any] = {"n": n, "repeat": repeat, "us_per_event": {}}
    for shape, batch in (("single", 1), ("batch50", 50)):
        as_json, as_proto = corpus(n, batch, users)
        with_header = [(k, v, JSON_HEADERS) for k, v, _ in as_json]
        no_header = [(k, v, None) for k, v, h in as_proto]
        runs: dict[str, tuple[Callable[[Message], Any], list[Message]]] = {
            f"json {shape}": (lambda m: decode_message(m[1], m[0], src, limits, now), as_json),
            f"json {shape}, content-type header": (
                lambda m: decode_record(m[1], m[0], m[2], src, limits, now), with_header),
            f"protobuf {shape}, content-type header": (
                lambda m: decode_record(m[1], m[0], m[2], src, limits, now), as_proto),
        }
        if batch == 1:
            runs[f"protobuf {shape}, source default"] = (
                lambda m: decode_record(m[1], m[0], m[2], src, limits, now, PROTOBUF_EVENT),
                no_header)
        outcomes = set()
        for name, (decode, messages) in runs.items():
            outcomes.add(orjson.dumps([decode(m).events for m in messages[:200]]))
            result["us_per_event"][name] = best_us_per_event(decode, messages, n, repeat)
        result[f"{shape}_formats_agree"] = len(outcomes) == 1
    json_single = result["us_per_event"]["json single"]
    proto_single = result["us_per_event"]["protobuf single, content-type header"]
    result["protobuf_vs_json_single"] = round(proto_single / json_single, 2)
    return result


__all__ = ["corpus", "run_decode"]
