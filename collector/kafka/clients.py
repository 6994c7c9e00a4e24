"""aiokafka client options from settings (our own tools; the worker goes through Faust)."""

from __future__ import annotations

import ssl
from typing import Any

from collector.config import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context of every Kafka client, ours and the worker's (one place)."""
    kafka = settings.kafka
    context = ssl.create_default_context(cafile=kafka.ssl_cafile or None)
    if kafka.ssl_certfile:
        context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile or None)
    return context


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """bootstrap_servers plus the TLS/SASL options aiokafka clients take."""
    kafka = settings.kafka
    kwargs: dict[str, Any] = {
        "bootstrap_servers": ",".join(kafka.bootstrap_servers),
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        kwargs["ssl_context"] = ssl_context(settings)
    if kafka.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism
        kwargs["sasl_plain_username"] = kafka.sasl_username
        kwargs["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    return kwargs
