"""Settings shared by the sinks (MySQL, InfluxDB)."""

from __future__ import annotations

from pydantic import Field

from collector.config.section import Section


class SinkSettings(Section):
    """Backpressure: how many rows a sink may hold before consumption pauses."""

    max_pending_rows: int = Field(
        default=100_000, ge=100,
        description="Rows a sink may hold unwritten before the worker pauses its raw "
        "partitions (Kafka keeps the backlog; ingest stays up).",
    )
    resume_fraction: float = Field(
        default=0.5, gt=0, lt=1,
        description="Resume consuming once every sink holds fewer than this share of "
        "max_pending_rows.",
    )
