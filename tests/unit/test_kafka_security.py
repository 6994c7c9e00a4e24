"""Kafka TLS and SASL settings reach Faust's broker credentials and our aiokafka clients.

The worker talks to the brokers through Faust (``collector.adapters.app.broker_credentials``, which
Faust's aiokafka driver turns into client options); our own tools (``collector topics
create``, the producer) through ``collector.kafka.clients.client_kwargs``.  Both must end
up with the same protocol, mechanism, user, password and a TLS context trusting the
configured CA.  A throwaway CA is generated per test session (``cryptography`` if it is
installed, else the ``openssl`` command).
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types.auth import AuthProtocol

from collector.adapters.app import broker_credentials, faust_options
from collector.config import Settings, SettingsError, load_settings
from collector.kafka.clients import client_kwargs

CA_NAME = "collector-test-ca"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("COLLECTOR_"):
            monkeypatch.delenv(key)


def _make_ca_with_cryptography(folder: Path, name: str) -> tuple[Path, Path] | None:
    try:
        from cryptography import x509  # type: ignore[import-not-found, unused-ignore]
        from cryptography.hazmat.primitives import (  # type: ignore[import-not-found, unused-ignore]
            hashes,
            serialization,
        )
        from cryptography.hazmat.primitives.asymmetric import (  # type: ignore[import-not-found, unused-ignore]
            ec,
        )
        from cryptography.x509.oid import NameOID  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    import datetime

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _make_ca_with_openssl(folder: Path, name: str) -> tuple[Path, Path] | None:
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key_path), "-out", str(cert_path), "-days", "2",
            "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert_path, key_path


def _make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    made = _make_ca_with_cryptography(folder, name) or _make_ca_with_openssl(folder, name)
    if made is None:
        pytest.skip("neither the cryptography package nor the openssl command is available")
    return made


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed CA: (certificate PEM, private key PEM)."""
    return _make_ca(tmp_path_factory.mktemp("ca"), CA_NAME)


@pytest.fixture(scope="session")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _make_ca(tmp_path_factory.mktemp("other-ca"), "collector-other-ca")


def _settings(**kafka: Any) -> Settings:
    return load_settings(kafka={"bootstrap_servers": "k1:9093,k2:9093", **kafka})


def _trusts_only(context: Any, name: str) -> None:
    """``context`` is a verifying client context whose only CA is ``name``."""
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    subjects = [cert["subject"] for cert in context.get_ca_certs()]
    assert subjects == [((("commonName", name),),)]


# ------------------------------------------------------------------ PLAINTEXT


def test_plaintext_has_no_credentials() -> None:
    s = _settings()
    assert broker_credentials(s) is None
    assert faust_options(s)["broker_credentials"] is None
    kwargs = client_kwargs(s)
    assert kwargs == {"bootstrap_servers": "k1:9093,k2:9093", "security_protocol": "PLAINTEXT"}
    assert credentials_to_aiokafka_auth(None) == {"security_protocol": "PLAINTEXT"}


# ------------------------------------------------------------------ SSL


def test_ssl_gives_ssl_credentials_trusting_the_ca(ca: tuple[Path, Path]) -> None:
    s = _settings(security_protocol="SSL", ssl_cafile=str(ca[0]))
    creds = broker_credentials(s)
    assert isinstance(creds, faust.SSLCredentials)
    assert creds.protocol is AuthProtocol.SSL
    _trusts_only(creds.context, CA_NAME)
    assert isinstance(faust_options(s)["broker_credentials"], faust.SSLCredentials)
    # what Faust's aiokafka driver hands to its consumer and producer
    auth = credentials_to_aiokafka_auth(creds)
    assert auth == {"security_protocol": "SSL", "ssl_context": creds.context}


def test_ssl_without_a_cafile_uses_the_system_cas() -> None:
    creds = broker_credentials(_settings(security_protocol="SSL"))
    assert isinstance(creds, faust.SSLCredentials)
    assert creds.context.verify_mode == ssl.CERT_REQUIRED
    assert creds.context.check_hostname is True


def test_ssl_client_kwargs_carry_the_same_context(ca: tuple[Path, Path]) -> None:
    kwargs = client_kwargs(_settings(security_protocol="SSL", ssl_cafile=str(ca[0])))
    assert kwargs["security_protocol"] == "SSL"
    _trusts_only(kwargs["ssl_context"], CA_NAME)
    assert not any(key.startswith("sasl") for key in kwargs)


def test_mutual_tls_loads_the_client_certificate(
    ca: tuple[Path, Path], other_ca: tuple[Path, Path]
) -> None:
    cert, key = ca
    s = _settings(security_protocol="SSL", ssl_cafile=str(cert), ssl_certfile=str(cert),
                  ssl_keyfile=str(key))
    assert isinstance(broker_credentials(s), faust.SSLCredentials)
    assert "ssl_context" in client_kwargs(s)
    # the chain is really loaded: a key that does not match the certificate is refused
    mismatched = _settings(security_protocol="SSL", ssl_cafile=str(cert),
                           ssl_certfile=str(cert), ssl_keyfile=str(other_ca[1]))
    with pytest.raises(ssl.SSLError):
        broker_credentials(mismatched)
    with pytest.raises(ssl.SSLError):
        client_kwargs(mismatched)


def test_a_missing_ca_file_fails_before_connecting(tmp_path: Path) -> None:
    s = _settings(security_protocol="SSL", ssl_cafile=str(tmp_path / "missing.pem"))
    with pytest.raises(FileNotFoundError):
        broker_credentials(s)
    with pytest.raises(FileNotFoundError):
        client_kwargs(s)


# ------------------------------------------------------------------ SASL


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
def test_sasl_ssl_gives_sasl_credentials_with_a_tls_context(
    ca: tuple[Path, Path], mechanism: str
) -> None:
    s = _settings(security_protocol="SASL_SSL", sasl_mechanism=mechanism,
                  sasl_username="collector", sasl_password="pw-1", ssl_cafile=str(ca[0]))
    creds = broker_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol is AuthProtocol.SASL_SSL
    assert creds.mechanism.value == mechanism
    assert (creds.username, creds.password) == ("collector", "pw-1")
    _trusts_only(creds.ssl_context, CA_NAME)
    auth = credentials_to_aiokafka_auth(creds)
    assert auth == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": "collector",
        "sasl_plain_password": "pw-1",
        "ssl_context": creds.ssl_context,
    }


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_sasl_plaintext_has_no_tls_context(mechanism: str) -> None:
    s = _settings(security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism,
                  sasl_username="svc", sasl_password="pw-2")
    creds = broker_credentials(s)
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol is AuthProtocol.SASL_PLAINTEXT
    assert creds.mechanism.value == mechanism
    assert creds.ssl_context is None
    assert credentials_to_aiokafka_auth(creds)["security_protocol"] == "SASL_PLAINTEXT"
    kwargs = client_kwargs(s)
    assert "ssl_context" not in kwargs
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT"
    assert kwargs["sasl_mechanism"] == mechanism


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("SASL_SSL", "SCRAM-SHA-512"), ("SASL_SSL", "PLAIN"), ("SASL_PLAINTEXT", "SCRAM-SHA-256")],
)
def test_client_kwargs_match_what_faust_gives_its_clients(
    ca: tuple[Path, Path], protocol: str, mechanism: str
) -> None:
    s = _settings(security_protocol=protocol, sasl_mechanism=mechanism, sasl_username="svc",
                  sasl_password="pw-3", ssl_cafile=str(ca[0]))
    ours = client_kwargs(s)
    faust_side = dict(credentials_to_aiokafka_auth(broker_credentials(s)))
    assert ours["bootstrap_servers"] == "k1:9093,k2:9093"
    assert ours["sasl_mechanism"] == faust_side["sasl_mechanism"] == mechanism
    assert ours["sasl_plain_username"] == faust_side["sasl_plain_username"] == "svc"
    assert ours["sasl_plain_password"] == faust_side["sasl_plain_password"] == "pw-3"
    assert ours["security_protocol"] == faust_side["security_protocol"] == protocol
    if protocol == "SASL_SSL":
        _trusts_only(ours["ssl_context"], CA_NAME)
        _trusts_only(faust_side["ssl_context"], CA_NAME)
    else:
        assert "ssl_context" not in ours and faust_side["ssl_context"] is None


async def test_aiokafka_accepts_both_option_sets(ca: tuple[Path, Path]) -> None:
    """aiokafka validates protocol/mechanism/context at construction (no connection yet)."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient

    s = _settings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                  sasl_username="svc", sasl_password="pw-4", ssl_cafile=str(ca[0]))
    admin = AIOKafkaAdminClient(**client_kwargs(s))
    await admin.close()
    consumer = AIOKafkaConsumer(
        bootstrap_servers="k1:9093",
        group_id="collector",
        **credentials_to_aiokafka_auth(broker_credentials(s)),
    )
    try:
        client = consumer._client
        assert (client._security_protocol, client._sasl_mechanism) == ("SASL_SSL",
                                                                       "SCRAM-SHA-512")
        assert client._ssl_context is not None
    finally:
        await consumer.stop()


def test_sasl_needs_a_user_name() -> None:
    with pytest.raises(SettingsError, match="sasl_username"):
        _settings(security_protocol="SASL_SSL", sasl_password="pw")


def test_the_password_stays_out_of_reprs() -> None:
    s = _settings(security_protocol="SASL_PLAINTEXT", sasl_username="svc",
                  sasl_password="very-secret-pw")
    assert "very-secret-pw" not in repr(broker_credentials(s))
    assert "very-secret-pw" not in repr(s)
    assert "very-secret-pw" not in s.model_dump_json()
