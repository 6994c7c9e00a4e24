"""Coalesced window state (``kafka.changelog_per_commit``): each key's newest value waits
in memory until the checkpoint before an offset commit, then reaches the store and the
changelog once; and the commit only covers offsets chosen before that checkpoint.

A real Faust table over RocksDB in a temporary directory; only the producer is a
recorder (tests/unit/test_state_changelog.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from collector.adapters.checkpoint import CheckpointCommit
from collector.adapters.state import FaustState
from tests.unit.test_state_changelog import Producer, loads, table  # noqa: F401


def stored(table: Any, partition: int, key: str) -> Any:  # noqa: F811
    """What RocksDB holds for ``key``, past FaustState's cache and coalesced values."""
    return FaustState(table, "raw", cache_max=0).get(partition, key)


async def test_values_wait_for_the_checkpoint_and_go_once(table: Any) -> None:  # noqa: F811
    out = Producer()
    state = FaustState(table, "raw", output=out, coalesce=True)
    state.set(2, "a", {"n": 1})
    state.set(2, "a", {"n": 2})  # a later batch touches the same window
    state.set(3, "b", {"n": 7})
    for _ in range(3):
        await asyncio.sleep(0)  # no automatic submit: nothing was written yet
    assert out.sent == [] and state.coalesced() == 2
    assert state.get(2, "a") == {"n": 2}
    assert stored(table, 2, "a") is None, "the store is not written before the checkpoint"
    done = asyncio.ensure_future(state.checkpoint())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not done.done(), "a checkpoint returns only once the changelog has it all"
    out.ack(0)
    await asyncio.wait_for(done, 1)
    records = sorted((p, *loads(table, k, v)) for p, k, v in out.records())
    assert records == [(2, "a", {"n": 2}), (3, "b", {"n": 7})], "one record per key, newest"
    assert stored(table, 2, "a") == {"n": 2} and state.coalesced() == 0


async def test_a_delete_hides_the_stored_value_until_its_tombstone(table: Any) -> None:  # noqa: F811
    out = Producer()
    state = FaustState(table, "raw", output=out, coalesce=True)
    state.set(1, "k", {"n": 1})
    out_done = asyncio.ensure_future(state.checkpoint())
    await asyncio.sleep(0)
    out.ack(0)
    await asyncio.wait_for(out_done, 1)
    state.delete(1, "k")
    assert state.get(1, "k") is None, "deleted, though the store still has it"
    assert stored(table, 1, "k") == {"n": 1}
    assert dict(state.items()) == {}
    done = asyncio.ensure_future(state.checkpoint())
    await asyncio.sleep(0)
    out.ack(1)
    await asyncio.wait_for(done, 1)
    assert [loads(table, k, v) for _, k, v in out.records()][-1] == ("k", None)
    assert stored(table, 1, "k") is None


async def test_an_evicted_or_uncached_value_is_read_back_from_memory(table: Any) -> None:  # noqa: F811
    state = FaustState(table, "raw", cache_max=1, output=Producer(), coalesce=True,
                       uncached=("i|",))
    state.set(0, "u|1", {"n": 1})
    state.set(0, "u|2", {"n": 2})  # evicts u|1 from the cache: still not written
    state.set(0, "i|1", {"ids": ["e"]})  # never cached
    assert state.get(0, "u|1") == {"n": 1}
    assert state.get(0, "i|1") == {"ids": ["e"]}
    assert dict(state.items()) == {"u|1": {"n": 1}, "u|2": {"n": 2}, "i|1": {"ids": ["e"]}}


async def test_a_rebalance_writes_what_waits(table: Any) -> None:  # noqa: F811
    """invalidate() runs before recovery rewrites the store: values still waiting (a
    batch that finished during the revoke's checkpoint) go to the store first."""
    out = Producer()
    state = FaustState(table, "raw", output=out, coalesce=True)
    state.set(3, "w", {"n": 5})
    state.invalidate()
    assert stored(table, 3, "w") == {"n": 5} and state.coalesced() == 0
    for _ in range(5):
        await asyncio.sleep(0)  # the automatic submit hands it to the producer
    assert [loads(table, k, v) for _, k, v in out.records()] == [("w", {"n": 5})]


async def test_a_fenced_worker_drops_what_waits(table: Any) -> None:  # noqa: F811
    """A worker frozen past its session owns nothing: its values are stale, dropped."""
    out = Producer()
    state = FaustState(table, "raw", output=out, coalesce=True)
    state.set(3, "w", {"n": 5})
    state.invalidate(drop=True)
    assert state.get(3, "w") is None and state.coalesced() == 0
    for _ in range(5):
        await asyncio.sleep(0)
    assert out.sent == []


async def test_the_memory_store_keeps_a_copy(tmp_path: Any) -> None:
    """The memory store keeps decoded objects: given the cached one, a change made in
    place after the checkpoint would survive a drop (and a recovery would start from it)."""
    import faust

    from tests.unit.test_state_changelog import SCHEMA

    app = faust.App("coalesce-memory", store="memory://", datadir=str(tmp_path))
    mem = app.Table("state", default=None, partitions=4, schema=SCHEMA)
    out = Producer()
    state = FaustState(mem, "raw", output=out, coalesce=True)
    state.set(1, "u", {"offs": {"t|1": 7}})
    done = asyncio.ensure_future(state.checkpoint())
    await asyncio.sleep(0)
    out.ack(0)
    await asyncio.wait_for(done, 1)
    live = state.get(1, "u")
    assert live is not None
    live["offs"]["t|1"] = 9
    state.set(1, "u", live)
    state.invalidate(drop=True)
    assert state.get(1, "u") == {"offs": {"t|1": 7}}


class _Consumer(CheckpointCommit):
    """Just what CheckpointCommit._commit_tps calls of Faust's consumer."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.log = __import__("logging").getLogger("test")
        self.acked: dict[str, int] = {}
        self.committed: dict[str, int] | None = None
        self.crashed: BaseException | None = None

    def _filter_committable_offsets(self, tps: Any) -> dict[Any, int]:
        return {tp: self.acked[tp] for tp in tps if tp in self.acked}

    async def _handle_attached(self, commit_offsets: Any) -> None:
        return None

    async def _commit_offsets(self, offsets: Any, start_new_transaction: bool = True) -> bool:
        self.committed = dict(offsets)
        return True

    async def crash(self, reason: BaseException) -> None:
        self.crashed = reason


class _App:
    def __init__(self) -> None:
        self.state_checkpoints: list[Any] = []


async def test_a_commit_covers_only_offsets_acked_before_its_checkpoint() -> None:
    """A batch acked while the checkpoint waits for the broker changed state that the
    checkpoint may not hold: its offset must wait for the next commit."""
    app = _App()
    consumer = _Consumer(app)
    consumer.acked = {"raw-0": 100}
    ran: list[str] = []

    async def checkpoint() -> None:
        ran.append("checkpoint")
        await asyncio.sleep(0)
        consumer.acked["raw-0"] = 150  # the next batch, acked during the wait

    app.state_checkpoints.append(checkpoint)
    assert await consumer._commit_tps(["raw-0"], start_new_transaction=True)
    assert ran == ["checkpoint"]
    assert consumer.committed == {"raw-0": 100}


async def test_a_failed_checkpoint_commits_nothing() -> None:
    app = _App()
    consumer = _Consumer(app)
    consumer.acked = {"raw-0": 100}

    async def checkpoint() -> None:
        raise RuntimeError("changelog record refused")

    app.state_checkpoints.append(checkpoint)
    assert not await consumer._commit_tps(["raw-0"], start_new_transaction=True)
    assert consumer.committed is None
    assert isinstance(consumer.crashed, RuntimeError)


async def test_a_handover_checkpoint_is_bounded() -> None:
    """Revoking partitions waits for the checkpoint, but not forever (broker gone)."""
    from collector.adapters.checkpoint import checkpoint_before_handover

    app = _App()
    ran: list[str] = []

    async def done() -> None:
        ran.append("done")

    async def stuck() -> None:
        await asyncio.Event().wait()

    app.state_checkpoints = [done]
    assert await checkpoint_before_handover(app, 1.0) and ran == ["done"]
    app.state_checkpoints = [stuck]
    assert not await checkpoint_before_handover(app, 0.05)
