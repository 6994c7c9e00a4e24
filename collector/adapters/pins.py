"""Every private name of Faust, mode and aiokafka that collector relies on, in one list.

Each pin says where it is used and how to find it in the installed versions;
``tests/unit/test_adapter_contract.py`` checks every one and fails naming the pin, so
an upgrade that renames or reshapes one fails CI instead of a worker in production.
Only modules of :mod:`collector.adapters` may use these names.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: sha256 (first 16 hex) of Faust's ``Consumer._drain_messages`` source that
#: ``LeanHandoffConsumer._drain_messages`` was copied from (faust-streaming 0.15.3)
DRAIN_MESSAGES_SHA = "44a2500309e83c63"
#: the same for ``Consumer._commit_tps``, copied by ``CheckpointCommit._commit_tps``
COMMIT_TPS_SHA = "a20e230b05ae8b15"


@dataclass(frozen=True)
class Pin:
    name: str
    used_by: str
    #: returns normally when the name exists with the expected shape; raises otherwise
    check: Callable[[], Any]


def _faust_app() -> Any:
    import faust

    return faust.App("collector-pins", broker="kafka://127.0.0.1:1", autodiscover=False)


def _has(obj: Any, *names: str) -> None:
    for name in names:
        if not hasattr(obj, name):
            raise AttributeError(f"{obj!r} has no {name}")


def _in_init(cls: type, attribute: str) -> None:
    """An instance attribute that ``cls.__init__`` assigns."""
    pattern = rf"self\.{attribute}\s*(:[^=\n]*)?="
    if not re.search(pattern, inspect.getsource(cls.__init__)):  # type: ignore[misc]
        raise AttributeError(f"{cls.__qualname__}.__init__ no longer sets {attribute}")


def _current_event() -> None:
    from contextvars import ContextVar

    from faust.streams import _current_event as var

    if not isinstance(var, ContextVar):
        raise TypeError("faust.streams._current_event is not a ContextVar")


def _store_set_del() -> None:
    from faust.stores.rocksdb import Store

    _has(Store, "_set", "_del", "_db_for_partition")
    params = list(inspect.signature(Store._set).parameters)
    if params[:3] != ["self", "key", "value"]:
        raise TypeError(f"rocksdb Store._set{params}")
    params = list(inspect.signature(Store._db_for_partition).parameters)
    if params[:2] != ["self", "partition"]:
        raise TypeError(f"rocksdb Store._db_for_partition{params}")


def _consumer_offsets() -> None:
    _has(_faust_app().consumer, "_committed_offset", "_read_offset")


def _copied(name: str, sha: str, ours: str, constant: str) -> None:
    """Faust's ``Consumer.<name>``, which ``ours`` copies, is still the source hashed."""
    from faust.transport.consumer import Consumer

    source = inspect.getsource(getattr(Consumer, name))
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    if digest != sha:
        raise AssertionError(
            f"Faust's Consumer.{name} changed (sha {digest}): compare it with "
            f"{ours}, port the change, update {constant}")


def _drain_messages() -> None:
    _copied("_drain_messages", DRAIN_MESSAGES_SHA, "LeanHandoffConsumer._drain_messages",
            "DRAIN_MESSAGES_SHA")


def _commit_tps() -> None:
    from faust.transport.consumer import Consumer

    _has(Consumer, "_filter_committable_offsets", "_handle_attached", "_commit_offsets",
         "crash")
    _copied("_commit_tps", COMMIT_TPS_SHA, "CheckpointCommit._commit_tps", "COMMIT_TPS_SHA")


def _consumer_internals() -> None:
    consumer = _faust_app().consumer
    _has(consumer, "_unacked_messages", "_on_message_in", "_commit_every", "_n_acked",
         "_stopped", "ack", "getmany", "callback")
    from faust.transport.consumer import CONSUMER_FETCHING

    if CONSUMER_FETCHING != "FETCHING":
        raise AssertionError(f"CONSUMER_FETCHING is {CONSUMER_FETCHING!r}")


def _fetch_max_wait() -> None:
    """The consumer thread builds the worker's aiokafka consumer in one method, whose
    ``_fetch_max_wait_ms`` reaches the fetcher only when the consumer starts."""
    from aiokafka import AIOKafkaConsumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer

    _has(Consumer, "_new_consumer_thread")
    _has(AIOKafkaConsumerThread, "_create_worker_consumer")
    _in_init(AIOKafkaConsumer, "_fetch_max_wait_ms")
    if "fetch_max_wait_ms=self._fetch_max_wait_ms" not in inspect.getsource(
            AIOKafkaConsumer.start):
        raise TypeError("AIOKafkaConsumer.start no longer hands _fetch_max_wait_ms over")


def _fetch_wait_per_request() -> None:
    """The worker changes the wait while it runs: the fetcher must read it per request."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.consumer.fetcher import Fetcher
    from faust.transport.consumer import ThreadDelegateConsumer
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    _in_init(ThreadDelegateConsumer, "_thread")
    if "self._consumer = self._create_consumer(" not in inspect.getsource(
            AIOKafkaConsumerThread):
        raise TypeError("AIOKafkaConsumerThread no longer keeps its consumer in _consumer")
    _in_init(AIOKafkaConsumer, "_fetcher")
    _in_init(Fetcher, "_fetch_max_wait_ms")
    if not re.search(r"FetchRequest\(\s*self\._fetch_max_wait_ms",
                     inspect.getsource(Fetcher._get_actions_per_node)):
        raise TypeError("Fetcher no longer builds each FetchRequest with _fetch_max_wait_ms")


def _stall_check() -> None:
    """The stall check skips paused partitions and is told of direct deliveries."""
    consumer = _faust_app().consumer
    _has(consumer, "_paused_partitions", "verify_event_path")
    if not isinstance(consumer._paused_partitions, set):
        raise TypeError("faust Consumer._paused_partitions is not a set")
    from faust.sensors.monitor import Monitor

    _in_init(Monitor, "stream_inbound_time")


def _producer_internals() -> None:
    from aiokafka import AIOKafkaProducer
    from aiokafka.producer.message_accumulator import MessageAccumulator

    _has(_faust_app().producer, "_producer", "buffer")
    _has(_faust_app().producer.buffer, "max_messages")
    _in_init(AIOKafkaProducer, "_partitioner")
    _in_init(AIOKafkaProducer, "_message_accumulator")
    _in_init(MessageAccumulator, "_compression_type")


def _wait_on_metadata() -> None:
    from aiokafka.client import AIOKafkaClient

    params = list(inspect.signature(AIOKafkaClient._wait_on_metadata).parameters)
    if params != ["self", "topic"]:
        raise TypeError(f"AIOKafkaClient._wait_on_metadata{params}")


def _batch_build() -> None:
    from aiokafka.producer.message_accumulator import BatchBuilder

    _has(BatchBuilder, "_build", "append", "close")


def _producer_flush() -> None:
    import faust

    params = list(inspect.signature(faust.App._producer_flush).parameters)
    if params != ["self", "logger"]:
        raise TypeError(f"faust.App._producer_flush{params}")


def _prometheus_clear() -> None:
    from faust.sensors.prometheus import PrometheusMonitor

    _has(PrometheusMonitor, "_clear_partition_related_metrics")


def _web_blueprints() -> None:
    from faust.web.drivers.aiohttp import Web

    _has(Web, "default_blueprints", "production_blueprints", "debug_blueprints",
         "optional_blueprints")
    _in_init(Web, "web_app")


def _apply_changelog_batch() -> None:
    import faust
    from faust.tables.recovery import Recovery

    params = list(inspect.signature(faust.Table.apply_changelog_batch).parameters)
    if params != ["self", "batch"]:
        raise TypeError(f"faust.Table.apply_changelog_batch{params}")
    if "apply_changelog_batch(buf)" not in inspect.getsource(Recovery):
        raise TypeError("Recovery no longer applies changelog records through the table")


def _rocksdb_options() -> None:
    import faust
    from faust.stores.rocksdb import RocksDBOptions, Store

    _has(faust.Table, "_new_store")
    _in_init(Store, "rocksdb_options")
    _has(RocksDBOptions, "as_options", "use_rocksdict", "bloom_filter_size")
    if "self.rocksdb_options.open(" not in inspect.getsource(Store):
        raise TypeError("rocksdb Store no longer opens databases with rocksdb_options")


def _recovery_offsets() -> None:
    from faust.tables.recovery import Recovery
    from faust.transport.consumer import Consumer

    for name in ("active_tps", "standby_tps", "active_offsets", "standby_offsets"):
        _in_init(Recovery, name)
    if "await self.perform_seek()" not in inspect.getsource(Consumer.getmany):
        raise TypeError("Consumer.getmany no longer seeks after dropping what it fetched")
    _has(Consumer, "seek_wait", "position", "perform_seek")


PINS: list[Pin] = [
    Pin("faust.streams._current_event (ContextVar)", "adapters/state.py", _current_event),
    Pin("faust rocksdb Store._set/_del(key, value), _db_for_partition(partition) (one "
        "WriteBatch per partition)", "adapters/state.py", _store_set_del),
    Pin("faust Consumer._committed_offset/_read_offset", "adapters/consumer.py",
        _consumer_offsets),
    Pin("faust Consumer._drain_messages (copied)", "adapters/transport.py", _drain_messages),
    Pin("faust Consumer._commit_tps (copied), _filter_committable_offsets/_handle_attached/"
        "_commit_offsets", "adapters/checkpoint.py", _commit_tps),
    Pin("faust Consumer._unacked_messages/_on_message_in/_commit_every/_n_acked/_stopped",
        "adapters/transport.py, adapters/direct.py", _consumer_internals),
    Pin("faust Consumer._new_consumer_thread, AIOKafkaConsumerThread._create_worker_consumer;"
        " AIOKafkaConsumer._fetch_max_wait_ms", "adapters/transport.py", _fetch_max_wait),
    Pin("faust Consumer._thread, AIOKafkaConsumerThread._consumer, AIOKafkaConsumer._fetcher, "
        "Fetcher._fetch_max_wait_ms read per FetchRequest", "adapters/transport.py",
        _fetch_wait_per_request),
    Pin("faust Consumer._paused_partitions/verify_event_path; Monitor.stream_inbound_time",
        "adapters/transport.py, adapters/direct.py", _stall_check),
    Pin("faust Producer._producer/.buffer.max_messages; AIOKafkaProducer._partitioner/"
        "_message_accumulator._compression_type", "adapters/output.py, adapters/tables.py",
        _producer_internals),
    Pin("AIOKafkaClient._wait_on_metadata(topic)", "adapters/output.py", _wait_on_metadata),
    Pin("aiokafka BatchBuilder._build", "adapters/output.py", _batch_build),
    Pin("faust.App._producer_flush(logger)", "adapters/app.py", _producer_flush),
    Pin("PrometheusMonitor._clear_partition_related_metrics", "adapters/sensors.py",
        _prometheus_clear),
    Pin("faust aiohttp Web blueprint lists and web_app", "adapters/web.py", _web_blueprints),
    Pin("faust Recovery.active_tps/standby_tps/active_offsets/standby_offsets; "
        "Consumer.getmany's perform_seek after dropping records", "adapters/recovery_seek.py",
        _recovery_offsets),
    Pin("faust Table.apply_changelog_batch(batch), called by Recovery", "adapters/tables.py",
        _apply_changelog_batch),
    Pin("faust Table._new_store(); rocksdb Store.rocksdb_options (RocksDBOptions."
        "as_options) opens each partition", "adapters/tables.py", _rocksdb_options),
]
