"""Quix Streams peer: orjson decode + a tumbling 60 s count per (source, type).

The same job as ``benchmarks/reference_app.py`` written the way a Quix Streams 3.x user
would, with Quix's defaults: RocksDB state with a changelog topic, at-least-once,
5 s commit interval, Quix's own consumer and producer (confluent-kafka / librdkafka).
Beyond the defaults it sets only what a run needs to be isolated and correct: broker,
consumer group, state dir and ``auto_offset_reset="earliest"`` (Quix's default is
``latest``; the topics are full before the peer starts).

One ``StreamingDataFrame`` per raw topic (the source is the topic name without the raw
prefix).  The value deserializer decodes each message with orjson and hands Quix the
events in it (``split_values``: an envelope, a JSON list, becomes one row per element);
a message that does not decode, or has no element with a ``type``, is skipped
(``IgnoreMessage``), as the reference skips it.  Each row is re-keyed to
``"<source>|<type>"`` and counted in a tumbling 60 s window (``.count().final()``).

Re-keying (``BENCH_QUIX_GROUPBY``):

* ``repartition`` (default): ``StreamingDataFrame.group_by``, Quix's documented way to
  aggregate by something that is not the message key.  On topics with more than one
  partition it produces every row to a ``repartition__…`` topic (JSON) and consumes it
  again before the window: that round trip is part of what is measured.
* ``inplace``: the key is changed without a repartition topic, by the code path Quix
  itself uses for ``group_by`` on a one-partition topic (``_single_partition_groupby``,
  not public API).  Closer to the plain-Faust reference, which does not repartition
  either; the counts are then per (partition, key), their sum is still every event.

Configured by environment (set by ``benchmarks.pipeline.run_quix``): ``BENCH_QUIX_ID``
(consumer group), ``BENCH_QUIX_BROKER`` (host:port,...), ``BENCH_QUIX_TOPICS``
(comma-separated), ``BENCH_QUIX_PREFIX`` (raw topic prefix), ``BENCH_QUIX_DATADIR``,
``BENCH_QUIX_GROUPBY``, ``BENCH_QUIX_STATUS`` (a JSON file rewritten every 0.1 s with the
messages decoded, the events in them and the events that reached the window).

Run: ``python -m benchmarks.quix_app``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)
from quixstreams import Application
from quixstreams.dataframe import StreamingDataFrame
from quixstreams.models.serializers import Deserializer, IgnoreMessage

ENV = os.environ
TOPICS = [t for t in ENV.get("BENCH_QUIX_TOPICS", "bench.raw.mobile").split(",") if t]
PREFIX = ENV.get("BENCH_QUIX_PREFIX", "bench.raw.")
STATUS = Path(ENV.get("BENCH_QUIX_STATUS", ".local/bench-quix-status.json"))
GROUPBY = ENV.get("BENCH_QUIX_GROUPBY", "repartition")
RETENTION_MS = "604800000"  # Kafka's default (7 days), for a broker that does not report it
WINDOW = timedelta(seconds=60)

log = logging.getLogger("benchmarks.quix_app")
# written by the processing thread only; read (whole) by the status thread
progress: dict[str, Any] = {"messages": 0, "events": 0, "windowed": 0, "retention": {}}


class EventsDeserializer(Deserializer):
    """orjson-decode one raw message into the events it holds (one row per event)."""

    @property
    def split_values(self) -> bool:
        return True

    def __call__(self, value: bytes, ctx: Any) -> list[dict[str, Any]]:
        try:
            body = orjson.loads(value)
        except orjson.JSONDecodeError:
            body = None
        items = body if isinstance(body, list) else [body]
        events = [e for e in items if isinstance(e, dict) and "type" in e]
        # events before messages: a status snapshot taken in between is never "done"
        progress["events"] += len(events)
        progress["messages"] += 1
        if not events:
            raise IgnoreMessage("not JSON, or no event with a type")
        return events


def key_for(source: str) -> Callable[[dict[str, Any]], str]:
    def key(event: dict[str, Any]) -> str:
        return f"{source}|{event['type']}"

    return key


def windowed(_event: dict[str, Any]) -> None:
    """Counts the rows that reach the window (called just before its state update)."""
    progress["windowed"] += 1


def ensure_retention(broker: str, topics: list[str]) -> dict[str, str]:
    """Make ``retention.ms`` visible among each topic's configs (Quix reads it).

    Apache Kafka reports the broker default for every topic ("broker"); a Kafka-compatible
    broker that leaves it out gets it set explicitly on the topic ("set").
    """
    admin = AdminClient({"bootstrap.servers": broker})
    missing: list[str] = []
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in topics]
    for resource, future in admin.describe_configs(resources).items():
        entry = future.result(timeout=30).get("retention.ms")
        if entry is None or entry.value is None:
            missing.append(resource.name)
    if missing:
        alter = [
            ConfigResource(
                ResourceType.TOPIC,
                t,
                incremental_configs=[
                    ConfigEntry(
                        "retention.ms", RETENTION_MS, incremental_operation=AlterConfigOpType.SET
                    )
                ],
            )
            for t in missing
        ]
        for future in admin.incremental_alter_configs(alter).values():
            future.result(timeout=30)
    return {t: "set" if t in missing else "broker" for t in topics}


def rekey(sdf: StreamingDataFrame, source: str) -> StreamingDataFrame:
    key = key_for(source)
    if GROUPBY == "inplace":
        # what group_by does on a one-partition topic: a new key, no repartition topic
        return sdf._single_partition_groupby("source_type", key)
    if GROUPBY != "repartition":
        raise SystemExit(f"BENCH_QUIX_GROUPBY must be repartition or inplace, not {GROUPBY!r}")
    return sdf.group_by(key, name="source_type")


def build(app: Application) -> None:
    for name in TOPICS:
        topic = app.topic(name, value_deserializer=EventsDeserializer(), key_deserializer="bytes")
        sdf = rekey(app.dataframe(topic), name[len(PREFIX) :])
        sdf = sdf.update(windowed)
        sdf.tumbling_window(WINDOW).count().final()


def write_status_forever(interval: float = 0.1) -> None:
    tmp = STATUS.with_suffix(".tmp")
    while True:
        tmp.write_bytes(orjson.dumps(progress))
        tmp.replace(STATUS)
        time.sleep(interval)


def main() -> None:
    broker = ENV.get("BENCH_QUIX_BROKER", "127.0.0.1:19092")
    STATUS.parent.mkdir(parents=True, exist_ok=True)
    progress["retention"] = ensure_retention(broker, TOPICS)
    progress["groupby"] = GROUPBY
    app = Application(
        broker_address=broker,
        consumer_group=ENV.get("BENCH_QUIX_ID", "bench-quix"),
        auto_offset_reset="earliest",
        state_dir=ENV.get("BENCH_QUIX_DATADIR", ".local/bench-quix"),
    )
    build(app)
    threading.Thread(target=write_status_forever, name="status", daemon=True).start()
    app.run()  # until SIGTERM (Quix stops gracefully on it)


if __name__ == "__main__":
    main()
