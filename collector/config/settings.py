"""One settings model for the whole system.

Defaults match the local stack (``collector stack up``), so a fresh checkout needs no
configuration.  An INI file named by ``COLLECTOR_CONFIG`` overrides the defaults and
``COLLECTOR_*`` environment variables (nested with ``__``) override both.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from collector.config.aggregates import Aggregates, check_window
from collector.config.http import IngestSettings, WebSettings
from collector.config.ini import IniSettingsSource
from collector.config.section import Section as _Section
from collector.config.sinks import SinkSettings
from collector.config.stores import InfluxSettings, MySQLSettings, RedisSettings

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_SOURCE_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def _split_csv(value: Any) -> Any:
    """Accept ``a,b`` as well as a list, so INI files and env vars stay readable."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CsvList = Annotated[list[str], NoDecode]


class KafkaSettings(_Section):
    """Broker connection, security, topics and consumer-group timings."""

    bootstrap_servers: CsvList = Field(
        default=["127.0.0.1:19092"],
        description="Comma-separated host:port list of Kafka brokers.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="How the worker talks to the brokers."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="SCRAM-SHA-512", description="SASL mechanism when the protocol is SASL_*."
    )
    sasl_username: str = Field(default="", description="SASL user name.")
    sasl_password: SecretStr = Field(default=SecretStr(""), description="SASL password.")
    ssl_cafile: str = Field(default="", description="CA bundle for TLS (empty: system CAs).")
    ssl_certfile: str = Field(default="", description="Client certificate for mutual TLS.")
    ssl_keyfile: str = Field(default="", description="Client key for mutual TLS.")
    sources: CsvList = Field(
        default=["mobile", "web", "openapi"],
        description="Event sources; each has its raw topic <raw_topic_prefix><source>.",
    )
    raw_topic_prefix: str = Field(default="collect.raw.", description="Prefix of raw topics.")
    protobuf_sources: CsvList = Field(
        default=[],
        description="Sources whose raw messages without a content-type header are "
        "protobuf collector.v1.Event (the others: JSON); see docs/events.md.",
    )
    enriched_topic: str = Field(default="collect.enriched", description="Enriched events.")
    deadletter_topic: str = Field(default="collect.deadletter", description="Dead letters.")
    users_topic: str = Field(default="collect.users", description="User profile updates.")
    partials_topic: str = Field(
        default="collect.partials",
        description="Per-partition partial aggregates (combiner output, merged downstream).",
    )
    partitions: int = Field(default=4, ge=1, le=1024, description="Partitions per topic.")
    replication_factor: int = Field(default=1, ge=1, le=16, description="Topic replication.")
    session_timeout: float = Field(
        default=45.0,
        gt=0,
        description="Consumer session timeout (s): how long a vanished worker keeps its "
        "partitions (Kafka's client default; the broker allows 6 s to 30 min).",
    )
    heartbeat_interval: float = Field(
        default=3.0, gt=0, description="Consumer heartbeat interval (s); keep < timeout/3."
    )
    rebalance_timeout: float = Field(default=60.0, gt=0, description="Rebalance timeout (s).")
    commit_interval: float = Field(default=2.8, gt=0, description="Offset commit interval (s).")
    producer_linger: float = Field(
        default=0.01, ge=0, description="Producer linger (s); 0 sends one request per write."
    )
    max_poll_records: int = Field(default=1000, ge=1, description="Records per fetch.")
    shutdown_flush_timeout: float = Field(
        default=30.0, gt=0,
        description="At shutdown, wait at most this long (s) for the producer to deliver "
        "its buffer; with the broker down a worker would otherwise not stop for 20 min.",
    )
    direct_delivery: bool = Field(
        default=True,
        description="Hand each fetch of raw messages to the processor as one batch, "
        "past Faust's per-message stream; false: through the raw agent's stream.",
    )
    overlap_deliveries: bool = Field(
        default=True,
        description="With direct delivery, process the next fetch while the last batch's "
        "forwarded and changelog records are being delivered; its offsets are still acked "
        "only once they are, in order.  False: wait for them before the next fetch.",
    )
    bulk_changelog: bool = Field(
        default=True,
        description="Send window state changelog records as one record batch per "
        "partition and processing batch; false: Faust's one send per key (slower).",
    )
    changelog_per_commit: bool = Field(
        default=True,
        description="Keep each window state key's newest value in memory and send it to "
        "the store and changelog once per checkpoint (before each offset commit, "
        "rebalance and flush), not once per batch: a key that several batches touch in "
        "between costs one record.  A crash reprocesses from the committed offset either "
        "way.  False: once per batch.",
    )
    stream_buffer_maxsize: int = Field(
        default=4096, ge=1,
        description="Messages buffered per partition before a stream's delivery waits "
        "(Faust's stream_buffer_maxsize).",
    )
    reroute_misrouted: bool = Field(
        default=True,
        description="Produce a valid event that arrived on a partition its user_id does "
        "not map to (murmur2) again to the right one, and count it there.",
    )
    poison_attempts: int = Field(
        default=3, ge=1, le=20,
        description="Times a raw message may make processing fail before it is "
        "dead-lettered as internal_error.",
    )
    fetch_max_wait_ms: int = Field(
        default=1500, ge=0, le=30_000,
        description="How long the broker may hold a fetch that finds no data while the "
        "worker drains a backlog (records at least 5 s old; Faust's 1500).  Shorter waits "
        "cost 12-17% CPU per event there (docs/benchmarks.md, seventeenth round).",
    )
    fetch_max_wait_caught_up_ms: int = Field(
        default=200, ge=0, le=30_000,
        description="The same wait while the worker keeps up.  While all raw partitions "
        "still hold fetched records, aiokafka asks only for the others, often empty, and "
        "fetches nothing more until the broker answers: at 1500 that held the raw "
        "partitions back up to 1.5 s (the latency p99).  Equal to fetch_max_wait_ms: "
        "one wait throughout.",
    )
    lean_handoff: bool = Field(
        default=True,
        description="Hand each fetched message to its stream without Faust's per-message "
        "wait_first (4 tasks); a delivery that would block still waits interruptibly.",
    )

    @field_validator("bootstrap_servers", "sources", "protobuf_sources", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("bootstrap_servers")
    @classmethod
    def _hostports(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one broker is needed")
        for item in value:
            host, sep, port = item.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{item!r} is not host:port")
        return value

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one source is needed")
        for item in value:
            if not _SOURCE_RE.match(item):
                raise ValueError(f"source {item!r} must match {_SOURCE_RE.pattern}")
        if len(set(value)) != len(value):
            raise ValueError("sources must be unique")
        return value

    @model_validator(mode="after")
    def _check_topics(self) -> KafkaSettings:
        for name in (self.enriched_topic, self.deadletter_topic, self.users_topic,
                     self.partials_topic, *self.raw_topics):
            if not _TOPIC_RE.match(name):
                raise ValueError(f"topic name {name!r} is not a valid Kafka topic name")
        strangers = sorted(set(self.protobuf_sources) - set(self.sources))
        if strangers:
            raise ValueError(f"protobuf_sources {strangers} are not in sources")
        if self.heartbeat_interval >= self.session_timeout:
            raise ValueError("heartbeat_interval must be smaller than session_timeout")
        if self.security_protocol.startswith("SASL") and not self.sasl_username:
            raise ValueError("sasl_username is required when security_protocol is SASL_*")
        return self

    @property
    def raw_topics(self) -> list[str]:
        return [self.raw_topic_prefix + source for source in self.sources]

    def raw_topic(self, source: str) -> str:
        return self.raw_topic_prefix + source

    def source_of(self, topic: str) -> str | None:
        """The source a raw topic belongs to, or None for a foreign topic."""
        if topic.startswith(self.raw_topic_prefix):
            source = topic[len(self.raw_topic_prefix) :]
            if source in self.sources:
                return source
        return None


class WindowSettings(_Section):
    """Event-time windows and how they are closed and flushed."""

    tumbling_seconds: int = Field(default=60, ge=1, description="event_stats/user_activity size.")
    max_user_types: int = Field(
        default=30, ge=1, le=31,
        description="Distinct event types a user_activity window lists; more set "
        "types_truncated (the MySQL column holds 31 types of 64 characters).",
    )
    session_gap_seconds: int = Field(
        default=1800, ge=1,
        description="user_sessions inactivity gap: a user's events at least this far "
        "apart in event time are separate sessions (at least tumbling_seconds).",
    )
    session_update_seconds: float = Field(
        default=60.0, ge=0,
        description="How often an open session's user_sessions row is rewritten while "
        "events keep coming (0: every flush); once its partition takes no event it is "
        "written by the next flush (windows.quiet_flush_seconds), and a session that ends is "
        "written at once and the query API always shows the latest.",
    )
    hopping_size_seconds: int = Field(default=300, ge=1, description="segment_stats size.")
    hopping_step_seconds: int = Field(default=60, ge=1, description="segment_stats advance.")
    grace_seconds: int = Field(
        default=60, ge=0,
        description="Event time past a window's end before its row is written as final.",
    )
    allowed_lateness_seconds: int = Field(
        default=3600, ge=0,
        description="Event time past a window's end during which late events still update "
        "it (a new revision of its row); later events are dead-lettered as late.",
    )
    dedupe_seconds: int = Field(
        default=900, ge=0,
        description="Event time past a window's end during which a repeated "
        "(user_id, event_id) is recognised and not counted again (capped at the allowed "
        "lateness: a window that takes no events needs no ids).",
    )
    idle_timeout_seconds: float = Field(
        default=30.0, gt=0,
        description="Wall-clock quiet time after which windows are emitted (never late).",
    )
    flush_interval_seconds: float = Field(default=5.0, gt=0, description="Sink flush period.")
    flush_after_backlog_seconds: float = Field(
        default=5.0, ge=0,
        description="Flush at once when a backlog of records at least this old (by their "
        "Kafka timestamps) is drained, instead of waiting for the next tick (0: only "
        "ticks). Shorter lags are mostly the worker's own flushes (one of 10,000 users' "
        "windows holds it up for about a second): at 1 s, each tick set off another flush.",
    )
    quiet_flush_seconds: float = Field(
        default=1.0, ge=0,
        description="A flush that leaves sessions updates waiting is followed by one more "
        "this long after it if their partition took no event in between, so the last "
        "events of a stream reach user_sessions about this long after the other tables, "
        "not a flush interval later (0, or not below flush_interval_seconds: off).",
    )
    expires_seconds: int = Field(
        default=7200, ge=60,
        description="Wall-clock age of a window start after which its state is dropped; "
        "events for it are then late. Must cover window + allowed lateness.",
    )

    @model_validator(mode="after")
    def _hopping(self) -> WindowSettings:
        if self.hopping_step_seconds > self.hopping_size_seconds:
            raise ValueError("hopping_step_seconds must not exceed hopping_size_seconds")
        if self.hopping_size_seconds % self.hopping_step_seconds:
            raise ValueError("hopping_size_seconds must be a multiple of hopping_step_seconds")
        if self.session_gap_seconds < self.tumbling_seconds:
            raise ValueError("session_gap_seconds must be at least tumbling_seconds (sessions "
                             "are built from the user_activity windows)")
        if self.allowed_lateness_seconds < self.grace_seconds:
            raise ValueError("allowed_lateness_seconds must be at least grace_seconds")
        needed = (max(self.tumbling_seconds, self.hopping_size_seconds)
                  + self.allowed_lateness_seconds)
        if self.expires_seconds < needed:
            raise ValueError(f"expires_seconds must cover the largest window plus "
                             f"allowed_lateness_seconds (at least {needed})")
        return self


class AppSettings(_Section):
    """The Faust application itself."""

    id: str = Field(default="collector", description="Faust app id and consumer group.")
    store: Literal["rocksdb", "memory"] = Field(default="rocksdb", description="Table store.")
    datadir: Path = Field(default=Path(".local/faust"), description="Table state directory.")
    rocksdb_write_buffer_mb: int = Field(default=8, ge=1, description="RocksDB memtable size (MB) per table partition, two per partition. Faust's 64 MB x 3 let the worker's memory grow with the events written.")  # noqa: E501
    rocksdb_memory_mb: int = Field(default=32, ge=8, description="RocksDB memory (MB) for the whole worker: one block cache shared by every table partition, memtables and index/filter blocks charged to it (memtables up to half). Faust's defaults gave each partition its own 2 GB cache and 192 MB of memtables; 128 let a 500k-event run peak 20-25 MB higher than 32 with no CPU to show for it (docs/benchmarks.md). Raise it when the state cache misses often (many more users than app.state_cache_keys).")  # noqa: E501
    state_cache_keys: int = Field(default=20_000, ge=0, description="Decoded state entries a worker keeps in process per table (0: none), the least recently written evicted first; reads of the others go to the store. About 1-5 KB each: keep it above the users a worker sees within a flush interval or two (sessions entries are never cached).")  # noqa: E501
    gc_thresholds: str = Field(default="10000,50,1000", description="The worker's gc.set_threshold(gen0,gen1,gen2) (empty: Python's 700,10,10). With Python's, full collections walked the worker's whole heap (about 115 ms each) every few seconds under load: 17-26% of its CPU, docs/benchmarks.md. Our state is acyclic and freed by reference counting; the collector only finds cycles, now rarely.")  # noqa: E501
    standby_replicas: int = Field(default=1, ge=0, description="Table standby replicas.")
    instance_id: str = Field(
        default="", description="Static group membership id (empty: dynamic membership)."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Log level."
    )
    tracing: bool = Field(
        default=False,
        description="OpenTelemetry tracing: spans for ingest, processing (from a W3C "
        "traceparent Kafka header) and sink writes, sent over OTLP/HTTP.",
    )
    tracing_endpoint: str = Field(
        default="http://127.0.0.1:4318/v1/traces",
        description="OTLP/HTTP traces endpoint (a collector, Tempo, Jaeger).",
    )
    tracing_headers: SecretStr = Field(
        default=SecretStr(""),
        description="Headers for the OTLP endpoint, key=value,key2=value2 (e.g. an API key).",
    )
    tracing_sample_ratio: float = Field(
        default=1.0, ge=0.0, le=1.0,
        description="Share of new traces sampled; a traceparent's decision is kept.",
    )
    tracing_service_name: str = Field(
        default="collector", min_length=1, description="service.name of the spans.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Worker log lines: Faust's text, or one JSON object a line (time, "
        "level, logger, message; topic/partition/offset where there is one).",
    )

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _TOPIC_RE.match(value):
            raise ValueError("app id must be a valid Kafka name ([A-Za-z0-9._-])")
        return value

    @field_validator("gc_thresholds")
    @classmethod
    def _gc(cls, value: str) -> str:
        if value and not re.fullmatch(r"[1-9]\d{2,},\d+,\d+", value.replace(" ", "")):
            raise ValueError("gc_thresholds must be gen0,gen1,gen2 integers with gen0 >= 100 "
                             "(0 turns the collector off), or empty for Python's defaults")
        return value.replace(" ", "")


class Settings(BaseSettings):
    """Everything collector can be told. Sections mirror the INI file."""

    model_config = SettingsConfigDict(
        env_prefix="COLLECTOR_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        case_sensitive=False,
    )

    app: AppSettings = Field(default_factory=AppSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    mysql: MySQLSettings = Field(default_factory=MySQLSettings)
    influx: InfluxSettings = Field(default_factory=InfluxSettings)
    windows: WindowSettings = Field(default_factory=WindowSettings)
    sinks: SinkSettings = Field(default_factory=SinkSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    aggregates: Aggregates = Field(default_factory=dict, description="docs/aggregates.md")

    @model_validator(mode="after")
    def _aggregate_windows(self) -> Settings:
        for name, agg in self.aggregates.items():
            check_window(name, agg, self.windows)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: explicit kwargs, then COLLECTOR_* env, then the INI file, then defaults.
        return (init_settings, env_settings, IniSettingsSource(settings_cls))
