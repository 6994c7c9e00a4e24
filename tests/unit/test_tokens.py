"""Start-up refuses unfit tokens on a non-loopback bind; no message ever shows a secret."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from collector.config import SettingsError, load_settings
from collector.config.exposure import is_loopback, is_placeholder

GOOD = "9f2c1d7e4b8a6f3c0e5d"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    for name in list(os.environ):
        if name.startswith("COLLECTOR_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.9"])
def test_loopback_needs_no_token(host: str) -> None:
    assert is_loopback(host)
    assert load_settings(web={"host": host}).web.host == host


@pytest.mark.parametrize(("ingest", "api", "field"), [
    ("", GOOD, "web.ingest_token"),
    (GOOD, "", "web.api_token"),
    ("short-token", GOOD, "web.ingest_token"),
    (GOOD, "CHANGE-ME", "web.api_token"),
    ("CHANGE-ME-CHANGE-ME-CHANGE-ME", GOOD, "web.ingest_token"),
    (GOOD, "replace-me-with-a-real-token", "web.api_token"),
])
def test_unfit_tokens_are_refused_on_other_addresses(ingest: str, api: str, field: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(web={"host": "0.0.0.0", "ingest_token": ingest, "api_token": api})
    text = str(info.value)
    assert field in text
    assert (ingest not in text) if ingest else True
    assert (api not in text) if api else True


def test_good_tokens_and_the_explicit_opt_out_are_accepted() -> None:
    s = load_settings(web={"host": "0.0.0.0", "ingest_token": GOOD, "api_token": GOOD + "x"})
    assert s.web.api_token.get_secret_value() == GOOD + "x"
    s = load_settings(web={"host": "10.0.0.5", "allow_anonymous": True})
    assert s.web.ingest_token.get_secret_value() == ""
    # the opt-out is for empty tokens only: a weak token is still a mistake
    with pytest.raises(SettingsError, match=r"web\.api_token"):
        load_settings(web={"host": "10.0.0.5", "allow_anonymous": True, "api_token": "abc"})


def test_placeholders() -> None:
    assert is_placeholder("CHANGE-ME") and is_placeholder("changeme-please-0000000")
    assert is_placeholder("<secret>") and not is_placeholder(GOOD)


def test_a_misspelt_secret_variable_is_named_never_echoed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLLECTOR_WEB__INGEST_TOKN", "hunter2-hunter2-hunter2")
    monkeypatch.setenv("COLLECTOR_KAFKA__SASL_PASSWROD", "pw-0123456789")
    with pytest.raises(SettingsError) as info:
        load_settings()
    text = str(info.value)
    assert "COLLECTOR_WEB__INGEST_TOKN" in text and "web.ingest_token?" in text
    assert "kafka.sasl_password?" in text
    assert "hunter2" not in text and "pw-0123456789" not in text


def test_the_worker_exits_2_naming_the_field() -> None:
    env = {"COLLECTOR_WEB__HOST": "0.0.0.0", "COLLECTOR_WEB__INGEST_TOKEN": "CHANGE-ME",
           "COLLECTOR_WEB__API_TOKEN": GOOD, "PATH": "/usr/bin:/bin"}
    program = str(Path(sys.executable).parent / "collector")
    done = subprocess.run([program, "config", "show"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "web.ingest_token" in done.stderr and "CHANGE-ME" not in done.stderr
