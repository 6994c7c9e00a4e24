"""Topics for tests, created on purpose: the local broker, like production, does not
auto-create them (``auto.create.topics.enable=false``)."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from collector.config import Settings
from collector.kafka.clients import client_kwargs
from collector.kafka.topics import TOPIC_ALREADY_EXISTS


async def create_topic(settings: Settings, name: str, partitions: int | None = None) -> str:
    """Create ``name`` (``kafka.partitions`` partitions unless told) unless it exists."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        if name not in set(await admin.list_topics()):
            count = partitions if partitions is not None else settings.kafka.partitions
            response = await admin.create_topics([NewTopic(name, count, 1)])
            for topic, code, message in response.topic_errors:
                if code not in (0, TOPIC_ALREADY_EXISTS):
                    raise AssertionError(f"cannot create {topic}: {message} ({code})")
    finally:
        await admin.close()
    return name
