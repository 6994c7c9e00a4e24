"""One lazily created aiomysql pool, shared by the sink, the user repository and the
web view's history: connect on first use within the settings' timeout, and drop the
pool after a driver error so the next use reconnects instead of reusing a broken one.
Each owner still translates the driver's errors at its own boundary."""

from __future__ import annotations

import asyncio
from typing import Any

import aiomysql

from collector.config import MySQLSettings
from collector.drivers.deadline import deadline


class LazyPool:
    """``get()`` the pool (created once, under a lock), ``drop()`` it after an error."""

    def __init__(self, settings: MySQLSettings, *, minsize: int = 1,
                 maxsize: int | None = None, autocommit: bool = True,
                 **options: Any) -> None:
        self._settings = settings
        self._options = {"minsize": minsize, "maxsize": maxsize or settings.pool_size,
                         "autocommit": autocommit, "charset": "utf8mb4",
                         "connect_timeout": settings.timeout, **options}
        self._pool: aiomysql.Pool | None = None
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._pool is not None

    async def get(self) -> aiomysql.Pool:
        pool = self._pool
        if pool is not None:
            return pool
        async with self._lock:
            if self._pool is None:  # not created by another task while we waited
                async with deadline(self._settings.timeout):
                    self._pool = await aiomysql.create_pool(
                        **self._options, **self._settings.connect_kwargs())
            return self._pool

    async def drop(self) -> None:
        """Forget the pool at once (``terminate``: in-flight connections are closed)."""
        async with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()
            await pool.wait_closed()

    async def close(self) -> None:
        """Close the pool gracefully, waiting for its connections (shutdown)."""
        async with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            await pool.wait_closed()
