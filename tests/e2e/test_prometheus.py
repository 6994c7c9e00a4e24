"""A real Prometheus scrapes a real worker and sees collector's counters.

Known events go in (good ones, malformed JSON and schema violations on two sources);
Prometheus's HTTP API must then report exactly those counts per source and reason,
which also proves the exposition format is one Prometheus accepts.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from collector.kafka.topics import ensure_topics
from tests.e2e.kafka_io import produce, settings_for
from tests.e2e.tools import get, wait_http
from tests.e2e.workers import Worker, free_port, isolated_env
from tests.programs import ensure_program

pytestmark = pytest.mark.e2e


def good(source: str, i: int, now_ms: int) -> tuple[bytes, bytes]:
    user = f"u{i % 7:05d}"
    event = {"event_id": f"{source}-{i}", "user_id": user, "type": "click", "ts": now_ms,
             "value": 1.0}
    return user.encode(), orjson.dumps(event)


def schema_violation(i: int) -> tuple[bytes, bytes]:
    return b"u00001", orjson.dumps({"event_id": f"bad-{i}", "user_id": "u00001", "ts": "x"})


class Prometheus:
    """One Prometheus process with its own config and data dir, scraping ``target``."""

    def __init__(self, binary: str, tmp: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = tmp / "prometheus"
        (self.dir / "data").mkdir(parents=True)
        config = {  # JSON is YAML: no PyYAML needed at run time
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "collector",
                                "static_configs": [{"targets": [target]}]}],
        }
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(json.dumps(config))
        self.log = self.dir / "prometheus.log"
        self.cmd = [binary, f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.dir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            wait_http(f"{self.url}/-/ready", limit_s=60)
        except OSError as exc:
            raise AssertionError(f"prometheus not ready: {self.log.read_text()[-3000:]}") from exc
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def query(self, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Instant vector: labels (without __name__, job, instance) -> value."""
        url = f"{self.url}/api/v1/query?query={urllib.parse.quote(promql)}"
        body = json.loads(get(url))
        assert body["status"] == "success", body
        out = {}
        for item in body["data"]["result"]:
            labels = {k: v for k, v in item["metric"].items()
                      if k not in {"__name__", "job", "instance"}}
            out[tuple(sorted(labels.items()))] = float(item["value"][1])
        return out


@pytest.fixture
def prometheus_binary() -> str:
    return ensure_program("/usr/bin/prometheus", "prometheus")


@pytest.fixture
def prometheus_for(prometheus_binary: str, tmp_path: Path) -> Iterator[Callable[[int], Prometheus]]:
    started: list[Prometheus] = []

    def start(port: int) -> Prometheus:
        prom = Prometheus(prometheus_binary, tmp_path, f"127.0.0.1:{port}")
        started.append(prom)
        return prom.start()

    yield start
    for prom in started:
        prom.stop()


def wait_for(prom: Prometheus, promql: str, expected: dict[tuple[tuple[str, str], ...], float],
             limit_s: float = 60.0) -> dict[tuple[tuple[str, str], ...], float]:
    deadline = time.monotonic() + limit_s
    seen: dict[tuple[tuple[str, str], ...], float] = {}
    while time.monotonic() < deadline:
        seen = prom.query(promql)
        if seen == expected:
            return seen
        time.sleep(0.5)
    return seen


def wait_positive(prom: Prometheus, promql: str, limit_s: float = 60.0) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if any(value > 0 for value in prom.query(promql).values()):
            return True
        time.sleep(0.5)
    return False


async def test_prometheus_scrapes_collector_counters(
    worker_factory: Callable[..., Worker], prometheus_for: Callable[[int], Prometheus],
    tmp_path: Path,
) -> None:
    env = isolated_env(tmp_path)
    settings = settings_for(env)
    await ensure_topics(settings)
    worker = worker_factory(env).start()
    worker.wait_ready()
    prom = prometheus_for(worker.port)

    now = int(time.time() * 1000)
    web = [good("web", i, now) for i in range(12)] + [(None, b"{not json")] * 3
    mobile = [good("mobile", i, now) for i in range(5)] + [schema_violation(i) for i in range(2)]
    await produce(settings, settings.kafka.raw_topic("web"), web)
    await produce(settings, settings.kafka.raw_topic("mobile"), mobile)

    def s(**labels: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted(labels.items()))

    consumed = wait_for(prom, "collector_events_consumed_total",
                        {s(source="web"): 15, s(source="mobile"): 7})
    assert consumed == {s(source="web"): 15, s(source="mobile"): 7}, worker.text()[-3000:]
    valid = wait_for(prom, "collector_events_valid_total",
                     {s(source="web"): 12, s(source="mobile"): 5})
    assert valid == {s(source="web"): 12, s(source="mobile"): 5}
    dead = wait_for(prom, "collector_events_dead_lettered_total", {
        s(source="web", reason="malformed_json"): 3,
        s(source="mobile", reason="schema_violation"): 2,
    })
    assert dead == {s(source="web", reason="malformed_json"): 3,
                    s(source="mobile", reason="schema_violation"): 2}
    enrichment = prom.query("sum(collector_enrichment_total)")
    assert enrichment == {(): 17}

    # consumer lag per raw partition, from the fetch high watermark; caught up: 0
    lag = wait_for(prom, "sum(collector_consumer_lag)", {(): 0})
    assert lag == {(): 0}
    partitions = prom.query(f'collector_consumer_lag{{topic="{settings.kafka.raw_topic("web")}"}}')
    assert len(partitions) == settings.kafka.partitions
    # Faust's own sensor metrics land in the same registry
    received = prom.query("sum(faust_messages_received_total)")
    assert received and next(iter(received.values())) >= 22
    # sinks, windows and end-to-end latency are exported once rows reach MySQL
    for promql in ('collector_sink_rows_written_total{sink="mysql"}',
                   'collector_sink_write_seconds_count{sink="mysql"}',
                   "collector_end_to_end_latency_seconds_count",
                   'collector_window_updates_total{table="event_stats"}',
                   'collector_sink_healthy{sink="influxdb"}'):
        assert wait_positive(prom, promql), promql
    # no label carries a user or event id
    series = json.loads(get(f"{prom.url}/api/v1/series?match[]="
                            + urllib.parse.quote('{job="collector"}')))["data"]
    label_names = {name for item in series for name in item}
    assert not label_names & {"user_id", "event_id", "user", "event"}
