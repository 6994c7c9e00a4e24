"""Pure logic of deploy/local/stack.py: generated configs, classification, process checks."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

from collector.config import Settings, load_settings

STACK_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "local" / "stack.py"


@pytest.fixture(scope="module")
def stack_mod() -> ModuleType:
    """stack.py is a script, not a package module: load it by path like the CLI does."""
    spec = importlib.util.spec_from_file_location("collector_local_stack", STACK_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def custom() -> Settings:
    """Non-default ports, to prove they come from the settings."""
    return load_settings(
        kafka={"bootstrap_servers": "127.0.0.1:29999"},
        redis={"url": "redis://127.0.0.1:26379/0"},
        mysql={"dsn": "mysql://app:pw@127.0.0.1:23306/appdb"},
        influx={"url": "http://localhost:28086"},
    )


def _by_name(stack_mod: ModuleType, settings: Settings) -> dict[str, object]:
    return {svc.name: svc for svc in stack_mod.services(settings)}


def test_services_take_hosts_and_ports_from_settings(
    stack_mod: ModuleType, custom: Settings
) -> None:
    svcs = _by_name(stack_mod, custom)
    assert {name: (s.host, s.port) for name, s in svcs.items()} == {  # type: ignore[attr-defined]
        "kafka": ("127.0.0.1", 29999),
        "redis": ("127.0.0.1", 26379),
        "mariadb": ("127.0.0.1", 23306),
        "influxdb": ("localhost", 28086),
    }
    assert all(s.loopback for s in svcs.values())  # type: ignore[attr-defined]
    assert svcs["influxdb"].bind == "127.0.0.1"  # type: ignore[attr-defined]


def test_redis_conf_binds_loopback_on_configured_port(
    stack_mod: ModuleType, custom: Settings
) -> None:
    svc = _by_name(stack_mod, custom)["redis"]
    lines = stack_mod.config_text(svc, custom).splitlines()
    assert "bind 127.0.0.1" in lines
    assert "port 26379" in lines
    assert 'save ""' in lines and "appendonly no" in lines and "daemonize no" in lines
    assert not any(line.startswith("requirepass") for line in lines)


def test_redis_conf_sets_password_from_url(stack_mod: ModuleType) -> None:
    settings = load_settings(redis={"url": "redis://:s%40cret@127.0.0.1:26379/0"})
    svc = _by_name(stack_mod, settings)["redis"]
    assert "requirepass s@cret" in stack_mod.config_text(svc, settings).splitlines()


def test_mariadb_conf(stack_mod: ModuleType, custom: Settings) -> None:
    svc = _by_name(stack_mod, custom)["mariadb"]
    lines = stack_mod.config_text(svc, custom).splitlines()
    assert lines[0] == "[mysqld]"
    for expected in ("bind-address=127.0.0.1", "port=23306", "skip-log-bin"):
        assert expected in lines
    assert f"datadir={stack_mod.LOCAL / 'mariadb' / 'data'}" in lines
    assert len(str(stack_mod.mariadb_socket(svc))) < 100


def test_influx_conf_is_toml_with_loopback_binds(stack_mod: ModuleType, custom: Settings) -> None:
    svc = _by_name(stack_mod, custom)["influxdb"]
    conf = tomllib.loads(stack_mod.config_text(svc, custom))
    assert conf["bind-address"] == "127.0.0.1:28087"  # RPC service, default :8088
    assert conf["http"]["bind-address"] == "127.0.0.1:28086"
    assert conf["ifql"]["enabled"] is False  # else it binds :8082 on all interfaces
    assert conf["data"]["wal-dir"].startswith(str(stack_mod.LOCAL))


def test_kafka_command_runs_the_pinned_broker_jars(
    stack_mod: ModuleType, custom: Settings
) -> None:
    svc = _by_name(stack_mod, custom)["kafka"]
    argv = stack_mod.command(svc)
    assert argv[-2:] == ["kafka.Kafka", str(stack_mod.LOCAL / "kafka" / "kafka.conf")]
    assert argv[argv.index("-cp") + 1] == f"{stack_mod.LOCAL / 'kafka' / 'lib'}/*"
    assert "-Xmx512m" in argv
    assert stack_mod.missing_packages(svc) == [] or set(stack_mod.missing_packages(svc)) <= {
        "default-jre-headless", "maven"}


def test_kafka_conf_is_one_kraft_node_on_loopback(stack_mod: ModuleType, custom: Settings) -> None:
    svc = _by_name(stack_mod, custom)["kafka"]
    lines = stack_mod.config_text(svc, custom).splitlines()
    props = dict(line.split("=", 1) for line in lines)
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29999,CONTROLLER://127.0.0.1:30000"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29999"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:30000"
    assert props["log.dirs"] == str(stack_mod.LOCAL / "kafka" / "data")
    # one node: every internal topic must accept replication 1, or transactions fail
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"


def test_kafka_version_is_pinned_in_the_pom(stack_mod: ModuleType) -> None:
    major, minor, _patch = stack_mod.kafka_broker.version().split(".")
    assert (int(major), int(minor)) >= (4, 1)


def test_classify(stack_mod: ModuleType) -> None:
    remote = stack_mod.Service("redis", "redis.example.com", 6379, "redis-server", "")
    local = stack_mod.Service("redis", "127.0.0.1", 6379, "redis-server", "")
    assert not remote.loopback
    assert stack_mod.classify(remote, None, False) == "external"  # never started by us
    assert stack_mod.classify(remote, 1234, True) == "external"
    assert stack_mod.classify(local, None, True) == "external"  # someone else's server
    assert stack_mod.classify(local, None, False) == "down"
    assert stack_mod.classify(local, 1234, True) == "managed"


def test_status_reports_remote_services_as_external(
    stack_mod: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(
        kafka={"bootstrap_servers": "kafka.example.com:9092"},
        redis={"url": "redis://cache.example.com:6379/0"},
        mysql={"dsn": "mysql://u:p@db.example.com:3306/d"},
        influx={"url": "http://tsdb.example.com:8086"},
    )
    monkeypatch.setattr(stack_mod, "answering", lambda host, port, timeout=0.5: port != 3306)
    assert stack_mod.status(settings) == 1  # the database is unreachable
    out = capsys.readouterr().out
    assert "kafka     external (kafka.example.com:9092 reachable)" in out
    assert "mariadb   external (db.example.com:3306 unreachable)" in out


def test_alive_treats_exited_child_as_stopped(stack_mod: ModuleType) -> None:
    child = subprocess.Popen(["true"])
    time.sleep(0.2)  # exited but not reaped: a zombie until _alive reaps it
    assert not stack_mod._alive(child.pid)
    child.returncode = 0  # reaped by _alive(); keep Popen from warning about it
    assert stack_mod._alive(stack_mod.os.getpid())


def test_stop_terminates(stack_mod: ModuleType) -> None:
    child = subprocess.Popen(["sleep", "30"])
    assert stack_mod.stop(child.pid)
    # dead (a zombie counts as stopped): reaping must not block, whoever reaps it
    child.wait(timeout=5)
    assert not Path(f"/proc/{child.pid}").exists()


def test_a_daemon_whose_log_grows_is_waited_for_past_the_ready_timeout(
    stack_mod: ModuleType, tmp_path: Path
) -> None:
    """Kafka loading 7,000 partitions logged for over 30 s and `stack up` called it failed."""
    log = tmp_path / "kafka.log"
    log.write_text("starting\n")
    timeout = stack_mod.READY_TIMEOUT
    patience = stack_mod.Patience(log, 0.0)
    assert not patience.expired(timeout - 1)
    with log.open("a") as out:
        out.write("loaded partition 1\n")
    assert not patience.expired(timeout + 1)  # progress moved the deadline
    assert not patience.expired(2 * timeout)
    assert patience.expired(2 * timeout + 2)  # quiet for READY_TIMEOUT: stuck


def test_a_growing_log_does_not_extend_the_wait_past_the_cap(
    stack_mod: ModuleType, tmp_path: Path
) -> None:
    log = tmp_path / "kafka.log"
    patience = stack_mod.Patience(log, 0.0)  # no log yet
    now = 0.0
    while now < stack_mod.READY_CAP:
        now += stack_mod.READY_TIMEOUT / 2
        log.write_text("x" * int(now))
        if patience.expired(now):
            break
    assert now >= stack_mod.READY_CAP - stack_mod.READY_TIMEOUT
    assert patience.expired(stack_mod.READY_CAP + 1)
