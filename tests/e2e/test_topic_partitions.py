"""A topic with the wrong partition count stops the worker and ``topics create`` at once.

Seen on a broker with ``auto.create.topics.enable``: a producer that wrote first got the
raw topic created with one partition, and the worker's reroute to partition 1+ failed
for ever (``Unrecognized partition``) with nothing saying why.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from collector.kafka.clients import client_kwargs
from collector.kafka.topics import changelog_topics
from tests.e2e.kafka_io import settings_for
from tests.e2e.workers import ROOT, Worker, isolated_env


async def test_a_raw_topic_with_one_partition_stops_the_worker_with_exit_2(
    worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    env = isolated_env(tmp_path, COLLECTOR_KAFKA__PARTITIONS="4")
    settings = settings_for(env)
    wrong = settings.kafka.raw_topics[0]
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(wrong, 1, 1)])
    finally:
        await admin.close()

    cli = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "collector.cli.main", "topics", "create"],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2, cli
    assert f"topic {wrong} has 1 partition(s)" in cli.stderr and "kafka.partitions=4" in cli.stderr

    worker = worker_factory(env).start()
    assert worker.proc is not None
    code = await asyncio.to_thread(worker.proc.wait, 120)
    assert code == 2, worker.text()[-3000:]
    assert f"topic {wrong} has 1 partition(s), collector needs exactly" in worker.text()


async def test_topics_create_makes_the_tables_changelogs_before_any_worker_starts(
    worker_factory: Callable[..., Worker], tmp_path: Path
) -> None:
    """Seen in a fresh-clone run: a worker that created the merged table's changelog
    itself joined its group before the broker's metadata showed it, the assignor skipped
    it (``Ignoring missing topic``), and the merged windows had no owner (queries 503)
    until the next metadata refresh, 5 minutes later.  ``topics create`` makes them
    first, compacted and co-partitioned, so the first join already sees them."""
    env = isolated_env(tmp_path, COLLECTOR_KAFKA__PARTITIONS="4")
    settings = settings_for(env)
    cli = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "collector.cli.main", "topics", "create"],
        cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli
    names = changelog_topics(settings)
    assert len(names) == 2 and all(name in cli.stdout for name in names), cli.stdout
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        described = await admin.describe_topics(names)
        configs = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names])
    finally:
        await admin.close()
    assert {t["topic"]: len(t["partitions"]) for t in described} == dict.fromkeys(names, 4)
    policies = [entry[1] for response in configs for resource in response.resources
                for entry in resource[4] if entry[0] == "cleanup.policy"]
    assert policies == ["compact", "compact"], configs
    worker = worker_factory(env).start()
    await asyncio.to_thread(worker.wait_ready, 90)
    assert "Ignoring missing topic" not in worker.text()
