"""Settings shared by the sinks (MySQL, InfluxDB)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import Field, field_validator

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

    write_windows_from: datetime | None = Field(
        default=None,
        description="Write only rows of windows starting at or after this time (ISO 8601, "
        "UTC if no offset); `collector reprocess` sets it so that its first, partly "
        "re-read windows never overwrite complete rows. Empty: every window.",
    )

    @field_validator("write_windows_from")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @property
    def write_windows_from_ms(self) -> int | None:
        """:attr:`write_windows_from` as UTC epoch ms (None: no bound)."""
        moment = self.write_windows_from
        return None if moment is None else int(moment.timestamp() * 1000)
