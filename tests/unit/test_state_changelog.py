"""FaustState's bulk changelog: the store at once, the changelog in record batches.

A real Faust table over a real RocksDB store (rocksdict) in a temporary directory; only
the producer is a recorder, so what would reach Kafka can be decoded and compared.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import faust
import pytest
from aiokafka.errors import KafkaError
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from aiokafka.structs import RecordMetadata
from faust.types import TP

from collector.adapters.output import Batches, KafkaOutput
from collector.adapters.state import FaustState

SCHEMA = faust.Schema(key_type=str, key_serializer="json", value_serializer="json")


class Producer(KafkaOutput):
    """KafkaOutput minus the producer: real Batches, record batches kept, acks on demand."""

    def __init__(self) -> None:
        super().__init__(None)  # type: ignore[arg-type]
        self.sent: list[tuple[str, int, BatchBuilder, asyncio.Future[Any]]] = []
        self.gate: asyncio.Event | None = None  # set: the next batches() waits for it

    async def batches(self, topic: str) -> Batches:
        gate, self.gate = self.gate, None
        if gate is not None:
            await gate.wait()
        return Batches(topic, lambda key: 0, lambda: BatchBuilder(1 << 20, 0), self)

    async def send_batch(self, batch: BatchBuilder, topic: str, partition: int
                         ) -> Awaitable[Any]:
        fut = asyncio.get_running_loop().create_future()
        self.sent.append((topic, partition, batch, fut))
        return fut

    def records(self) -> list[tuple[int, bytes, bytes | None]]:
        out = []
        for _, partition, batch, _ in self.sent:
            data = bytes(batch._build())
            out.extend((partition, r.key, r.value) for r in DefaultRecordBatch(bytearray(data)))
        return out

    def ack(self, base_offset: int) -> None:
        for topic, partition, _, fut in self.sent:
            if not fut.done():
                fut.set_result(RecordMetadata(topic, partition, TP(topic, partition),
                                              base_offset, -1, None, -1))


@pytest.fixture
def table(tmp_path: Path) -> Any:
    app = faust.App("state-changelog-test", store="rocksdb://", datadir=str(tmp_path))
    return app.Table("state", default=None, partitions=4, schema=SCHEMA)


def loads(table: Any, key: bytes, value: bytes | None) -> tuple[Any, Any]:
    """Decode a changelog record the way recovery does (the table's serializers)."""
    s = table.app.serializers
    return (s.loads_key(table.key_type, key, serializer=table.key_serializer),
            None if value is None else s.loads_value(table.value_type, value,
                                                     serializer=table.value_serializer))


async def test_writes_reach_the_store_at_once_and_the_changelog_on_submit(table: Any) -> None:
    out = Producer()
    state = FaustState(table, "raw", cache_max=0, output=out)
    state.set(2, "a", {"n": 1})
    state.set(3, "b", {"n": 2})
    state.set(2, "a", {"n": 3})
    state.delete(3, "b")
    assert state.get(2, "a") == {"n": 3}  # read from RocksDB: the cache is off
    assert state.get(3, "b") is None
    assert out.sent == []  # nothing sent before submit
    futures = await state.submit()
    assert len(futures) == 2  # one record batch per partition
    records = out.records()
    assert sorted(p for p, _, _ in records) == [2, 2, 3, 3]
    by_partition = [[loads(table, k, v) for p, k, v in records if p == part] for part in (2, 3)]
    assert by_partition == [[("a", {"n": 1}), ("a", {"n": 3})],
                            [("b", {"n": 2}), ("b", None)]], "write order kept per partition"
    assert all(topic == table.changelog_topic.get_topic_name() for topic, *_ in out.sent)
    again = await state.submit()
    assert len(out.sent) == 2, "nothing sent twice"
    assert set(again) == set(futures), "what is not delivered yet is still awaited"
    out.ack(0)
    await asyncio.wait_for(asyncio.gather(*futures), 1)
    await asyncio.sleep(0)  # (the done callbacks run)
    assert await state.submit() == []


async def test_a_batch_awaits_the_records_the_automatic_submit_took(table: Any) -> None:
    """The submit scheduled by a batch's first write runs at the batch's first yield (a
    forward waiting for the producer), before the batch's own submit: that one must still
    return those records' deliveries, or the batch is acked before its changelog is in
    Kafka (found in review of the overlapped deliveries)."""
    out = Producer()
    state = FaustState(table, "raw", cache_max=0, output=out)
    state.set(1, "u|x|60000", {"n": 1})  # the batch's fold
    await asyncio.sleep(0)  # the batch yields: the automatic submit runs
    for _ in range(5):
        await asyncio.sleep(0)
    assert len(out.sent) == 1, "the automatic submit handed the record over"
    mine = await state.submit()  # the batch's own submit: nothing pending any more
    assert len(mine) == 1 and not mine[0].done()  # type: ignore[attr-defined]
    out.ack(5)
    await asyncio.wait_for(asyncio.gather(*mine), 1)


async def test_store_bytes_are_the_changelog_bytes(table: Any) -> None:
    """Recovery into RocksDB writes changelog bytes verbatim: they must be the store's."""
    out = Producer()
    state = FaustState(table, "raw", cache_max=0, output=out)
    state.set(1, "u|x|60000", {"agg": {"n": 2}, "offs": {"raw": 7}})
    await state.submit()
    [(partition, key, value)] = out.records()
    db = table.data._db_for_partition(partition)
    assert db[key] == value


async def test_persisted_offset_is_the_last_record_of_each_acked_batch(table: Any) -> None:
    out = Producer()
    state = FaustState(table, "raw", cache_max=0, output=out)
    for i in range(5):
        state.set(1, f"k{i}", {"i": i})
    await state.submit()
    tp = TP(table.changelog_topic.get_topic_name(), 1)
    assert table.data.persisted_offset(tp) is None  # not before the broker acked
    out.ack(base_offset=40)
    for _ in range(5):  # the delivery task, then its done callbacks, run on the loop
        await asyncio.sleep(0)
    assert table.data.persisted_offset(tp) == 44


async def test_a_write_nobody_submits_is_sent_on_the_next_loop_iteration(table: Any) -> None:
    out = Producer()
    state = FaustState(table, "raw", output=out)
    state.set(0, "k", {"n": 1})
    for _ in range(3):
        await asyncio.sleep(0)
    assert [loads(table, k, v) for _, k, v in out.records()] == [("k", {"n": 1})]


async def test_concurrent_submits_keep_write_order(table: Any) -> None:
    """A later submit must not overtake an earlier one still waiting on the producer."""
    out = Producer()
    gate = out.gate = asyncio.Event()
    state = FaustState(table, "raw", output=out)
    state.set(0, "k", {"n": 1})
    first = asyncio.ensure_future(state.submit())
    await asyncio.sleep(0)  # the first submit now waits in batches()
    state.set(0, "k", {"n": 2})
    second = asyncio.ensure_future(state.submit())  # its batches() would not wait
    for _ in range(3):
        await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, second)
    assert [loads(table, k, v)[1] for _, k, v in out.records()] == [{"n": 1}, {"n": 2}]


async def test_without_an_output_writes_go_through_the_table(table: Any) -> None:
    """kafka.bulk_changelog=false: Faust's own per-key path (here: nothing pending)."""
    state = FaustState(table, "raw", cache_max=0)
    table.changelog_topic.send_soon = lambda **kw: _Sent(kw["partition"])
    state.set(1, "k", {"n": 1})
    assert state.get(1, "k") == {"n": 1}
    assert await state.submit() == []


class _Sent:
    def __init__(self, partition: int) -> None:
        self.message = type("M", (), {"partition": partition})()


class RefusingOnce(Producer):
    """The broker refuses the first record batch, then accepts everything."""

    def __init__(self) -> None:
        super().__init__()
        self.singles: list[tuple[int | None, bytes | None, bytes | None]] = []
        self.refused = False

    async def send_batch(self, batch: BatchBuilder, topic: str, partition: int
                         ) -> Awaitable[Any]:
        fut = await super().send_batch(batch, topic, partition)
        if not self.refused:
            self.refused = True
            fut.set_exception(KafkaError("changelog refuses writes"))  # type: ignore[attr-defined]
        else:
            self.ack(base_offset=100)
        return fut

    async def send_once(self, topic: str, key: bytes | None, value: bytes | None,
                        headers: Any, partition: int | None = None) -> Awaitable[Any]:
        self.singles.append((partition, key, value))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(RecordMetadata(topic, partition or 0, TP(topic, partition or 0),
                                      200 + len(self.singles), -1, None, -1))
        return fut


async def test_a_refused_changelog_batch_is_sent_again_with_the_newest_values(
        table: Any) -> None:
    """The store has the newest value; the changelog must end with it too, so a standby
    or a new owner recovers what the store holds (not the state before the outage)."""
    out = RefusingOnce()
    state = FaustState(table, "raw", cache_max=0, output=out)
    state.set(1, "a", {"n": 1})
    state.set(1, "b", {"n": 1})
    futures = await state.submit()
    state.set(1, "a", {"n": 2})  # written again before the refusal is known
    await asyncio.wait_for(asyncio.gather(*futures), 5)
    resent = [loads(table, k, v) for _, k, v in out.singles]
    assert resent == [("a", {"n": 2}), ("b", {"n": 1})]
    await asyncio.wait_for(asyncio.gather(*await state.submit()), 5)
    last: dict[Any, Any] = {}
    for _, k, v in [*out.singles, *out.records()[1:]]:
        key, value = loads(table, k, v)
        last[key] = value
    assert last == {"a": {"n": 2}, "b": {"n": 1}}
    assert table.data.persisted_offset(TP(table.changelog_topic.get_topic_name(), 1)) >= 202


async def test_collected_store_writes_are_in_rocksdb_before_a_rebalance(table: Any) -> None:
    """Store writes are applied as one WriteBatch per partition; a rebalance (invalidate,
    before changelog recovery writes the store) must find them there already, or
    recovery's values would be overwritten by older ones applied later."""
    out = Producer()
    state = FaustState(table, "raw", output=out)
    state.set(1, "a", {"n": 1})
    state.set(1, "a", {"n": 2})
    state.set(2, "b", {"n": 3})
    state.delete(2, "b")
    state.invalidate()
    kb_a, kb_b = state._encode("a", None)[0], state._encode("b", None)[0]
    assert loads(table, kb_a, table.data._db_for_partition(1)[kb_a])[1] == {"n": 2}
    assert table.data._db_for_partition(2).get(kb_b) is None


async def test_direct_json_bytes_are_fausts(table: Any) -> None:
    """Keys and values encoded with orjson directly are the bytes Faust's own json
    serializer makes, so a store or changelog written either way reads back the same."""
    state = FaustState(table, "raw", output=Producer())
    s = table.app.serializers
    value = {"kind": "u", "key": ["ü-ß"], "ws": 1764936000000, "agg": {"n": 2, "x": 1.5},
             "offs": {"t|1": 5}, "ids": {"e1": 1}, "none": None, "list": [1, "a"]}
    non_str_keys = {"kind": "p", "agg": {"by": {7: 1, 8: 2}}}  # the fallback's options
    for key in ("u|ü|1", "p|event_stats|t|0|a|b|60000"):
        for v in (value, non_str_keys):
            kb, vb = state._encode(key, v)
            assert kb == s.dumps_key(table.key_type, key, serializer=table.key_serializer)
            assert vb == s.dumps_value(table.value_type, v, serializer=table.value_serializer)


async def test_a_retry_after_a_newer_batch_was_acked_still_sends_the_newest_value(
        table: Any) -> None:
    """The refused batch is produced again only after a later one, holding a newer value
    of the same key, was acked: the retry must send that newer value, not its own."""
    out = RefusingOnce()
    state = FaustState(table, "raw", cache_max=0, output=out)
    state.set(1, "a", {"n": 1})
    first = await state.submit()  # refused; its retry waits out a backoff
    state.set(1, "a", {"n": 2})
    second = await state.submit()  # acked at once
    await asyncio.wait_for(asyncio.gather(*second), 5)
    await asyncio.wait_for(asyncio.gather(*first), 5)
    assert [loads(table, k, v) for _, k, v in out.singles] == [("a", {"n": 2})]
    assert state.kept_for_retries() == 0


async def test_values_kept_for_retries_are_dropped_once_their_batches_are_acked(
        table: Any) -> None:
    """Under steady load some delivery is always outstanding: values of acked batches
    must go anyway, or the worker's memory grows with every key it ever wrote."""
    out = Producer()
    state = FaustState(table, "raw", cache_max=0, output=out)
    outstanding: list[Awaitable[Any]] = []
    for round_ in range(20):
        for i in range(50):
            state.set(1, f"r{round_}-k{i}", {"n": i})
        acked_before = list(out.sent)
        outstanding = await state.submit()  # this round stays in flight
        for topic, partition, _, fut in acked_before:
            if not fut.done():
                fut.set_result(RecordMetadata(topic, partition, TP(topic, partition),
                                              round_ * 100, -1, None, -1))
        for _ in range(5):
            await asyncio.sleep(0)
        assert state.kept_for_retries() == 50, round_  # only the batch still in flight
    out.ack(base_offset=5000)
    await asyncio.wait_for(asyncio.gather(*outstanding), 5)
    assert state.kept_for_retries() == 0


async def test_bytes_kept_until_the_submit_cost_their_length_not_orjsons_buffer(
        table: Any) -> None:
    """orjson output keeps a ~4 KB buffer whatever its length; a flush writing 20,000
    windows at once held 80 MB of them (memray). What is kept must be copies."""
    state = FaustState(table, "raw", cache_max=0, output=Producer())
    value = {"kind": "u", "key": ["user-123"], "ws": 1764936000000, "agg": {"n": 25}}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000):
            state.set(1, f"u|user-{i}|1764936000000", value)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert state.kept_for_retries() == 2000
    assert held < 2000 * 1024, f"{held / 2000:.0f} B held per write"
    await state.submit()
