"""The response bodies of the HTTP API as pydantic models, from which the OpenAPI
document takes its component schemas.

The handlers build plain dicts (no model per window on the query path: it would cost a
validation per row); ``tests/unit/test_openapi_bodies.py`` validates the bodies the real
functions build against these schemas, so the document cannot drift from the answers.
The health bodies reuse the dataclasses the probes report (pydantic reads dataclasses).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from collector.engine.delivery import TopicHealth
from collector.observability.health import Thresholds
from collector.observability.lag import PartitionLag
from collector.sinks.base import SinkHealth

_CLOSED = ConfigDict(extra="forbid")  # additionalProperties false: a new field is documented


class Error(BaseModel):
    """Every 4xx/5xx JSON body."""

    model_config = _CLOSED

    error: str = Field(description="What went wrong, for a human.")
    field: str | None = Field(None, description="The parameter or header at fault (400, 401).")
    retry_after: int | None = Field(None, description="Seconds to wait (503 on queries).")
    accepted: int | None = Field(None, description="0 on an ingest 503: nothing was accepted.")
    sources: list[str] | None = Field(None, description="404 on ingest: the known sources.")


class IngestResult(BaseModel):
    """202: the broker acknowledged every accepted event."""

    model_config = _CLOSED

    accepted: int = Field(description="Events written to the raw topic.")
    rejected: list[dict[str, Any]] = Field(
        description="The first ingest.max_echoed_rejects rejects: index, reason, detail.")
    rejected_total: int = Field(description="All rejects, echoed or not.")
    rejected_by_reason: dict[str, int] = Field(description="Rejects per dead-letter reason.")


class Window(BaseModel):
    """One window of an aggregate; ``key`` and ``values`` per aggregate (see each path)."""

    model_config = _CLOSED

    window_start: str = Field(json_schema_extra={"format": "date-time"})
    window_end: str = Field(json_schema_extra={"format": "date-time"})
    window_start_ms: int
    key: dict[str, str]
    values: dict[str, Any]
    final: bool = Field(description="The window is closed; values will not change.")


class Windows(BaseModel):
    """200 of every query endpoint."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    table: str
    from_: str = Field(alias="from", json_schema_extra={"format": "date-time"})
    to: str = Field(json_schema_extra={"format": "date-time"})
    window_seconds: int
    windows: list[Window] = Field(description="Sorted by window_start, then key.")
    complete: bool = Field(description="False when MySQL's history was unavailable, or "
                           "for a configured aggregate not written to MySQL whose range "
                           "reaches past windows.expires_seconds: the live windows alone (a "
                           "missing partition is a 503 instead).")
    incomplete: str | None = Field(None, description="Why complete is false.")
    partitions: list[int] | None = Field(
        None, description="scope=local: the partitions this worker answered for.")
    moved: list[int] | None = Field(
        None, description="scope=local of user_sessions: starts (epoch ms) that are no "
        "session any more (merged or moved earlier); MySQL rows there are older versions.")


class Liveness(BaseModel):
    model_config = _CLOSED

    live: bool
    reason: str | None = Field(None, description="Why the fetcher died (503).")


class Readiness(BaseModel):
    model_config = _CLOSED

    ready: bool
    reasons: list[str] = Field(description="Why not ready; empty when ready.")
    producing: dict[str, TopicHealth] = Field(description="Topics whose produces fail.")
    sinks: dict[str, SinkHealth]
    stalled_partitions: list[PartitionLag]
    thresholds: Thresholds


class SinksHealth(BaseModel):
    model_config = _CLOSED

    healthy: bool
    reasons: list[str]
    sinks: dict[str, SinkHealth]


MODELS: tuple[type[BaseModel], ...] = (Error, IngestResult, Window, Windows, Liveness,
                                       Readiness, SinksHealth)

__all__ = ["MODELS", "Error", "IngestResult", "Liveness", "Readiness", "SinksHealth",
           "Window", "Windows"]
