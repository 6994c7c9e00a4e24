"""Create collector's topics with real partition and replication settings.

Relying on broker auto-creation would give whatever default partition count the broker
has, which silently breaks co-partitioning of the per-user tables.
"""

from __future__ import annotations

import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from collector.config import Settings
from collector.kafka.clients import client_kwargs

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36


def topic_names(settings: Settings) -> list[str]:
    kafka = settings.kafka
    return [*kafka.raw_topics, kafka.enriched_topic, kafka.deadletter_topic, kafka.users_topic,
            kafka.partials_topic]


async def ensure_topics(settings: Settings, extra: list[str] | None = None) -> list[str]:
    """Create missing topics; returns the names created (existing ones are left alone)."""
    kafka = settings.kafka
    names = topic_names(settings) + list(extra or [])
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, kafka.partitions, kafka.replication_factor)
            for name in names
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
