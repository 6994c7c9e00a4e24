"""aiokafka client options from settings (our own tools; the worker goes through Faust)."""

from __future__ import annotations

import ssl
from typing import Any

from collector.config import Settings


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """bootstrap_servers plus the TLS/SASL options aiokafka clients take."""
    kafka = settings.kafka
    kwargs: dict[str, Any] = {
        "bootstrap_servers": ",".join(kafka.bootstrap_servers),
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=kafka.ssl_cafile or None)
        if kafka.ssl_certfile:
            context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile or None)
        kwargs["ssl_context"] = context
    if kafka.security_protocol.startswith("SASL"):
        kwargs["sasl_mechanism"] = kafka.sasl_mechanism
        kwargs["sasl_plain_username"] = kafka.sasl_username
        kwargs["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    return kwargs
