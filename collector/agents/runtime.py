"""Per-worker resources the agents share: metrics, enrichment, windows, sinks.  One
instance per app, started and stopped with it (a dependency of the app service)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

import faust
import mode
from aiokafka.errors import KafkaError
from faust.types import TP
from prometheus_client import CollectorRegistry

from collector.adapters.consumer import committed_offsets, consumer_offsets
from collector.adapters.output import KafkaOutput
from collector.adapters.sensors import install_faust_sensors
from collector.adapters.state import FaustState
from collector.adapters.tables import Tables, set_changelog_buffer
from collector.adapters.transport import set_fetch_max_wait
from collector.config import Settings
from collector.db.tables import SchemaMismatch, ensure_configured_tables
from collector.engine.aggregator import Aggregator, Specs
from collector.engine.backpressure import Backpressure
from collector.engine.dedupe import CHUNK_PREFIX
from collector.engine.delivery import ProduceHealth
from collector.engine.flusher import BacklogWatch, Flusher
from collector.engine.merger import Merger
from collector.engine.processor import RawProcessor
from collector.engine.quiet import QuietFollowUp
from collector.engine.rejected import RejectedRows
from collector.engine.schedule import FetchWait
from collector.engine.sessions import KIND as SESSIONS_KIND
from collector.engine.sessions import SEP as SESSIONS_SEP
from collector.engine.sinkhub import SinkHub
from collector.enrichment import Enricher, ProfileCache, UserRepository
from collector.enrichment.errors import SourceError
from collector.kafka.topics import partition_mismatches
from collector.models import Reason
from collector.observability import Metrics
from collector.observability.lag import LagTracker
from collector.observability.summary import RateHistory, Totals, totals_of
from collector.sinks import InfluxSink, MySQLSink

log = logging.getLogger(__name__)

#: changelog records Faust may buffer before it throttles the streams (Faust: 100)
CHANGELOG_BUFFER_MAX = 20_000
#: how long the start-up check of the topics' partition counts may take
TOPIC_CHECK_TIMEOUT_S = 15.0
#: seconds between attempts to create configured aggregates' tables while MySQL is down
TABLES_RETRY_S = 5.0


class Runtime(mode.Service):
    """Holds what the agents need; connections open lazily on first use."""

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        tables: Tables,
        registry: CollectorRegistry | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.settings = settings
        self.tables = tables
        #: the web views' services (collector.web.register sets them)
        self.sink_history: Any = None
        self.ingest_producer: Any = None
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        if settings.web.faust_sensors:
            install_faust_sensors(app, self.registry)
        #: per raw partition: lag and commit progress (readiness, /metrics, web view)
        self.lag = LagTracker()
        #: recent totals, so the web view's rates are computed here, once
        self.history = RateHistory()
        self.cache = ProfileCache(settings.redis)
        self.repo = UserRepository(settings.mysql)
        self.enricher = Enricher(
            self.cache, self.repo, lookup_timeout=settings.redis.timeout + settings.mysql.timeout,
            local_ttl=settings.redis.local_ttl, local_max=settings.redis.local_max,
        )
        metrics = self.metrics
        self.output = KafkaOutput(app, health=ProduceHealth(
            on_failure=lambda topic: metrics.produce_failures.labels(topic).inc(),
            on_state=lambda topic, ok: metrics.produce_failing.labels(topic).set(0 if ok else 1),
        ))
        kafka, windows = settings.kafka, settings.windows
        self.specs = Specs.from_settings(settings)
        changelog = self.output if kafka.bulk_changelog else None
        checkpoints = getattr(app, "state_checkpoints", None)  # run before each commit
        per_commit = kafka.changelog_per_commit and checkpoints is not None
        self.window_state = FaustState(tables.state, kafka.raw_topics[0], output=changelog,
                                       cache_max=settings.app.state_cache_keys,
                                       uncached=(SESSIONS_KIND + SESSIONS_SEP, CHUNK_PREFIX),
                                       coalesce=per_commit)
        self.aggregator = Aggregator(self.window_state, self.specs)
        self.processor = RawProcessor(settings, self.enricher, self.metrics,
                                      aggregator=self.aggregator)
        since = settings.sinks.write_windows_from_ms  # collector reprocess
        aggregates = self.specs.by_name
        self.mysql_sink = MySQLSink(settings.mysql, aggregates=aggregates, metrics=self.metrics,
                                    windows_from_ms=since)
        self.influx_sink = InfluxSink(settings.influx, aggregates=aggregates,
                                      metrics=self.metrics, windows_from_ms=since)
        self.sinks = SinkHub([self.mysql_sink, self.influx_sink],
                             interval=windows.flush_interval_seconds, aggregates=aggregates)
        self.rejected = RejectedRows(
            send=self._send_dead_letter,
            release=lambda rows: self.flusher.on_user_rows_written(rows),
            spawn=self.add_future,
            # labelled on first use: no sink_rejected series until a row is refused
            on_dead_lettered=lambda: metrics.dead_lettered.labels(
                "sink", Reason.SINK_REJECTED.value).inc(),
        )
        for sink in self.sinks.sinks:
            sink.on_rejected = self.rejected  # type: ignore[method-assign]
            sink.fenced = self.fenced
        self._held_rows: list[Any] = []  # the flusher's, until the next checkpoint
        self.flusher = Flusher(
            aggregator=self.aggregator, state=self.window_state, specs=self.specs,
            raw_topics=kafka.raw_topics, idle_timeout_s=windows.idle_timeout_seconds,
            send_partial=self._send_partial, partials_partitions=kafka.partitions,
            add_user_rows=self._held_rows.extend, caught_up=self.caught_up,
            session_update_s=windows.session_update_seconds,
            row_budget=self.row_budget,
        )
        self.mysql_sink.on_written = self.flusher.on_user_rows_written  # type: ignore[method-assign]
        # not coalesced: it writes rows as it merges (and it merges few records)
        self.merger_state = FaustState(tables.merged, kafka.partials_topic, output=changelog,
                                       cache_max=settings.app.state_cache_keys)
        if checkpoints is not None:
            checkpoints += [self.window_state.checkpoint, self.merger_state.checkpoint]
        self.merger = Merger(
            state=self.merger_state, specs=self.specs,
            expected_slots=[f"{t}|{p}" for t in kafka.raw_topics for p in range(kafka.partitions)],
            add_rows=self.sinks.add, expires_ms=windows.expires_seconds * 1000,
        )
        self.last_progress: dict[str, int] = {}
        #: one flush at a time: the timer and the flush after a drained backlog
        self._flush_lock = asyncio.Lock()
        self.backlog = BacklogWatch(settings.windows.flush_after_backlog_seconds)
        self.fetch_wait = FetchWait(kafka.fetch_max_wait_caught_up_ms, kafka.fetch_max_wait_ms)
        self.metrics.fetch_max_wait.set(kafka.fetch_max_wait_ms)
        quiet_s = windows.quiet_flush_seconds
        self.quiet = QuietFollowUp(quiet_s if quiet_s < windows.flush_interval_seconds else 0.0,
                                   self.flusher.waiting_quiet,
                                   lambda: self.flush_windows("quiet"))
        self.backpressure = Backpressure(settings.sinks.max_pending_rows,
                                         settings.sinks.resume_fraction)

    async def _send_partial(
        self, key: bytes, value: bytes, partition: int | None
    ) -> Awaitable[Any]:
        return await self.output.send(self.settings.kafka.partials_topic, key, value, None,
                                      partition)

    async def _send_dead_letter(
        self, payload: bytes, headers: list[tuple[str, bytes]]
    ) -> Awaitable[Any]:
        return await self.output.send(self.settings.kafka.deadletter_topic, None, payload,
                                      headers)

    def owned(self, topics: list[str]) -> set[tuple[str, int]]:
        """Partitions of ``topics`` actively assigned to this worker (not standbys)."""
        wanted = set(topics)
        return {(tp.topic, tp.partition) for tp in self.app.consumer.assignment()
                if tp.topic in wanted}

    def fenced(self) -> bool:
        """Frozen past the session timeout and not rejoined yet: it owns nothing."""
        fenced = getattr(self.app.consumer, "fenced", None)  # collector's consumer only
        return fenced is not None and bool(fenced())

    def ready_for_flush(self) -> bool:
        return not (self.app.rebalancing or self.app.in_recovery or self.fenced())

    async def flush_windows(self, trigger: str = "timer") -> dict[str, Any]:
        """One flush cycle: combiner side, then the merge.  ``trigger``: timer, backlog
        (a drained backlog) or quiet (engine/quiet.py)."""
        if not self.ready_for_flush():
            return {"skipped": "rebalancing or recovering"}
        self.metrics.window_flushes.labels(trigger).inc()
        kafka = self.settings.kafka
        async with self._flush_lock:
            combined = await self.flusher.tick(self.owned(kafka.raw_topics))
            merged = self.merge_tick()
            # rows only once the changelog has what they show (test_zombie: else lower)
            await self.window_state.checkpoint()
            await self.merger_state.submit()
            held, self._held_rows[:] = list(self._held_rows), []
            self.sinks.add(held)
        self.apply_backpressure()
        self.quiet.after_flush(self.flusher.sessions_waiting(), self.flusher.last_tick_s,
                               self.add_future)
        self.metrics.window_closes.labels("partials").inc(combined["final_partials"])
        return {"combiner": combined, "merger": merged}

    def merge_tick(self) -> dict[str, int]:
        """Emit merged rows that changed or became final.  Called by the flush timer and
        after every batch of partials, so a merged row does not wait a whole flush
        interval for the partials its own tick has just sent."""
        if not self.ready_for_flush():
            return {"skipped": 1}
        owned = {p for _, p in self.owned([self.settings.kafka.partials_topic])}
        merged = self.merger.tick(owned)
        self.metrics.window_closes.labels("merged").inc(merged["final"])
        return merged

    def pending_rows(self) -> int:
        """Rows waiting in the fullest sink."""
        return max((sink.pending for sink in self.sinks.sinks), default=0)

    def row_budget(self) -> int:
        """User rows a flush may add: what the fullest sink has left of
        ``sinks.max_pending_rows``."""
        return self.settings.sinks.max_pending_rows - self.pending_rows()

    def apply_backpressure(self) -> None:
        """Pause or resume the owned raw partitions by the sinks' pending rows (after
        every raw batch and every flush tick, so a paused worker resumes)."""
        pause, resume = self.backpressure.decide(
            self.pending_rows(), (TP(t, p) for t, p in self.owned(self.settings.kafka.raw_topics)))
        if pause or resume:
            consumer = self.app.consumer
            later = getattr(consumer, "pause_later", None)
            if later is not None:  # collector's consumer: between fetches (see there)
                later(pause, resume)
            else:
                consumer.pause_partitions(pause)
                consumer.resume_partitions(resume)
        self.metrics.backpressure.set(1 if self.backpressure.engaged else 0)

    def before_raw_batch(self) -> None:
        """Index the recovered state before the first batch after an assignment instead
        of at the next flush: the batches in between write keys that the rescan would
        decode and mark for re-sending once more (at a bench's start, the whole table)."""
        if (self.flusher.needs_rescan and not self._flush_lock.locked()
                and self.ready_for_flush()):
            self.flusher.rescan(self.owned(self.settings.kafka.raw_topics))

    def after_raw_batch(self, newest_s: float | None = None) -> bool:
        """Start a flush if a backlog was just drained (see :class:`BacklogWatch`);
        ``newest_s``: the Kafka timestamp of the batch's last record."""
        self.apply_backpressure()
        owned = self.owned(self.settings.kafka.raw_topics)
        caught_up = all(self.caught_up(topic, partition) for topic, partition in owned)
        lag_s = 0.0 if newest_s is None else time.time() - newest_s
        wait_ms = self.fetch_wait.choose(caught_up, lag_s)
        if wait_ms is not None:
            if set_fetch_max_wait(self.app.consumer, wait_ms):
                self.metrics.fetch_max_wait.set(wait_ms)
            else:
                self.fetch_wait.current = None  # not started: the next batch tries again
        if self.backlog.drained(caught_up, bool(self.aggregator.dirty), lag_s):
            self.add_future(self._flush_quietly())
            return True
        return False

    async def _flush_quietly(self) -> None:
        try:
            await self.flush_windows("backlog")
        except Exception:
            log.exception("flush after a drained backlog failed; the timer retries")

    def caught_up(self, topic: str, partition: int) -> bool:
        """Whether every message of the partition up to the fetch high watermark has been
        processed (or was committed before this assignment).  Unknown is not caught up."""
        tp = TP(topic, partition)
        consumer = self.app.consumer
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # not started, or the partition was just revoked
            return False
        if highwater is None:
            return False
        committed = committed_offsets(consumer).get(tp) or 0
        position = max(self.processor.next_offsets.get((topic, partition), 0), committed)
        return position >= int(highwater)

    def on_rebalance(self, drop: bool = False) -> None:
        """Partitions were revoked or assigned: recovery may rewrite the stores."""
        self.window_state.invalidate(drop)
        self.merger_state.invalidate(drop)

    def on_rebalanced(self) -> None:
        self.on_rebalance()
        self.flusher.needs_rescan = True
        self.merger.needs_rescan = True

    @mode.Service.task
    async def _sink_loop(self) -> None:
        await self.sinks.run(after_flush=self._after_sink_flush)

    def _after_sink_flush(self) -> None:
        """Resume as soon as the sinks drained below the threshold: while paused no raw
        batch arrives to check, and the next window flush may be an interval away."""
        if self.backpressure.engaged:
            self.apply_backpressure()

    def totals(self) -> Totals:
        return totals_of(self.metrics, time.time())

    def observe(self) -> None:
        """Sample lag over the assigned raw partitions and the totals for the rates."""
        self.history.add(self.totals())
        try:
            assigned = [tp for tp in self.app.consumer.assignment()
                        if tp.topic in self.settings.kafka.raw_topics]
        except Exception:  # consumer not started yet
            assigned = []
        old = {(p.topic, str(p.partition)) for p in self.lag.partitions if p.lag is not None}
        rows = self.lag.update(consumer_offsets(self.app.consumer, assigned) if assigned else {},
                               held=self.backpressure.paused)
        new = {(p.topic, str(p.partition)): p.lag for p in rows if p.lag is not None}
        gauge = self.metrics.consumer_lag
        for labels in old - set(new):
            gauge.remove(*labels)
        for labels, lag in new.items():
            gauge.labels(*labels).set(lag)

    @mode.Service.task
    async def _observe_loop(self) -> None:
        interval = self.settings.web.observe_interval_seconds
        while not self.should_stop:
            try:
                self.observe()
            except Exception:
                log.exception("observing lag failed; retrying next interval")
            await self.sleep(interval)

    async def on_start(self) -> None:
        # Faust stops handing messages to streams and drains its changelog buffer one
        # record at a time (0.1 s waits) whenever it holds more than 100 records; one
        # batch of ours writes a record per touched key, hundreds, so every batch was
        # throttled and logged "producer buffer full".  Memory stays bounded by batches.
        set_changelog_buffer(self.app, CHANGELOG_BUFFER_MAX)
        await self.check_topics()
        if not await self.ensure_tables():
            self.add_future(self._ensure_tables_later())

    async def ensure_tables(self) -> bool:
        """Create the tables of configured aggregates (collector.db.tables); exit 2
        naming every column an existing table disagrees on.  False while MySQL is
        unreachable (the sink buffers their rows meanwhile)."""
        try:
            created = await ensure_configured_tables(self.settings, self.specs.aggregates)
        except SchemaMismatch as exc:
            for problem in exc.problems:
                log.critical("configured aggregate table: %s; drop or rename the table, or "
                             "rename the aggregate", problem)
            raise SystemExit(2) from None
        except SourceError as exc:
            log.warning("could not create the configured aggregates' tables yet: %s", exc)
            return False
        for name in created:
            log.info("created the MySQL table of configured aggregate %s", name)
        return True

    async def _ensure_tables_later(self) -> None:
        while not self.should_stop:
            await self.sleep(TABLES_RETRY_S)
            try:
                if await self.ensure_tables():
                    return
            except SystemExit:  # in a background task: say so, and stop retrying
                log.critical("the MySQL sink cannot write the configured aggregates above")
                return

    async def check_topics(self) -> None:
        """Exit 2 naming each topic with a partition count other than ``kafka.partitions``.

        A raw topic a broker auto-created with one partition made every reroute to
        partition 1+ fail for ever (``Unrecognized partition``), with nothing saying why.
        An unreachable broker is Faust's to report: the check then only warns.
        """
        try:
            async with asyncio.timeout(TOPIC_CHECK_TIMEOUT_S):
                mismatches = await partition_mismatches(self.settings)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("could not check the topics' partition counts: %r", exc)
            return
        if mismatches:
            for mismatch in mismatches:
                log.critical("%s", mismatch)
            raise SystemExit(2)

    async def on_stop(self) -> None:
        await self.sinks.flush_once()
        await self.enricher.close()
        for sink in self.sinks.sinks:
            await sink.close()
