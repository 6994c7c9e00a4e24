"""Settings of the web server and of HTTP ingest."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from collector.config.exposure import token_problems
from collector.config.section import Section as _Section


class WebSettings(_Section):
    """Faust's web server: view, API, metrics, ingest."""

    host: str = Field(default="127.0.0.1", description="Bind address.")
    port: int = Field(default=16066, ge=1, le=65535, description="Bind port.")
    advertised_host: str = Field(
        default="127.0.0.1", description="Host other workers use to reach this one."
    )
    ingest_token: SecretStr = Field(
        default=SecretStr(""), description="Bearer token for HTTP ingest (empty: no auth)."
    )
    api_token: SecretStr = Field(
        default=SecretStr(""), description="Bearer token for API and metrics (empty: no auth)."
    )
    max_body_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Largest HTTP ingest body."
    )
    faust_sensors: bool = Field(
        default=True, description="Export Faust's own sensor metrics (faust_*) on /metrics."
    )
    observe_interval_seconds: float = Field(
        default=2.0, gt=0, le=60,
        description="How often consumer lag and the web view's rate history are sampled.",
    )
    ready_stall_seconds: float = Field(
        default=120.0, gt=0,
        description="Not ready when a raw partition lags with no commit progress this long.",
    )
    ready_sink_failing_seconds: float = Field(
        default=60.0, gt=0,
        description="GET /healthz/sinks answers 503 once a sink has been failing this long "
        "(readiness does not depend on sinks).",
    )
    ready_produce_failing_seconds: float = Field(
        default=10.0, gt=0,
        description="Not ready when a topic has refused the worker's writes this long.",
    )
    allow_anonymous: bool = Field(
        default=False,
        description="Allow empty tokens on a non-loopback web.host (trusted networks only).",
    )

    @model_validator(mode="after")
    def _tokens(self) -> WebSettings:
        problems = token_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class IngestSettings(_Section):
    """The event contract's tunable limits."""

    max_message_bytes: int = Field(default=64 * 1024, ge=256, description="Largest raw message.")
    max_batch_events: int = Field(default=500, ge=1, description="Largest batch envelope.")
    future_skew_seconds: int = Field(default=300, ge=0, description="Allowed clock skew ahead.")
    allow_unknown_fields: bool = Field(
        default=False, description="Drop unknown top-level fields instead of rejecting."
    )
    forward_enriched: bool = Field(
        default=True, description="Produce every enriched event to the enriched topic."
    )
    max_request_events: int = Field(
        default=5000, ge=1, le=100_000,
        description="Most events in one HTTP ingest request (more: 413).",
    )
    max_echoed_rejects: int = Field(
        default=100, ge=0, description="Rejected items an ingest response lists (all are counted).",
    )
    max_concurrent_requests: int = Field(
        default=4, ge=1,
        description="Ingest requests parsed at once per worker; the rest wait, then 503.",
    )
