"""InfluxDB sink: window aggregates as points, written as line protocol over HTTP.

A point's time is its window start and its tags are the row's key, so rewriting a row
overwrites the same point: writes are idempotent and at-least-once delivery is safe.
Only aggregates whose definition names ``influxdb`` are written here (not
``user_activity``: a user_id tag would explode series cardinality): ``add`` drops the
others before buffering, so they are neither written nor counted, and ``SinkHub``
already routes them by the same rule.

Points are built with influxdb-client's ``Point`` (escaping) but sent with aiohttp, so
one client covers both ``/write`` (v1: InfluxDB 1.x, also accepted by 2.x/3.x) and
``/api/v2/write`` (v2).  Status codes are translated here: 204/200 written, 5xx, 408,
429 and transport errors unavailable, 400/413 ``BatchRejected`` (bisected to the bad
rows), 401/403/404 ``SinkMisconfigured``: a wrong token or a missing database refuses
every row alike, so the rows stay buffered and the sink reports unhealthy with the
server's message instead of dead-lettering everything.

Caveat: a final point is overwritten if a non-final version of the same row is written
later (InfluxDB has no conditional write); the buffer never lets that happen within one
flush cycle, and the MySQL sink keeps ``final`` sticky regardless.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Final, Unpack

import aiohttp
import orjson
from influxdb_client import Point, WritePrecision

from collector.aggregates import BY_NAME, Aggregate
from collector.config.settings import InfluxSettings
from collector.sinks.base import (
    BatchRejected,
    Sink,
    SinkMisconfigured,
    SinkOptions,
    SinkUnavailable,
)
from collector.sinks.rows import Row

log = logging.getLogger(__name__)

_MAX_REASON_CHARS: Final = 500
_RETRYABLE_STATUS: Final = frozenset({408, 425, 429})
_CONFIG_STATUS: Final = frozenset({401, 403, 404})


def to_point(row: Row, aggregates: Mapping[str, Aggregate] = BY_NAME) -> Point:
    """The point of a row; ``KeyError``/``TypeError``/``ValueError`` if malformed.

    Its definition gives the measurement, the tags (the key fields) and the fields, e.g.
    event_stats: tags source, type; fields count, value_count (int), sum, min, max, mean
    (float).  Fields whose value is None are omitted (InfluxDB has no null); every point
    also has final and revision.
    """
    defn = aggregates.get(row.table)
    if defn is None or defn.measurement is None or "influxdb" not in defn.sinks:
        raise ValueError(f"{row.table} rows are not written to InfluxDB")
    if len(row.key) != len(defn.keys):
        raise ValueError(f"{row.table} needs key {defn.key_names}, got {row.key!r}")
    v = row.values
    fields = [(f.name, f.of(v)) for f in defn.influx_fields]  # raises before any output
    point = Point(defn.measurement)
    for name, tag in zip(defn.key_names, row.key, strict=True):
        point.tag(name, tag)
    for name, value in fields:
        if value is not None:
            point.field(name, value)
    point.field("final", bool(row.final)).field("revision", int(row.revision))
    return point.time(row.window_start_ms, WritePrecision.MS)


def _written_here(table: str, aggregates: Mapping[str, Aggregate] = BY_NAME) -> bool:
    """Rows of aggregates that do not name this sink are dropped (unknown ones are kept:
    ``to_point`` refuses them, visibly)."""
    defn = aggregates.get(table)
    return defn is None or "influxdb" in defn.sinks


def error_reason(status: int, body: bytes) -> str:
    """The server's own message: ``{"error": …}`` (1.x) or ``{"message": …}`` (2.x)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        obj = None
    if isinstance(obj, dict):
        text = str(obj.get("error") or obj.get("message") or text)
    return f"influxdb {status}: {text[:_MAX_REASON_CHARS]}"


class InfluxSink(Sink):
    """Writes the aggregates that name it (event_stats, segment_stats); one aiohttp
    session, opened on demand."""

    name = "influxdb"

    def __init__(self, settings: InfluxSettings, *,
                 aggregates: Mapping[str, Aggregate] = BY_NAME,
                 **kwargs: Unpack[SinkOptions]) -> None:
        kwargs.setdefault("write_timeout", settings.timeout * 2)
        super().__init__(**kwargs)
        self._settings = settings
        self._aggregates = aggregates
        self._session: aiohttp.ClientSession | None = None
        self._url, self._params, self._headers, self._auth = self._endpoint(settings)

    @staticmethod
    def _endpoint(
        s: InfluxSettings,
    ) -> tuple[str, dict[str, str], dict[str, str], aiohttp.BasicAuth | None]:
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if s.api == "v2":
            params = {"org": s.org, "bucket": s.bucket, "precision": "ms"}
            token = s.token.get_secret_value()
            if token:
                headers["Authorization"] = f"Token {token}"
            return f"{s.url}/api/v2/write", params, headers, None
        params = {"db": s.database, "precision": "ms"}
        if s.retention_policy:
            params["rp"] = s.retention_policy
        # Basic auth (accepted by 1.x) keeps the password out of URLs and access logs.
        auth = (aiohttp.BasicAuth(s.username, s.password.get_secret_value())
                if s.username else None)
        return f"{s.url}/write", params, headers, auth

    def add(self, rows: Iterable[Row]) -> None:
        super().add(row for row in rows if _written_here(row.table, self._aggregates))

    async def start(self) -> None:
        self._ensure_session()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._settings.timeout),
                auth=self._auth,
            )
        return self._session

    async def write(self, batch: list[Row]) -> list[tuple[Row, str]]:
        refused: list[tuple[Row, str]] = []
        lines: list[str] = []
        for row in batch:
            try:
                line = to_point(row, self._aggregates).to_line_protocol()
            except (KeyError, TypeError, ValueError) as exc:
                refused.append((row, f"malformed {row.table} row: {exc!r}"))
                continue
            if not line:
                refused.append((row, f"{row.table} row has no field to write"))
            else:
                lines.append(line)
        if lines:
            await self._post("\n".join(lines).encode())
        return refused

    async def _post(self, body: bytes) -> None:
        session = self._ensure_session()
        try:
            async with session.post(
                self._url, params=self._params, data=body, headers=self._headers
            ) as resp:
                status = resp.status
                payload = b"" if status in (200, 204) else await resp.read()
        except (aiohttp.InvalidURL, aiohttp.ClientConnectorCertificateError) as exc:
            raise SinkMisconfigured(f"influxdb: {exc!r}") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                raise SinkUnavailable("influxdb: timed out") from exc
            raise SinkUnavailable(f"influxdb: {type(exc).__name__}: {exc}") from exc
        if status in (200, 204):
            return
        reason = error_reason(status, payload)
        if status >= 500 or status in _RETRYABLE_STATUS:
            raise SinkUnavailable(reason)
        if status in _CONFIG_STATUS:
            raise SinkMisconfigured(reason)
        raise BatchRejected(reason)  # 400 bad line / type conflict, 413 too large, …

__all__ = ["InfluxSink", "error_reason", "to_point"]
