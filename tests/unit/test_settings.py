"""Settings: precedence, validation messages, secrets, and the generated docs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from collector.adapters.app import broker_credentials, faust_options
from collector.config import SettingsError, load_settings
from collector.config.docs import render

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("COLLECTOR_"):
            monkeypatch.delenv(key)


def test_defaults_match_the_local_stack() -> None:
    s = load_settings()
    assert s.kafka.bootstrap_servers == ["127.0.0.1:19092"]
    assert s.kafka.raw_topics == ["collect.raw.mobile", "collect.raw.web", "collect.raw.openapi"]
    assert s.redis.url.get_secret_value() == "redis://127.0.0.1:16379/0"
    assert s.mysql.connect_kwargs()["port"] == 13306
    assert s.influx.url == "http://127.0.0.1:18086"
    assert s.windows.grace_seconds == 60


def test_ini_overrides_defaults_and_env_overrides_ini(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ini = tmp_path / "config.ini"
    ini.write_text(
        "[kafka]\nbootstrap_servers = k1:9092, k2:9092\npartitions = 12\n[redis]\nuser_ttl = 900\n"
    )
    monkeypatch.setenv("COLLECTOR_CONFIG", str(ini))
    monkeypatch.setenv("COLLECTOR_KAFKA__PARTITIONS", "24")
    s = load_settings()
    assert s.kafka.bootstrap_servers == ["k1:9092", "k2:9092"]  # INI over default
    assert s.kafka.partitions == 24  # env over INI
    assert s.redis.user_ttl == 900
    assert s.redis.negative_ttl == 60  # untouched default


def test_every_bad_field_is_named_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLECTOR_KAFKA__PARTITIONS", "many")
    monkeypatch.setenv("COLLECTOR_WEB__PORT", "70000")
    monkeypatch.setenv("COLLECTOR_INFLUX__API", "v3")
    with pytest.raises(SettingsError) as info:
        load_settings()
    text = str(info.value)
    assert len(info.value.problems) == 3
    for name in ("kafka.partitions", "COLLECTOR_WEB__PORT", "influx.api"):
        assert name in text


def test_secrets_never_appear_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLECTOR_MYSQL__DSN", "postgres://root:hunter2@db/x")
    monkeypatch.setenv("COLLECTOR_KAFKA__SASL_PASSWORD", "s3cret-pw")
    monkeypatch.setenv("COLLECTOR_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(SettingsError) as info:
        load_settings()
    text = str(info.value)
    assert "mysql.dsn" in text and "sasl_username" in text
    assert "hunter2" not in text and "s3cret-pw" not in text


def test_secret_str_masks_dumps() -> None:
    s = load_settings(mysql={"dsn": "mysql://u:topsecret@h:1/db"})
    assert "topsecret" not in s.model_dump_json()
    assert "topsecret" not in repr(s)


def test_missing_and_broken_ini_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLECTOR_CONFIG", str(tmp_path / "nope.ini"))
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings()
    bad = tmp_path / "bad.ini"
    bad.write_text("no section header\n")
    monkeypatch.setenv("COLLECTOR_CONFIG", str(bad))
    with pytest.raises(SettingsError, match="cannot parse"):
        load_settings()
    unknown = tmp_path / "unknown.ini"
    unknown.write_text("[kafak]\npartitions = 3\n")
    monkeypatch.setenv("COLLECTOR_CONFIG", str(unknown))
    with pytest.raises(SettingsError, match="kafak"):
        load_settings()


@pytest.mark.parametrize(
    ("env", "value", "needle"),
    [
        ("COLLECTOR_KAFKA__BOOTSTRAP_SERVERS", "nohostport", "host:port"),
        ("COLLECTOR_KAFKA__SOURCES", "web,Web", "must match"),
        ("COLLECTOR_KAFKA__HEARTBEAT_INTERVAL", "50", "heartbeat_interval"),
        ("COLLECTOR_WINDOWS__HOPPING_STEP_SECONDS", "70", "multiple"),
        ("COLLECTOR_INFLUX__URL", "ftp://x", "http"),
        ("COLLECTOR_APP__STORE", "redis", "app.store"),
    ],
)
def test_rules(monkeypatch: pytest.MonkeyPatch, env: str, value: str, needle: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError, match=needle):
        load_settings()


def test_sasl_and_ssl_reach_faust_credentials() -> None:
    s = load_settings(
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_username": "svc",
            "sasl_password": "pw",
            "sasl_mechanism": "SCRAM-SHA-512",
        }
    )
    creds = broker_credentials(s)
    assert creds.username == "svc" and creds.password == "pw"
    assert str(creds.mechanism.value) == "SCRAM-SHA-512"
    assert broker_credentials(load_settings()) is None
    opts = faust_options(load_settings(app={"store": "memory"}))
    assert opts["store"] == "memory://"
    assert opts["broker"] == ["kafka://127.0.0.1:19092"]
    assert opts["producer_linger"] > 0  # linger 0 costs a request per changelog write


def test_configuration_doc_matches_the_model() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert doc == render(), "run: collector config docs --write docs/configuration.md"


def test_bad_setting_stops_the_worker_with_status_2() -> None:
    env = {
        **os.environ,
        "COLLECTOR_KAFKA__PARTITIONS": "zero",
        "COLLECTOR_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1",
    }
    faust = Path(sys.executable).with_name("faust")
    proc = subprocess.run(
        [str(faust), "-A", "collector", "worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "kafka.partitions" in proc.stderr
    assert "COLLECTOR_KAFKA__PARTITIONS" in proc.stderr


def test_settings_for_env_sees_the_child_env_and_restores_ours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from collector.config import settings_for_env

    monkeypatch.setenv("COLLECTOR_KAFKA__PARTITIONS", "3")
    monkeypatch.delenv("COLLECTOR_WEB__PORT", raising=False)
    got = settings_for_env({"COLLECTOR_KAFKA__PARTITIONS": "8", "COLLECTOR_WEB__PORT": "18123"})
    assert (got.kafka.partitions, got.web.port) == (8, 18123)
    assert os.environ["COLLECTOR_KAFKA__PARTITIONS"] == "3"
    assert "COLLECTOR_WEB__PORT" not in os.environ
