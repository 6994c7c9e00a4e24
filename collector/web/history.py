"""Closed windows from the MySQL sink, for query ranges older than the tables hold.

The tables drop a window once it expired (stats) or once its final row is written
(user activity), so a range query reads the sink rows too and lets the live windows
replace them.  One small pool, opened on first use and rebuilt after an error.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import mode

from collector.aggregates import Aggregate
from collector.config import MySQLSettings
from collector.drivers.mysql import LazyPool
from collector.engine.windows import WindowSpec
from collector.web import query_logic as ql

log = logging.getLogger(__name__)


class HistoryUnavailable(Exception):
    """MySQL could not be read; the answer then holds the live windows only."""


class History(mode.Service):
    """Reads sink rows of a query's range (read-only, autocommit)."""

    def __init__(self, settings: MySQLSettings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._settings = settings
        self._pool = LazyPool(settings, minsize=0, maxsize=2, pool_recycle=300)

    async def windows(self, query: ql.Query, spec: WindowSpec,
                      defn: Aggregate | None = None) -> list[dict[str, Any]]:
        """The sink rows of ``query`` as response windows, or HistoryUnavailable
        (``defn``: a configured aggregate's definition; None for a built-in)."""
        sql, args = ql.history_sql(query, spec.seconds, defn)
        try:
            async with asyncio.timeout(self._settings.timeout * 2):
                pool = await self._pool.get()
                async with pool.acquire() as conn, conn.cursor() as cur:
                    await cur.execute(sql, args)
                    rows = await cur.fetchall()
        except Exception as exc:  # driver, network, timeout: degrade, never a 500
            log.warning("query history: MySQL unavailable: %r", exc)
            await self._drop()
            raise HistoryUnavailable(f"MySQL unavailable: {exc!r}") from exc
        return [ql.history_window(query.table, spec, row, defn) for row in rows]

    async def _drop(self) -> None:
        await self._pool.drop()

    async def on_stop(self) -> None:
        await self._drop()
