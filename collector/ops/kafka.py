"""Small aiokafka helpers the operator tools share."""

from __future__ import annotations

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from collector.config import Settings
from collector.kafka.clients import client_kwargs


async def partitions_of(settings: Settings, topics: list[str]) -> list[TopicPartition]:
    """The partitions of ``topics`` as the broker describes them (a missing topic: none).

    Asked of the admin API: a consumer that only ``assign``\\s knows no metadata yet.
    """
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return sorted(TopicPartition(t["topic"], p["partition"])
                  for t in described if not t.get("error_code")
                  for p in t["partitions"])
