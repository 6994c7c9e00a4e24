"""The shared sink core: buffering, bounded retries, bisection, health and metrics."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Unpack

import pytest
from prometheus_client import CollectorRegistry

from collector.observability import Metrics
from collector.sinks import (
    BatchRejected,
    FlushResult,
    Row,
    Sink,
    SinkMisconfigured,
    SinkUnavailable,
)
from collector.sinks.base import SinkOptions

BAD = "bad"


def row(user: str = "u1", count: int = 1, *, start: int = 60_000, final: bool = False) -> Row:
    return Row(
        table="user_activity", window_start_ms=start, window_seconds=60, key=(user,),
        values={"count": count, "types": ["click"], "first_ts": start, "last_ts": start},
        final=final, latest_event_ms=int(time.time() * 1000) - 1500,
    )


class Scripted(Sink):
    """write() fails transiently ``fail`` times, then refuses rows of user ``bad``.

    ``whole_batch`` refuses any batch containing a bad row as a whole (like an HTTP 400),
    otherwise bad rows are returned one by one.
    """

    name = "scripted"

    def __init__(
        self, *, fail: int = 0, whole_batch: bool = False, **kwargs: Unpack[SinkOptions]
    ) -> None:
        kwargs.setdefault("retry_base", 0.001)
        kwargs.setdefault("retry_cap", 0.004)
        kwargs.setdefault("rng", random.Random(7))
        super().__init__(**kwargs)
        self.fail = fail
        self.whole_batch = whole_batch
        self.calls: list[list[Row]] = []
        self.stored: dict[tuple[object, ...], Row] = {}
        self.rejected: list[tuple[Row, str]] = []
        self.on_rejected = lambda r, reason: self.rejected.append((r, reason))
        self.during_write: Callable[[], None] | None = None

    async def write(self, batch: list[Row]) -> list[tuple[Row, str]]:
        self.calls.append(list(batch))
        if self.during_write is not None:
            self.during_write()
        await asyncio.sleep(0)
        if self.fail:
            self.fail -= 1
            raise SinkUnavailable("connection refused")
        bad = [r for r in batch if r.key[0] == BAD]
        if bad and self.whole_batch:
            raise BatchRejected("400: field type conflict")
        for r in batch:
            if r not in bad:
                self.stored[r.ident] = r
        return [(r, "too long") for r in bad]


def once(action: Callable[[], None]) -> Callable[[], None]:
    """``action`` on the first call only (rows that arrive during one write)."""
    done: list[bool] = []

    def run() -> None:
        if not done:
            done.append(True)
            action()

    return run


def sample(registry: CollectorRegistry, name: str, sink: str = "scripted") -> float:
    labels = {"sink": sink} if sink else {}
    return registry.get_sample_value(f"collector_{name}", labels) or 0.0


# ------------------------------------------------------------------ buffering


def test_latest_value_wins_and_final_is_sticky() -> None:
    sink = Scripted()
    sink.add([row(count=1), row("u2", 5)])
    sink.add([row(count=2)])
    assert sink.pending == 2
    assert sink._buffer[row().ident].values["count"] == 2
    sink.add([row(count=3, final=True)])
    sink.add([row(count=9)])  # a non-final never replaces a final
    held = sink._buffer[row().ident]
    assert held.final and held.values["count"] == 3
    sink.add([row(count=4, final=True)])  # a newer final does
    assert sink._buffer[row().ident].values["count"] == 4


async def test_flush_writes_in_batches_and_empties_the_buffer() -> None:
    written: list[Row] = []
    sink = Scripted(batch_size=2, on_written=written.extend)
    sink.add([row(f"u{i}") for i in range(5)])
    result = await sink.flush()
    assert result == FlushResult(written=5, rejected=0, pending=0, error=None)
    assert [len(c) for c in sink.calls] == [2, 2, 1]
    assert len(written) == 5 and sink.pending == 0
    assert (await sink.flush()).written == 0 and len(sink.calls) == 3


async def test_a_fenced_worker_drops_its_buffered_rows_even_mid_flush() -> None:
    """A worker frozen past its session owns nothing when it thaws: rows it buffered
    before the freeze are older than the new owners', so none is written, not even the
    rest of a flush that was under way when it froze."""
    frozen = False
    sink = Scripted(batch_size=2)

    def freeze() -> None:
        nonlocal frozen
        frozen = True

    sink.fenced = lambda: frozen
    sink.add([row(f"u{i}") for i in range(5)])
    sink.during_write = freeze  # the first batch was on its way when the worker froze
    result = await sink.flush()
    assert [len(c) for c in sink.calls] == [2]
    assert result.written == 2 and sink.pending == 0 and sink.discarded == 3
    sink.add([row("u9")])
    assert (await sink.flush()).written == 0 and len(sink.calls) == 1 and sink.discarded == 4


# ------------------------------------------------------------------ retries and outages


async def test_transient_failures_are_retried_within_the_deadline() -> None:
    sink = Scripted(fail=3)
    sink.add([row()])
    result = await sink.flush(deadline=time.monotonic() + 5)
    assert result.written == 1 and result.error is None
    assert len(sink.calls) == 4
    assert sink.health().healthy


async def test_retries_stop_at_the_deadline_and_rows_are_kept() -> None:
    sink = Scripted(fail=10**9, retry_base=0.01, retry_cap=0.05)
    sink.add([row(), row("u2")])
    started = time.monotonic()
    result = await sink.flush(deadline=started + 0.3)
    elapsed = time.monotonic() - started
    assert elapsed < 0.4  # never sleeps past the deadline
    assert result.written == 0 and result.pending == 2
    assert result.error == "connection refused"
    assert 2 <= len(sink.calls) < 60  # backoff grows: bounded number of attempts
    health = sink.health()
    assert not health.healthy and health.pending == 2
    assert health.failing_since is not None and health.last_error == "connection refused"


async def test_one_attempt_even_if_the_deadline_passed() -> None:
    sink = Scripted(fail=1)
    sink.add([row()])
    result = await sink.flush(deadline=time.monotonic() - 1)
    assert len(sink.calls) == 1 and result.pending == 1


async def test_rows_survive_an_outage_and_land_later() -> None:
    sink = Scripted(fail=10**9)
    sink.add([row(count=1), row("u2")])
    await sink.flush(deadline=time.monotonic() + 0.05)
    failing_since = sink.health().failing_since
    assert failing_since is not None
    # still down: the newer value replaces the pending one, nothing is lost
    sink.add([row(count=2)])
    await sink.flush(deadline=time.monotonic() + 0.05)
    assert sink.health().failing_since == failing_since  # first failure is remembered
    sink.fail = 0
    result = await sink.flush()
    assert result.written == 2 and result.pending == 0
    assert sink.stored[row().ident].values["count"] == 2
    health = sink.health()
    assert health.healthy and health.failing_since is None and health.last_error is None
    assert health.last_success is not None and health.last_success >= failing_since


async def test_a_newer_value_arriving_during_a_write_is_kept() -> None:
    sink = Scripted()
    sink.add([row(count=1)])
    sink.during_write = once(lambda: sink.add([row(count=2)]))
    await sink.flush()  # the older value's confirmation does not drop the newer one,
    assert [c[0].values["count"] for c in sink.calls] == [1, 2]  # written next
    assert sink.stored[row().ident].values["count"] == 2 and sink.pending == 0


async def test_rows_arriving_during_a_flush_are_written_before_the_rest_of_it() -> None:
    """A window flush hands thousands of user rows over just before the merge hands over
    the few global ones; those must not wait for every user row to be written."""
    sink = Scripted(batch_size=2)
    sink.add([row(f"u{i}") for i in range(6)])
    sink.during_write = once(lambda: sink.add([row("global", start=120_000)]))
    result = await sink.flush()
    assert [[r.key[0] for r in call] for call in sink.calls] == [
        ["u0", "u1"], ["global"], ["u2", "u3"], ["u4", "u5"]]
    assert result.written == 7 and sink.pending == 0


async def test_a_newer_value_arriving_during_a_failed_write_is_kept() -> None:
    sink = Scripted(fail=10**9)
    sink.add([row(count=1)])
    sink.during_write = lambda: sink.add([row(count=2)])
    await sink.flush(deadline=time.monotonic() + 0.02)
    assert sink._buffer[row().ident].values["count"] == 2


async def test_misconfiguration_stops_the_flush_at_once() -> None:
    class Misconfigured(Scripted):
        async def write(self, batch: list[Row]) -> list[tuple[Row, str]]:
            self.calls.append(batch)
            raise SinkMisconfigured("influxdb 404: database not found")

    sink = Misconfigured()
    sink.add([row()])
    result = await sink.flush(deadline=time.monotonic() + 5)
    assert len(sink.calls) == 1 and result.pending == 1
    assert result.error == "influxdb 404: database not found"
    assert sink.rejected == [] and not sink.health().healthy


async def test_unexpected_errors_and_hangs_keep_the_rows() -> None:
    class Broken(Scripted):
        async def write(self, batch: list[Row]) -> list[tuple[Row, str]]:
            if self.fail:
                await asyncio.sleep(10)
            raise KeyError("bug")

    sink = Broken(write_timeout=0.02)
    sink.add([row()])
    result = await sink.flush(deadline=time.monotonic() + 0.01)
    assert result.pending == 1 and result.error is not None and "KeyError" in result.error
    sink.fail = 1
    result = await sink.flush(deadline=time.monotonic() + 0.01)
    assert result.pending == 1 and result.error == "write timed out after 0.02s"


# ------------------------------------------------------------------ rejections


async def test_per_row_rejections_go_to_the_callback_once() -> None:
    sink = Scripted()
    sink.add([row("u1"), row(BAD), row("u2")])
    result = await sink.flush()
    assert (result.written, result.rejected, result.pending) == (2, 1, 0)
    assert [(r.key, reason) for r, reason in sink.rejected] == [((BAD,), "too long")]
    await sink.flush()
    assert len(sink.rejected) == 1  # not retried


@pytest.mark.parametrize("size", [1, 2, 7, 16, 33])
async def test_whole_batch_rejections_are_bisected_to_the_bad_rows(size: int) -> None:
    sink = Scripted(whole_batch=True, batch_size=64)
    rows = [row(f"u{i}") for i in range(size)]
    bad_positions = {0, size // 2, size - 1}
    for i in bad_positions:
        rows[i] = row(BAD, start=60_000 * (i + 1))
    sink.add(rows)
    result = await sink.flush()
    assert result.rejected == len(bad_positions)
    assert result.written == size - len(bad_positions)
    assert result.pending == 0
    assert sorted(r.window_start_ms for r, _ in sink.rejected) == sorted(
        60_000 * (i + 1) for i in bad_positions
    )
    assert all(reason == "400: field type conflict" for _, reason in sink.rejected)
    good = {r.ident for r in rows if r.key[0] != BAD}
    assert set(sink.stored) == good
    # bisection costs O(bad * log n) writes, not one per row
    assert len(sink.calls) <= 1 + 2 * len(bad_positions) * max(1, size.bit_length())


async def test_bisection_survives_a_transient_failure_in_between() -> None:
    sink = Scripted(whole_batch=True)
    sink.add([row("u1"), row(BAD), row("u2"), row("u3")])
    original = sink.write

    async def flaky(batch: list[Row]) -> list[tuple[Row, str]]:
        if len(sink.calls) == 1:  # the second call (first half) fails once
            sink.calls.append(batch)
            raise SinkUnavailable("timeout")
        return await original(batch)

    sink.write = flaky  # type: ignore[method-assign]
    result = await sink.flush()
    assert (result.written, result.rejected, result.pending) == (3, 1, 0)


# ------------------------------------------------------------------ metrics


async def test_metrics_follow_writes_failures_and_health() -> None:
    registry = CollectorRegistry()
    sink = Scripted(metrics=Metrics(registry), fail=2)
    assert sample(registry, "sink_healthy") == 1
    sink.add([row("u1"), row(BAD)])
    await sink.flush(deadline=time.monotonic() + 0.0001)  # one failed attempt, no retry
    assert sample(registry, "sink_healthy") == 0
    assert sample(registry, "sink_retries_total") == 0
    result = await sink.flush(deadline=time.monotonic() + 5)
    assert result.written == 1 and result.rejected == 1
    assert sample(registry, "sink_healthy") == 1
    assert sample(registry, "sink_retries_total") == 1
    assert sample(registry, "sink_rows_written_total") == 1
    assert sample(registry, "sink_rows_failed_total") == 1
    assert sample(registry, "sink_write_seconds_count") == 3  # every attempt is timed
    count = sample(registry, "end_to_end_latency_seconds_count", sink="")
    total = sample(registry, "end_to_end_latency_seconds_sum", sink="")
    assert count == 1 and 1.4 < total < 10


async def test_windows_before_write_windows_from_are_not_written() -> None:
    """``collector reprocess`` re-reads the first windows only in part: never write them."""
    sink = Scripted(windows_from_ms=120_000)
    sink.add([row("early", start=60_000), row("edge", start=120_000),
              row("late", start=180_000)])
    assert sink.pending == 2 and sink.skipped_early == 1
    await sink.flush()
    assert {r.key for r in sink.stored.values()} == {("edge",), ("late",)}


def test_write_windows_from_setting_is_utc_epoch_ms() -> None:
    from collector.config import SinkSettings

    assert SinkSettings().write_windows_from_ms is None
    naive = SinkSettings(write_windows_from="2026-11-24T10:00:00")  # type: ignore[arg-type]
    assert naive.write_windows_from_ms == 1795514400000
