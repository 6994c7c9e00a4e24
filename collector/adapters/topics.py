"""A Faust topic over several topic names, readable, listable, never written to.

Faust's ``Topic.get_topic_name`` raises for a topic with several names, which made
``faust -A collector agents`` crash on the raw topics' agent.  The raw topics are only
ever consumed by the worker, so their name is the comma-joined list (what the CLI
shows), and a send to it fails loudly instead of producing to a topic named ``a,b``.
"""

from __future__ import annotations

from typing import Any, NoReturn

import faust


class ReadOnlyTopics(faust.Topic):
    def get_topic_name(self) -> str:
        return ",".join(self.topics)

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(f"{self.get_topic_name()}: consumed here, never produced to")

    send = _refuse  # type: ignore[assignment]
    send_soon = _refuse  # type: ignore[assignment]
    publish_message = _refuse  # type: ignore[assignment]


def read_only_topics(app: faust.App, names: list[str], partitions: int) -> faust.TopicT:
    """Raw bytes in, keys and values as they are."""
    return ReadOnlyTopics(app, topics=names, key_type=bytes, value_type=bytes,
                          key_serializer="raw", value_serializer="raw",
                          partitions=partitions)
