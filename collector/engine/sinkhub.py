"""Routes aggregate rows to the sinks and flushes them in the background.

The flush runs in its own task so a slow or dead sink never holds up an agent: the
Faust tables are the durable buffer, and a sink's in-memory buffer keeps only the latest
absolute value per row, so it stays bounded by the number of open windows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from collector.aggregates import BY_NAME, Aggregate
from collector.sinks import Row, Sink

log = logging.getLogger(__name__)


class SinkHub:
    """Each row goes to the sinks its aggregate's definition names (``Aggregate.sinks``,
    by sink name): user_activity to the SQL sink only (a user_id tag would explode
    InfluxDB).  Rows of a table without a definition go to every sink."""

    def __init__(
        self,
        sinks: list[Sink],
        *,
        interval: float,
        flush_timeout: float = 10.0,
        aggregates: Mapping[str, Aggregate] = BY_NAME,
    ) -> None:
        self.sinks = sinks
        self.interval = interval
        self.flush_timeout = flush_timeout
        self._wake = asyncio.Event()
        self.on_written: list[Callable[[Sink, list[Row]], None]] = []
        #: table -> names of the sinks that get its rows
        self.routes = {name: defn.sinks for name, defn in aggregates.items()}

    def add(self, rows: list[Row]) -> None:
        routes = self.routes
        for sink in self.sinks:
            mine = [r for r in rows if r.table not in routes or sink.name in routes[r.table]]
            if mine:
                sink.add(mine)
        if rows:  # rows arrive once per window flush: write them now, not an interval later
            self._wake.set()

    def written(self, sink: Sink, rows: list[Row]) -> None:
        for callback in self.on_written:
            callback(sink, rows)

    async def flush_once(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.flush_timeout
        results = await asyncio.gather(
            *(sink.flush(deadline=deadline) for sink in self.sinks), return_exceptions=True
        )
        out: dict[str, Any] = {}
        for sink, result in zip(self.sinks, results, strict=True):
            if isinstance(result, BaseException):
                log.error("sink %s flush crashed: %r", sink.name, result)
                out[sink.name] = repr(result)
            else:
                out[sink.name] = result
        return out

    async def run(self, after_flush: Callable[[], None] | None = None) -> None:
        """Flush as soon as rows arrive (at least every ``interval``) until cancelled.

        A flush that is running when rows arrive is followed by another one at once; a
        failing sink's flush lasts up to ``flush_timeout``, which bounds the retry rate.
        ``after_flush`` runs after each one: a worker paused for the sinks resumes when
        they drain, not at its next window flush.
        """
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            self._wake.clear()
            result = await self.flush_once()
            log.debug("sink flush: %s", result)
            if after_flush is not None:
                try:
                    after_flush()
                except Exception:
                    log.exception("after-flush callback failed")

    def health(self) -> dict[str, Any]:
        return {sink.name: sink.health() for sink in self.sinks}
