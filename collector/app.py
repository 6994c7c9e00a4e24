"""Builds the Faust app from settings; the leaf of the import graph.

This module imports nothing else of ``collector`` at run time (only for type checking),
so agents, views and services can all ``from collector import app`` without cycles.
Faust finds them through the explicit ``AUTODISCOVER`` list.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from typing import TYPE_CHECKING, Any

import faust
from mode.utils.imports import symbol_by_name

if TYPE_CHECKING:
    from collector.config import Settings

#: Modules Faust imports when a worker starts (agents, timers, views, services).
AUTODISCOVER = [
    "collector.streams",
    "collector.web",
]


class QuietWorker(faust.Worker):
    """A worker without the terminal spinner.

    Faust's spinner sets the root logger to DEBUG when the level is WARN or above, so
    every aiokafka debug call builds a log record: about 20% of throughput, measured.
    """

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)
        settings = getattr(self.app, "collector_settings", None)
        if settings is not None:  # by name, like the transport: app.py stays the leaf
            symbol_by_name("collector.observability.logs:apply")(settings.app.log_format,
                                                                 logger)
            symbol_by_name("collector.observability.tracing:setup")(settings)


class CollectorApp(faust.App):
    """Faust's app, but a module that fails to import stops the worker.

    Faust only logs autodiscovery import errors and runs on without the agents of the
    broken module: a worker that consumes nothing while looking healthy.
    """

    #: hand messages to streams without a wait_first per message (collector.transport)
    lean_handoff: bool = True
    #: bound on the producer flush at shutdown (Faust waits up to producer_request_timeout)
    shutdown_flush_timeout: float = 30.0
    #: topic -> batch handler that bypasses the stream (collector.transport.handoff);
    #: an instance attribute, set in __init__
    direct_handlers: dict[str, Any]
    #: the settings the app was built from (the web server's auth reads them)
    collector_settings: Settings
    #: why the fetcher stopped consuming (it died, or a batch handler raised): /livez
    fetcher_failure: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.direct_handlers = {}

    def _on_autodiscovery_error(self, name: str) -> None:
        raise RuntimeError(f"collector: importing {name!r} failed; refusing to start")

    async def _producer_flush(self, logger: Any) -> None:
        """Flush at shutdown, but not forever: with the broker down Faust's flush waits
        ``producer_request_timeout`` (20 min) and SIGTERM seems ignored.  Records left
        unsent were never acknowledged, so no offset past them was committed and a
        restart reprocesses them."""
        timeout = self.shutdown_flush_timeout
        try:
            await asyncio.wait_for(super()._producer_flush(logger), timeout)
        except TimeoutError:
            # aiokafka's producer.stop() waits for the same undeliverable batches, so the
            # rest of the shutdown would hang too: give it one more timeout, then exit
            # the way kill -9 would (which recovery handles: nothing unacked is committed)
            logger.error("producer flush gave up after %.0fs (broker unreachable?); "
                         "exiting within %.0fs more; a restart reprocesses what was not "
                         "committed", timeout, timeout)
            asyncio.get_running_loop().call_later(timeout, _hard_exit, logger)

    def _new_transport(self) -> Any:
        # by name: app.py stays the leaf of collector's import graph
        transport_cls: Any = symbol_by_name("collector.transport.handoff:Transport")
        return transport_cls(self.conf.broker_consumer, self)

    def _new_web(self) -> Any:
        if self.conf.web.scheme == "aiohttp":
            # by name, like the transport; frees "/" for collector's web view
            web_cls: Any = symbol_by_name("collector.web.server:Web")
            return web_cls(self)
        return super()._new_web()


def _hard_exit(logger: Any) -> None:
    logger.error("shutdown still blocked on the unreachable broker: exiting now")
    logging.shutdown()
    os._exit(1)


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    kafka = settings.kafka
    context = ssl.create_default_context(cafile=kafka.ssl_cafile or None)
    if kafka.ssl_certfile:
        context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile or None)
    return context


def broker_credentials(settings: Settings) -> Any:
    """Faust credentials for the configured security protocol (None for PLAINTEXT)."""
    kafka = settings.kafka
    protocol = kafka.security_protocol
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(_ssl_context(settings))
    return faust.SASLCredentials(
        username=kafka.sasl_username,
        password=kafka.sasl_password.get_secret_value(),
        mechanism=kafka.sasl_mechanism,
        ssl_context=_ssl_context(settings) if protocol == "SASL_SSL" else None,
    )


def faust_options(settings: Settings) -> dict[str, Any]:
    """The faust.App keyword arguments for ``settings`` (separate so tests can check it)."""
    kafka, app, web = settings.kafka, settings.app, settings.web
    store = "memory://" if app.store == "memory" else "rocksdb://"
    options: dict[str, Any] = {
        "broker": [f"kafka://{server}" for server in kafka.bootstrap_servers],
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
        "autodiscover": AUTODISCOVER,
        "origin": "collector",
    }
    if app.instance_id:
        options["consumer_group_instance_id"] = app.instance_id
    return options


def create_app(settings: Settings) -> faust.App:
    """A configured, not yet started, Faust app."""
    app = CollectorApp(settings.app.id, **faust_options(settings))
    app.collector_settings = settings
    app.lean_handoff = settings.kafka.lean_handoff
    app.shutdown_flush_timeout = settings.kafka.shutdown_flush_timeout
    return app
