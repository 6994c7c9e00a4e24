"""MySQL/MariaDB sink: idempotent upserts of absolute window values.

``INSERT … ON DUPLICATE KEY UPDATE col = VALUES(col)`` (MariaDB has no MySQL 8
``AS new`` alias), multi-row statements per table (``sql_values``) and one transaction
per batch, so a batch lands whole or not at all and replaying it changes nothing, not
even ``updated_at`` (one UTC timestamp per batch).  A final row is never overwritten by a
non-final one: ``final`` is sticky and, once set, only another final row may change
the values.

Driver errors are translated here: data errors (a value too long or out of range)
become ``BatchRejected`` so the base class bisects to the bad rows; connection and
server-side trouble becomes ``SinkUnavailable`` and the pool is rebuilt next time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Unpack

import aiomysql
import pymysql

from collector.aggregates import BY_NAME, DEFINITIONS, Aggregate
from collector.aggregates.definition import naive_utc
from collector.config.settings import MySQLSettings
from collector.drivers.mysql import LazyPool
from collector.sinks.base import (
    BatchRejected,
    Sink,
    SinkMisconfigured,
    SinkOptions,
    SinkUnavailable,
)
from collector.sinks.rows import Row
from collector.sinks.sql_values import WindowStarts, datetime_literal, statements, values_tuple

log = logging.getLogger(__name__)

#: Value columns per table (after the key columns), in INSERT order (from the definitions).
VALUE_COLUMNS: Final[Mapping[str, tuple[str, ...]]] = {
    d.name: d.value_columns for d in DEFINITIONS if "mysql" in d.sinks
}

#: Server errors caused by a row's data: permanent for that row, so bisect and reject.
DATA_ERRNOS: Final = frozenset({
    1048,  # column cannot be null
    1264,  # out of range value
    1265,  # data truncated
    1292,  # incorrect datetime/double value
    1366,  # incorrect string/integer value
    1367,  # illegal value
    1406,  # data too long
    1416,  # cannot get geometry object (bad value)
    1690,  # value out of range in expression
    4025,  # CHECK constraint failed (MariaDB)
})
#: Errors no retry fixes until an operator acts (credentials, schema, SQL).
CONFIG_ERRNOS: Final = frozenset({1044, 1045, 1049, 1054, 1064, 1142, 1146, 1227, 1698})

#: Strict mode so bad values fail instead of being silently truncated.
_SQL_MODE: Final = "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'"


def upsert_sql(table: str, defn: Aggregate | None = None) -> str:
    """The upsert of ``table`` with ``%s`` placeholders (one row)."""
    prefix, holders, postfix = _upsert_parts(table, defn)
    return f"{prefix}({holders}){postfix}"


def _upsert_parts(table: str, defn: Aggregate | None = None) -> tuple[str, str, str]:
    """``INSERT … VALUES ``, the placeholders and `` ON DUPLICATE …`` of ``table``.

    Assignments run left to right, so their order matters.

    ``updated_at`` comes first (compares old with new values), the value columns next
    (``final`` is still the old one there), ``final`` last.  A configured aggregate's
    identifiers are quoted (whitelisted too, but ``order`` is a fine name and a reserved
    word); the built-ins' statements stay as they were.
    """
    defn = BY_NAME[table] if defn is None else defn
    quote = _quoted if defn.configured else _plain
    table = quote(defn.name)
    keys = tuple(quote(k) for k in defn.key_names)
    values = tuple(quote(v) for v in defn.value_columns)
    columns = ["window_start", "window_seconds", *keys, *values, "final", "updated_at"]
    holders = ", ".join(["%s"] * len(columns))
    keep = "(final AND NOT VALUES(final))"
    same = " AND ".join(f"{col} <=> VALUES({col})" for col in values)
    updates = [f"updated_at = IF({keep} OR ({same} AND final >= VALUES(final)), "
               "updated_at, VALUES(updated_at))"]
    updates += [f"{col} = IF({keep}, {col}, VALUES({col}))" for col in values]
    updates.append("final = GREATEST(final, VALUES(final))")
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES ", holders,
            f" ON DUPLICATE KEY UPDATE {', '.join(updates)}")


def _plain(name: str) -> str:
    return name


def _quoted(name: str) -> str:
    return f"`{name}`"


def row_params(row: Row, updated_at: datetime,
               aggregates: Mapping[str, Aggregate] = BY_NAME) -> tuple[Any, ...]:
    """Driver parameters of one row; ``KeyError``/``TypeError``/``ValueError`` if malformed."""
    return (naive_utc(row.window_start_ms), *_middle_params(row, aggregates), updated_at)


def _middle_params(row: Row, aggregates: Mapping[str, Aggregate]) -> tuple[Any, ...]:
    """A row's parameters between ``window_start`` and ``updated_at``."""
    defn = aggregates.get(row.table)
    if defn is None or "mysql" not in defn.sinks:
        raise ValueError(f"unknown table {row.table!r}")
    values = defn.params(row.values)
    if len(row.key) != len(defn.keys):
        raise ValueError(f"{row.table} needs key {defn.key_names}, got {row.key!r}")
    return (row.window_seconds, *row.key, *values, int(row.revision), row.final)


def classify(exc: BaseException) -> Exception:
    """The sink error a driver/transport exception stands for (httpx-style mapping)."""
    if isinstance(exc, pymysql.err.MySQLError):
        errno = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        if errno in DATA_ERRNOS or isinstance(exc, pymysql.err.DataError):
            return BatchRejected(f"mysql {errno}: {exc.args[-1]}")
        if errno in CONFIG_ERRNOS:
            return SinkMisconfigured(f"mysql {errno}: {exc.args[-1]}")
        if errno is None and isinstance(exc, pymysql.err.ProgrammingError):
            return BatchRejected(f"mysql: {exc}")  # raised client-side, e.g. a NaN value
        if isinstance(exc, pymysql.err.IntegrityError | pymysql.err.ProgrammingError):
            return SinkMisconfigured(f"mysql {errno}: {exc.args[-1]}")
        return SinkUnavailable(f"mysql {errno}: {exc.args[-1] if exc.args else exc!r}")
    if isinstance(exc, TimeoutError):
        return SinkUnavailable("mysql timed out")
    if isinstance(exc, OSError | EOFError | RuntimeError):
        return SinkUnavailable(f"mysql: {exc!r}")
    if isinstance(exc, ValueError | TypeError):  # the driver could not encode a value
        return BatchRejected(f"mysql: cannot encode {exc!r}")
    return SinkUnavailable(f"mysql: unexpected {exc!r}")


class MySQLSink(Sink):
    """Writes every aggregate whose definition names this sink; the pool is created on
    demand and after every outage."""

    name = "mysql"

    def __init__(self, settings: MySQLSettings, *,
                 aggregates: Mapping[str, Aggregate] = BY_NAME,
                 **kwargs: Unpack[SinkOptions]) -> None:
        kwargs.setdefault("write_timeout", max(10.0, 5 * settings.timeout))
        super().__init__(**kwargs)
        self._settings = settings
        self._pool = LazyPool(settings, autocommit=False, init_command=_SQL_MODE,
                              pool_recycle=300)
        self._aggregates = aggregates
        self._statements = {name: _upsert_parts(name, defn)
                            for name, defn in aggregates.items() if "mysql" in defn.sinks}
        self._starts = WindowStarts()

    async def start(self) -> None:
        """Connect now if possible; the sink also starts while MySQL is down."""
        try:
            await self._ensure_pool()
        except SinkUnavailable as exc:
            log.warning("mysql sink starts without MySQL: %s", exc)

    async def close(self) -> None:
        await self._drop_pool()

    async def write(self, batch: list[Row]) -> list[tuple[Row, str]]:
        refused: list[tuple[Row, str]] = []
        groups: dict[str, list[bytes]] = {}
        now = datetime.now(UTC).replace(tzinfo=None)
        updated_at = datetime_literal(  # DATETIME(3): whole ms
            now.replace(microsecond=now.microsecond // 1000 * 1000))
        starts = self._starts
        for row in batch:
            try:
                groups.setdefault(row.table, []).append(values_tuple(
                    starts(row.window_start_ms), _middle_params(row, self._aggregates),
                    updated_at))
            except (KeyError, TypeError, ValueError, pymysql.err.ProgrammingError) as exc:
                refused.append((row, f"malformed {row.table} row: {exc!r}"))
        if not groups:
            return refused
        try:
            pool = await self._ensure_pool()
            async with asyncio.timeout(self._settings.timeout):
                conn = await pool.acquire()
            try:
                async with conn.cursor() as cur:
                    await conn.begin()
                    for table, rows in groups.items():
                        prefix, _, postfix = self._statements[table]
                        for statement in statements(prefix, postfix, rows):
                            await cur.execute(statement)
                    await conn.commit()
            except BaseException:
                conn.close()  # mid-transaction or broken: never reuse (discards the txn)
                raise
            finally:
                await pool.release(conn)
        except SinkUnavailable:
            raise
        except Exception as exc:
            error = classify(exc)
            if type(error) is SinkUnavailable:
                await self._drop_pool()
            raise error from exc
        return refused

    async def _ensure_pool(self) -> aiomysql.Pool:
        try:
            return await self._pool.get()
        except Exception as exc:
            error = classify(exc)
            if isinstance(error, BatchRejected):  # not a row's fault at connect time
                error = SinkUnavailable(str(error))
            raise error from exc

    async def _drop_pool(self) -> None:
        await self._pool.drop()


__all__ = ["MySQLSink", "classify", "naive_utc", "row_params", "upsert_sql"]
