"""collector.client's packing: envelopes per user within the limits, key and headers
that the worker's decoder accepts (delivery itself: tests/e2e/test_protobuf.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from collector.client import EventProducer, pack
from collector.config import Settings
from collector.models import Limits
from collector.models.proto import decode_record
from collector.models.proto_encode import Unrepresentable

NOW = 1_795_514_400_000


def events(n: int, user: str = "u1", pad: int = 0) -> list[dict[str, Any]]:
    return [{"event_id": f"e-{i}", "user_id": user, "type": "click", "ts": NOW - i,
             "properties": {"pad": "x" * pad}} for i in range(n)]


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_packed_messages_decode_to_every_event_in_order(encoding: Any) -> None:
    sent = events(7)
    limits = Limits(max_batch_events=3)
    messages = pack("u1", sent, encoding, limits)
    assert [m.events for m in messages] == [3, 3, 1]
    decoded = []
    for message in messages:
        assert message.key == b"u1"
        assert dict(message.headers)["collector-schema"] == b"1"
        out = decode_record(message.value, message.key, message.headers, "web", limits, NOW)
        assert not out.rejects
        decoded += [e["event_id"] for e in out.events]
    assert decoded == [e["event_id"] for e in sent]
    single = dict(messages[-1].headers)["content-type"]
    assert single == (b"application/json" if encoding == "json" else b"application/x-protobuf")


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_envelopes_stay_under_the_byte_limit(encoding: Any) -> None:
    limits = Limits(max_message_bytes=1000)
    messages = pack("u1", events(20, pad=150), encoding, limits)
    assert len(messages) > 1 and sum(m.events for m in messages) == 20
    assert all(len(m.value) <= 1000 for m in messages)
    for message in messages:
        out = decode_record(message.value, message.key, message.headers, "web", limits, NOW)
        assert len(out.events) == message.events


def test_an_event_of_another_user_is_refused() -> None:
    with pytest.raises(ValueError, match="not of user"):
        pack("u1", events(1, user="u2"), "json", Limits())
    assert orjson.loads(pack("u1", events(1), "json", Limits())[0].value)["user_id"] == "u1"


async def test_add_refuses_what_cannot_be_keyed_or_encoded() -> None:
    producer = EventProducer(Settings(), source="web", encoding="protobuf")
    with pytest.raises(ValueError, match="user_id"):
        producer.add({"event_id": "e"})
    with pytest.raises(Unrepresentable):
        producer.add({**events(1)[0], "value": "1"})
    with pytest.raises(ValueError, match="unknown source"):
        EventProducer(Settings(), source="nope")
    with pytest.raises(RuntimeError, match="before start"):
        await producer.flush()


class FlakyProducer:
    """aiokafka's send() contract: a future per message; one user's delivery fails, one
    user's send() raises at once (as aiokafka does for a message over its size limit)."""

    def __init__(self) -> None:
        self.offset = 0

    async def send(self, topic: str, value: bytes, key: bytes, headers: Any) -> Any:
        if key == b"raises":
            raise ValueError("too large for the producer")
        future = asyncio.get_running_loop().create_future()
        if key == b"fails":
            future.set_exception(ConnectionError("broker went away"))
        else:
            self.offset += 1
            future.set_result(type("Meta", (), {"partition": 0, "offset": self.offset})())
        return future


async def test_delivery_reports_match_their_messages_failures_included() -> None:
    producer = EventProducer(Settings(), source="web")
    producer._producer = FlakyProducer()  # type: ignore[assignment]
    for user in ("ok1", "fails", "raises", "ok2"):
        producer.add(events(1, user=user)[0])
    reports = {r.user_id: r for r in await producer.flush()}
    assert (reports["ok1"].offset, reports["ok2"].offset) == (1, 2)
    assert isinstance(reports["fails"].error, ConnectionError)
    assert isinstance(reports["raises"].error, ValueError)
    assert reports["ok1"].error is None and reports["fails"].offset is None
    assert await producer.flush() == []  # nothing buffered twice
