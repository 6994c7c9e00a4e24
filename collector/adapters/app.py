"""The Faust app class and its options from settings.

:func:`collector.factory.create_app` builds one and registers agents and views on it
explicitly (no autodiscovery): importing a collector module never builds an app.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

import faust

from collector.adapters.checkpoint import Checkpoint
from collector.kafka.clients import ssl_context

if TYPE_CHECKING:
    from collector.config import Settings

class QuietWorker(faust.Worker):
    """A worker without the terminal spinner.

    Faust's spinner sets the root logger to DEBUG when the level is WARN or above, so
    every aiokafka debug call builds a log record: about 20% of throughput, measured.
    """

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)
        settings = getattr(self.app, "collector_settings", None)
        if settings is not None:
            from collector.observability import logs, tracing

            logs.apply(settings.app.log_format, logger)
            tracing.setup(settings)


class CollectorApp(faust.App):
    """Faust's app with collector's consumer, web server and a bounded shutdown.

    Agents and views are registered by the factory, not autodiscovered: Faust only logs
    autodiscovery import errors and runs on without the broken module's agents.
    """

    #: hand messages to streams without a wait_first per message (collector.adapters)
    lean_handoff: bool = True
    #: bound on the producer flush at shutdown (Faust waits up to producer_request_timeout)
    shutdown_flush_timeout: float = 30.0
    #: topic -> batch handler that bypasses the stream (collector.adapters.transport);
    #: an instance attribute, set in __init__
    direct_handlers: dict[str, Any]
    #: the settings the app was built from (the web server's auth reads them)
    collector_settings: Settings
    #: the consumer's fetch.max.wait.ms (``kafka.fetch_max_wait_ms``; Faust fixes 1500)
    fetch_max_wait_ms: int = 1500
    #: why the fetcher stopped consuming (it died, or a batch handler raised): /livez
    fetcher_failure: str | None = None
    #: the per-worker runtime the agents and views share (collector.agents.runtime)
    runtime: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.direct_handlers = {}
        #: run before every offset commit (collector.adapters.checkpoint)
        self.state_checkpoints: list[Checkpoint] = []
        #: aiohttp middlewares of the web server (every route: collector.web.auth)
        self.web_middlewares: list[Any] = []

    async def _producer_flush(self, logger: Any) -> None:
        """Flush at shutdown, but not forever: with the broker down Faust's flush waits
        ``producer_request_timeout`` (20 min) and SIGTERM seems ignored.  Records left
        unsent were never acknowledged, so no offset past them was committed and a
        restart reprocesses them."""
        if not self.should_stop:
            # Faust flushes at every rebalance that revokes partitions too; the exit
            # below is only for a shutdown (armed there, it killed a survivor 60 s after
            # its peer joined: exit code 1 in the middle of a failover)
            await super()._producer_flush(logger)
            return
        timeout = self.shutdown_flush_timeout
        # The rest of the shutdown hangs on an unreachable broker too, records left or
        # not: aiokafka's producer.stop() waits for undeliverable batches, and the
        # consumer thread dies of a CancelledError in its fetcher's close, which mode
        # then waits for forever (seen with nothing left to flush).  So one more timeout
        # after this one, exit the way kill -9 would (which recovery handles: nothing
        # unacked is committed).
        asyncio.get_running_loop().call_later(2 * timeout, _hard_exit, logger, 2 * timeout)
        try:
            await asyncio.wait_for(super()._producer_flush(logger), timeout)
        except TimeoutError:
            logger.error("producer flush gave up after %.0fs (broker unreachable?); "
                         "exiting within %.0fs more; a restart reprocesses what was not "
                         "committed", timeout, timeout)


def _hard_exit(logger: Any, after: float) -> None:
    logger.error("shutdown still not done %.0fs after the producer flush began (broker "
                 "unreachable?): exiting now", after)
    logging.shutdown()
    os._exit(1)


def broker_credentials(settings: Settings) -> Any:
    """Faust credentials for the configured security protocol (None for PLAINTEXT)."""
    kafka = settings.kafka
    protocol = kafka.security_protocol
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(ssl_context(settings))
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=kafka.sasl_password.get_secret_value(),
        mechanism=kafka.sasl_mechanism,
        ssl_context=ssl_context(settings) if protocol == "SASL_SSL" else None,
    )


def faust_options(settings: Settings) -> dict[str, Any]:
    """The faust.App keyword arguments for ``settings`` (separate so tests can check it)."""
    kafka, app, web = settings.kafka, settings.app, settings.web
    store = "memory://" if app.store == "memory" else "rocksdb://"
    options: dict[str, Any] = {
        "broker": [f"kafka://{server}" for server in kafka.bootstrap_servers],
        # entry points (pyproject.toml): collector's consumer and web server drivers
        "broker_consumer": [f"collector://{server}" for server in kafka.bootstrap_servers],
        "web": "collector://",
        "broker_credentials": broker_credentials(settings),
        "store": store,
        "datadir": str(app.datadir),
        "topic_partitions": kafka.partitions,
        "topic_replication_factor": kafka.replication_factor,
        "table_standby_replicas": app.standby_replicas,
        "broker_session_timeout": kafka.session_timeout,
        "broker_heartbeat_interval": kafka.heartbeat_interval,
        "broker_rebalance_timeout": kafka.rebalance_timeout,
        "broker_commit_interval": kafka.commit_interval,
        "broker_max_poll_records": kafka.max_poll_records,
        "stream_buffer_maxsize": kafka.stream_buffer_maxsize,
        "producer_linger": kafka.producer_linger,
        "consumer_auto_offset_reset": "earliest",
        "web_bind": web.host,
        "web_port": web.port,
        "web_host": web.advertised_host,
        "canonical_url": f"http://{web.advertised_host}:{web.port}",
        "web_in_thread": False,
        "Worker": QuietWorker,
        "autodiscover": False,
        "origin": "collector",
    }
    if app.instance_id:
        options["consumer_group_instance_id"] = app.instance_id
    return options


def new_app(settings: Settings) -> CollectorApp:
    """A configured Faust app with nothing registered on it yet."""
    app = CollectorApp(settings.app.id, **faust_options(settings))
    app.collector_settings = settings
    app.lean_handoff = settings.kafka.lean_handoff
    app.fetch_max_wait_ms = settings.kafka.fetch_max_wait_ms
    app.shutdown_flush_timeout = settings.kafka.shutdown_flush_timeout
    return app
