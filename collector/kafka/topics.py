"""Create collector's topics with real partition and replication settings.

Relying on broker auto-creation would give whatever default partition count the broker
has, which silently breaks co-partitioning of the per-user tables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from collector.config import Settings
from collector.kafka.clients import client_kwargs

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36
#: the Faust tables' names (``collector.adapters.tables``); their changelogs are Faust's
#: ``{app id}-{table}-changelog``, compacted
STATE_TABLE = "collector-state"
MERGED_TABLE = "collector-merged"


class PartitionMismatch(Exception):
    """Existing topics with a partition count other than ``kafka.partitions``."""

    def __init__(self, mismatches: list[Mismatch]) -> None:
        super().__init__("; ".join(str(m) for m in mismatches))
        self.mismatches = mismatches


def topic_names(settings: Settings) -> list[str]:
    kafka = settings.kafka
    return [*kafka.raw_topics, kafka.enriched_topic, kafka.deadletter_topic, kafka.users_topic,
            kafka.partials_topic]


def changelog_topics(settings: Settings) -> list[str]:
    """The tables' changelogs, created here too: Faust creates them when a worker starts
    and joins its group at once, and on a fresh broker its metadata may not show them
    yet.  The assignor then skips the topic (``Ignoring missing topic``), the table's
    partitions have no owner until the next metadata refresh (5 minutes), and queries
    of the merged windows answer 503 all that time (seen in a fresh-clone run)."""
    return [f"{settings.app.id}-{table}-changelog" for table in (STATE_TABLE, MERGED_TABLE)]


def partitioned_topics(settings: Settings) -> list[str]:
    """Topics whose partition count must be ``kafka.partitions``: events are rerouted by
    user to a partition of their own topic, the users table is co-partitioned with them,
    and every raw partition is a slot each merged window waits for."""
    kafka = settings.kafka
    return [*kafka.raw_topics, kafka.users_topic, kafka.partials_topic]


@dataclass(frozen=True)
class Mismatch:
    topic: str
    partitions: int
    wanted: int

    def __str__(self) -> str:
        return (f"topic {self.topic} has {self.partitions} partition(s), collector needs "
                f"exactly kafka.partitions={self.wanted} (created by a broker with "
                f"auto.create.topics.enable, or for another setting?): recreate it, or set "
                f"kafka.partitions to match")


async def partition_mismatches(settings: Settings) -> list[Mismatch]:
    """Existing topics of :func:`partitioned_topics` with another partition count
    (missing ones are not mismatches: they are created with the right count)."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        return await _mismatches(admin, settings)
    finally:
        await admin.close()


async def _mismatches(admin: AIOKafkaAdminClient, settings: Settings) -> list[Mismatch]:
    wanted = settings.kafka.partitions
    names = partitioned_topics(settings)
    # only topics that exist: a metadata request naming a missing topic may create it
    present = [name for name in names if name in set(await admin.list_topics())]
    if not present:
        return []
    found = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(present)}
    return [Mismatch(name, found[name], wanted) for name in present
            if name in found and found[name] != wanted]


async def ensure_topics(settings: Settings, extra: list[str] | None = None) -> list[str]:
    """Create missing topics; returns the names created (existing ones are left alone).

    Raises :class:`PartitionMismatch` if an existing topic has the wrong partition count.
    """
    kafka = settings.kafka
    names = topic_names(settings) + list(extra or [])
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        mismatches = await _mismatches(admin, settings)
        if mismatches:
            raise PartitionMismatch(mismatches)
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, kafka.partitions, kafka.replication_factor)
            for name in names
            if name not in existing
        ] + [
            NewTopic(name, kafka.partitions, kafka.replication_factor,
                     topic_configs={"cleanup.policy": "compact"})
            for name in changelog_topics(settings)
            if name not in existing
        ]
        if not wanted:
            return []
        response = await admin.create_topics(wanted)
        created = []
        for topic, code, message in response.topic_errors:
            if code == 0:
                created.append(topic)
            elif code != TOPIC_ALREADY_EXISTS:
                raise KafkaError(f"cannot create topic {topic}: {message} (error {code})")
        return created
    finally:
        await admin.close()
