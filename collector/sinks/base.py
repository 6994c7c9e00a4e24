"""What every sink shares: a latest-wins buffer, bounded retries, bisection, health.

Concrete sinks only implement ``write(batch)`` and translate their driver's errors at
that boundary into three outcomes: per-row rejections (returned), ``BatchRejected``
(the server refused the batch for a reason some row in it carries) and
``SinkUnavailable`` (try again later).  Everything about *when* to retry lives here, so
both sinks behave the same way during an outage.

Delivery is at-least-once: a row leaves the buffer only once the sink confirmed it (or
rejected it for good), and rows carry absolute values, so the idempotent upserts of the
concrete sinks make a repeated write harmless.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypedDict

from collector.drivers.deadline import deadline
from collector.observability import Metrics, tracing
from collector.sinks.rows import Ident, Row

log = logging.getLogger(__name__)


class SinkUnavailable(Exception):
    """The sink could not take the batch now (refused, timed out, 5xx): retry later."""


class SinkMisconfigured(SinkUnavailable):
    """The sink refuses every write until someone fixes it (bad credentials, no database).

    Not the rows' fault, so they stay buffered instead of being dead-lettered; retrying
    within the same flush is pointless, so the flush stops at once.
    """


class BatchRejected(Exception):
    """The server refused the batch for good because of some row in it (which one: bisect)."""


@dataclass(frozen=True, slots=True)
class SinkHealth:
    """``failing_since`` and ``last_success`` are ``time.time()`` (UTC epoch seconds)."""

    healthy: bool
    failing_since: float | None
    last_error: str | None
    pending: int
    last_success: float | None


@dataclass(frozen=True, slots=True)
class FlushResult:
    """``error`` is set when rows stayed pending because the sink was unavailable."""

    written: int
    rejected: int
    pending: int
    error: str | None = None


RejectedCallback = Callable[[Row, str], None]
WrittenCallback = Callable[[list[Row]], None]


class SinkOptions(TypedDict, total=False):
    """``Sink`` constructor options, so concrete sinks can pass them through typed."""

    name: str | None
    metrics: Metrics | None
    batch_size: int
    retry_base: float
    retry_cap: float
    flush_timeout: float
    write_timeout: float
    on_rejected: RejectedCallback | None
    on_written: WrittenCallback | None
    rng: random.Random | None
    windows_from_ms: int | None


class Sink(ABC):
    """Buffers rows and writes them in batches with bounded, jittered retries.

    ``on_rejected(row, reason)`` gets every row refused for good (the caller dead-letters
    it); ``on_written(rows)`` every batch confirmed.  Both are plain attributes, so the
    owner may set them after construction.
    """

    name: str = "sink"

    def __init__(
        self,
        *,
        name: str | None = None,
        metrics: Metrics | None = None,
        batch_size: int = 500,
        retry_base: float = 0.2,
        retry_cap: float = 10.0,
        flush_timeout: float = 5.0,
        write_timeout: float = 30.0,
        on_rejected: RejectedCallback | None = None,
        on_written: WrittenCallback | None = None,
        rng: random.Random | None = None,
        windows_from_ms: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if name is not None:
            self.name = name
        self.metrics = metrics
        self.batch_size = batch_size
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.flush_timeout = flush_timeout
        self.write_timeout = write_timeout
        self.on_rejected: RejectedCallback = on_rejected or self._log_rejected
        self.on_written: WrittenCallback = on_written or (lambda rows: None)
        self._rng = rng or random.Random()
        #: rows of windows starting earlier are dropped (``sinks.write_windows_from``)
        self.windows_from_ms = windows_from_ms
        #: rows dropped for starting before ``windows_from_ms``
        self.skipped_early = 0
        self._buffer: dict[Ident, Row] = {}
        #: the worker lost its partitions without knowing (frozen past its session):
        #: its buffered rows are older than the new owners' and must not be written
        self.fenced: Callable[[], bool] = lambda: False
        #: rows dropped because the worker was fenced (the new owners write them)
        self.discarded = 0
        self._flush_lock = asyncio.Lock()
        #: rows added while a flush runs: it writes them next, ahead of the rest of its
        #: snapshot (None: no flush running)
        self._arrived: list[Row] | None = None
        self._healthy = True
        self._failing_since: float | None = None
        self._last_error: str | None = None
        self._last_success: float | None = None
        if metrics is not None:
            metrics.sink_healthy.labels(self.name).set(1)

    # ------------------------------------------------------------------ interface

    @abstractmethod
    async def write(self, batch: list[Row]) -> list[tuple[Row, str]]:
        """Write ``batch`` idempotently; return the rows refused for good, with reasons.

        Raise ``SinkUnavailable`` for transient failures and ``BatchRejected`` when the
        whole batch was refused because of some row in it.  Rows not returned and no
        exception mean written.
        """

    async def start(self) -> None:
        """Open connections early if the sink wants to; writes must work without it."""
        return None

    async def close(self) -> None:
        """Release connections; buffered rows are kept (a later flush may still run)."""
        return None

    # ------------------------------------------------------------------ buffering

    def add(self, rows: Iterable[Row]) -> None:
        """Buffer rows; the newest version of each row wins, but a final one is kept."""
        buffer = self._buffer
        since = self.windows_from_ms
        for row in rows:
            if since is not None and row.window_start_ms < since:
                if not self.skipped_early:
                    log.warning("sink %s: not writing windows that start before %d ms "
                                "(sinks.write_windows_from)", self.name, since)
                self.skipped_early += 1
                continue
            ident = row.ident
            held = buffer.get(ident)
            if held is not None and held.final and not row.final:
                continue
            buffer.pop(ident, None)  # re-insert: a row's place follows its latest update
            buffer[ident] = row
            if self._arrived is not None:
                self._arrived.append(row)

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def health(self) -> SinkHealth:
        return SinkHealth(
            healthy=self._healthy,
            failing_since=self._failing_since,
            last_error=self._last_error,
            pending=len(self._buffer),
            last_success=self._last_success,
        )

    # ------------------------------------------------------------------ flushing

    async def flush(self, deadline: float | None = None) -> FlushResult:
        """Write what is buffered now, retrying transient failures until ``deadline``.

        ``deadline`` is ``time.monotonic()`` based (default: now + ``flush_timeout``).
        One write is always attempted; after that nothing starts past the deadline.
        Rows that could not be written stay buffered for the next flush.

        Rows added meanwhile go next, ahead of the rest of the snapshot: a window flush
        hands over thousands of user rows (0.5-0.8 s of writes) just before the merge
        hands over the few global rows, which waited behind all of them.
        """
        async with self._flush_lock:
            self._arrived = []
            try:
                return await self._flush(deadline)
            finally:
                self._arrived = None

    async def _flush(self, deadline: float | None) -> FlushResult:
        if deadline is None:
            deadline = time.monotonic() + self.flush_timeout
        snapshot = list(self._buffer.values())
        queue = deque(
            snapshot[i : i + self.batch_size]
            for i in range(0, len(snapshot), self.batch_size)
        )
        written = rejected = attempt = 0
        error: str | None = None
        first = True
        while queue or self._arrived:
            arrived = self._arrived
            if arrived:
                self._arrived = []
                queue.extendleft(reversed([arrived[i : i + self.batch_size]
                                           for i in range(0, len(arrived),
                                                          self.batch_size)]))
            if not first and time.monotonic() >= deadline:
                break  # what is left waits for the next flush
            first = False
            if self.fenced():
                self._discard()
                break
            # Drop rows written, rejected or superseded since the snapshot.
            batch = [row for row in queue.popleft() if self._buffer.get(row.ident) is row]
            if not batch:
                continue
            try:
                refused = await self._timed_write(batch)
            except SinkUnavailable as exc:
                error = self._failed(exc)
                delay = self._rng.uniform(
                    0, min(self.retry_cap, self.retry_base * 2**attempt)
                )
                attempt += 1
                if (
                    isinstance(exc, SinkMisconfigured)
                    or time.monotonic() + delay >= deadline
                ):
                    break
                if self.metrics is not None:
                    self.metrics.sink_retries.labels(self.name).inc()
                await asyncio.sleep(delay)
                queue.appendleft(batch)
                continue
            except BatchRejected as exc:
                if len(batch) == 1:
                    rejected += self._reject([(batch[0], str(exc))])
                else:
                    mid = len(batch) // 2
                    queue.extendleft((batch[mid:], batch[:mid]))
                continue
            attempt = 0
            error = None
            rejected += self._reject(refused)
            written += self._succeeded(batch, refused)
        return FlushResult(written, rejected, len(self._buffer), error)

    def _discard(self) -> None:
        """Drop every buffered row: a fenced worker owns no partition any more, and each
        new owner writes its rows again from the recovered state after its rebalance."""
        if self._buffer:
            log.warning("sink %s: dropping %d buffered rows: this worker was frozen past its "
                        "session and its partitions moved", self.name, len(self._buffer))
            self.discarded += len(self._buffer)
            self._buffer.clear()

    async def _timed_write(self, batch: list[Row]) -> list[tuple[Row, str]]:
        """``write`` bounded in time, with anything unexpected counted as unavailable.

        An unexpected exception is most likely a bug that would hit every row alike, so
        the rows are kept (and the error logged) rather than dead-lettered.
        """
        started = time.monotonic()
        try:
            with tracing.span("collector.sink.write", {"collector.sink": self.name,
                                                       "collector.rows": len(batch)},
                              kind="CLIENT", links=tracing.links_for(self.name)):
                async with deadline(self.write_timeout):
                    return await self.write(batch)
        except (SinkUnavailable, BatchRejected):
            raise
        except TimeoutError as exc:
            raise SinkUnavailable(f"write timed out after {self.write_timeout:g}s") from exc
        except Exception as exc:
            log.exception("sink %s: unexpected error writing %d rows", self.name, len(batch))
            raise SinkUnavailable(f"unexpected {exc!r}") from exc
        finally:
            if self.metrics is not None:
                self.metrics.sink_latency.labels(self.name).observe(time.monotonic() - started)

    def _succeeded(self, batch: list[Row], refused: list[tuple[Row, str]]) -> int:
        refused_ids = {id(row) for row, _ in refused}
        done = [row for row in batch if id(row) not in refused_ids]
        for row in done:
            if self._buffer.get(row.ident) is row:
                del self._buffer[row.ident]
        now = time.time()
        if not self._healthy:
            log.info("sink %s is healthy again (down since %.0f)", self.name,
                     self._failing_since or now)
        self._healthy, self._failing_since, self._last_error = True, None, None
        self._last_success = now
        if self.metrics is not None:
            self.metrics.sink_healthy.labels(self.name).set(1)
            self.metrics.sink_rows.labels(self.name).inc(len(done))
            for row in done:
                self.metrics.e2e_latency.observe(max(0.0, now - row.latest_event_ms / 1000))
        if done:
            try:
                self.on_written(done)
            except Exception:
                log.exception("sink %s: on_written callback failed", self.name)
        return len(done)

    def _reject(self, refused: list[tuple[Row, str]]) -> int:
        for row, reason in refused:
            if self._buffer.get(row.ident) is row:
                del self._buffer[row.ident]
            if self.metrics is not None:
                self.metrics.sink_failed.labels(self.name).inc()
            try:
                self.on_rejected(row, reason)
            except Exception:
                log.exception("sink %s: on_rejected callback failed", self.name)
        return len(refused)

    def _failed(self, exc: SinkUnavailable) -> str:
        message = str(exc) or type(exc).__name__
        if self._healthy:
            log.warning("sink %s is unavailable: %s", self.name, message)
            self._failing_since = time.time()
        self._healthy = False
        self._last_error = message
        if self.metrics is not None:
            self.metrics.sink_healthy.labels(self.name).set(0)
        return message

    def _log_rejected(self, row: Row, reason: str) -> None:
        log.error("sink %s rejected %s %.200r: %s", self.name, row.table, row.key, reason)


__all__ = [
    "BatchRejected",
    "FlushResult",
    "Sink",
    "SinkHealth",
    "SinkMisconfigured",
    "SinkOptions",
    "SinkUnavailable",
]
