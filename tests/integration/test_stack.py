"""The local stack is up and usable the way the app will use it."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pymysql
import pytest
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from collector.config import Settings
from tests.topics import create_topic

pytestmark = pytest.mark.integration

STACK_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local" / "stack.py"
SERVICES = ("kafka", "redis", "mariadb", "influxdb")


def _run(action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(STACK_SCRIPT), action], capture_output=True, text=True, timeout=120
    )


def test_redis_ping(stack: Settings) -> None:
    with redis.Redis.from_url(stack.redis.url.get_secret_value(), socket_timeout=2) as client:
        assert client.ping() is True


def test_mariadb_app_user_login(stack: Settings) -> None:
    kw = stack.mysql.connect_kwargs()
    conn = pymysql.connect(
        host=kw["host"], port=kw["port"], user=kw["user"], password=kw["password"],
        database=kw["db"], connect_timeout=5,
    )  # fmt: skip
    with conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)


def test_influx_ping_and_database(stack: Settings) -> None:
    with urllib.request.urlopen(f"{stack.influx.url}/ping", timeout=5) as resp:
        assert resp.status == 204
    query = urllib.parse.urlencode({"q": "SHOW DATABASES"})
    with urllib.request.urlopen(f"{stack.influx.url}/query?{query}", timeout=5) as resp:
        series = json.load(resp)["results"][0]["series"][0]
    assert [stack.influx.database] in series["values"]


async def test_kafka_round_trip(stack: Settings) -> None:
    bootstrap = stack.kafka.bootstrap_servers
    topic = await create_topic(stack, f"test.stack.{uuid.uuid4().hex[:12]}", 1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello", key=b"k")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        message = await asyncio.wait_for(consumer.getone(), timeout=15)
    finally:
        await consumer.stop()
    assert (message.key, message.value) == (b"k", b"hello")


def _pids(status_out: str) -> dict[str, str]:
    return dict(re.findall(r"^(\w+)\s+managed \(pid (\d+),", status_out, re.MULTILINE))


def test_status_names_every_service(stack: Settings) -> None:
    proc = _run("status")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in SERVICES:
        assert re.search(
            rf"^{name}\s+(managed \(pid \d+, port \d+\)|external \()", proc.stdout, re.M
        )


def test_up_twice_starts_nothing(stack: Settings) -> None:
    before = _pids(_run("status").stdout)
    proc = _run("up")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "started" not in proc.stdout
    assert _pids(_run("status").stdout) == before
