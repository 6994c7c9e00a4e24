"""After a rebalance every partition is fetched again from its committed offset, and a
partition nobody has committed yet from its beginning.

Around a rebalance Faust drops records it fetched but did not hand to a stream (flow
stopped, partition paused, generation changed) and relies on ``perform_seek`` to fetch
them again.  aiokafka's ``seek_to_committed`` seeks only to a committed offset above 0,
so before a partition's first commit the fetch position stayed past the dropped
records and they were never processed (``tests/e2e/test_rebalance.py``: final rows
short when the second worker joined before the first commit).  The client below runs
aiokafka's own ``seek_to_committed``; only its network calls are stand-ins.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from collector.adapters.transport import LeanHandoffConsumer

RAW = "t.raw.a"
CHANGELOG = "t-collector-state-changelog"


class Client:
    """An aiokafka consumer's fetch positions and committed offsets, without a broker."""

    def __init__(self, committed: dict[TopicPartition, int | None],
                 position: dict[TopicPartition, int]) -> None:
        self._committed = committed
        self.position = dict(position)
        self._subscription = SimpleNamespace(assigned_partitions=lambda: set(committed))
        self._fetcher = SimpleNamespace(seek_to=self.position.__setitem__)

    async def committed(self, tp: TopicPartition) -> int | None:
        return self._committed[tp]

    seek_to_committed = AIOKafkaConsumer.seek_to_committed  # the library's own

    def fetch(self, tp: TopicPartition, n: int) -> list[int]:
        """``n`` records from the position on; the position moves past them."""
        start = self.position[tp]
        self.position[tp] = start + n
        return list(range(start, start + n))


class Thread:
    """The consumer thread's calls that ``seek_to_committed`` makes."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def seek_to_committed(self) -> Any:
        return await self.client.seek_to_committed()

    async def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions:
            self.client.position[tp] = 0  # earliest: this log starts at 0


def consumer(client: Client, reset: str = "earliest") -> LeanHandoffConsumer:
    """The worker's consumer with what ``perform_seek`` touches, nothing started."""
    c = LeanHandoffConsumer.__new__(LeanHandoffConsumer)
    c.app = SimpleNamespace(  # type: ignore[misc]
        conf=SimpleNamespace(consumer_auto_offset_reset=reset),
        topics=SimpleNamespace(acks_enabled_for=lambda topic: topic == RAW),
        tables=SimpleNamespace(changelog_topics=set()),  # no changelogs to rewind
    )
    c._thread = Thread(client)  # type: ignore[assignment]
    c._read_offset = {}  # type: ignore[assignment]
    c._committed_offset = {}  # type: ignore[assignment]
    return c


def tps() -> tuple[TopicPartition, ...]:
    return (TopicPartition(RAW, 0), TopicPartition(RAW, 1), TopicPartition(RAW, 2),
            TopicPartition(CHANGELOG, 0))


async def test_records_dropped_in_a_rebalance_are_fetched_again_without_a_commit() -> None:
    never, committed, at_zero, changelog = tps()
    client = Client({never: None, committed: 3, at_zero: 0, changelog: None},
                    {never: 0, committed: 3, at_zero: 0, changelog: 50})
    # the new generation fetched these, and Faust dropped them: the flow was stopped
    assert client.fetch(never, 8) == list(range(8))
    client.fetch(committed, 6)
    client.fetch(at_zero, 4)

    await consumer(client).perform_seek()

    assert client.fetch(never, 3) == [0, 1, 2], "the dropped records are fetched again"
    assert client.position[committed] == 3, "a committed partition: from its commit"
    assert client.fetch(at_zero, 1) == [0]
    assert client.position[changelog] == 50, "changelogs are recovery's, left alone"


async def test_latest_reset_keeps_the_position() -> None:
    never, committed, at_zero, changelog = tps()
    client = Client({never: None, committed: 3, at_zero: 0, changelog: None},
                    {never: 8, committed: 9, at_zero: 4, changelog: 50})
    await consumer(client, reset="latest").perform_seek()
    assert client.position == {never: 8, committed: 3, at_zero: 4, changelog: 50}
