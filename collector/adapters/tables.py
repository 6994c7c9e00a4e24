"""The Faust tables behind the windows (changelogged, recovered on restart/rebalance).

Windows are explicit keys (``...|window_start``) in plain tables rather than Faust's
windowed-table wrappers: those resolve the window from the *current* event and close on
wall-clock cleanup (missed after recovery: faust-streaming #193, #250, #385), while we
need event time per event inside ``take()`` batches and closing by watermark.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import faust
import orjson

from collector.config import Settings
from collector.engine.state import superseded
from collector.kafka.topics import MERGED_TABLE, STATE_TABLE

#: Values are plain JSON objects: no value_type, since Faust decodes changelog records
#: (recovery) with ``value_type.from_data`` and ``dict`` has none, so every record
#: failed and recovery from the changelog never completed.
_SCHEMA: faust.Schema = faust.Schema(
    key_type=str, key_serializer="json", value_serializer="json",
)

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Tables:
    #: combiner state, co-partitioned with the raw topics: slot watermarks, partial
    #: aggregates per input slot, and user windows
    state: Any
    #: merge state, co-partitioned with the partials topic: merged windows, close marks
    merged: Any


class GuardedTable(faust.Table):  # type: ignore[misc]
    """A table whose changelog recovery skips records that would take a key back.

    A zombie (frozen past its session, see ``LeanHandoffConsumer.check_frozen``) may
    finish the batch it was in when it froze and write the changelog after the new
    owner's writes; recovery applies records in order, so the next owner recovered the
    zombie's older value (and skipped the replays its offsets said it held).  Each
    value records the raw offsets it absorbed, so :func:`superseded` tells such a
    record apart.  Standbys apply changelogs through the same method.
    """

    #: changelog records skipped because the held value had absorbed more
    skipped = 0
    #: the worker's shared RocksDB budget (set by :func:`create_tables`); None: Faust's
    #: own options, a block cache and memtables per database
    rocksdb_budget: Callable[[], RocksDBBudget] | None = None

    def _new_store(self) -> Any:
        store = super()._new_store()
        if self.rocksdb_budget is not None and hasattr(store, "rocksdb_options"):
            store.rocksdb_options = budgeted_options(store.rocksdb_options,
                                                     self.rocksdb_budget())
        return store

    def apply_changelog_batch(self, batch: Iterable[Any]) -> None:
        batch = list(batch)
        kept: list[Any] = []
        latest: dict[Any, Any] = {}
        data = self.data
        for event in batch:
            message = event.message
            try:
                key = orjson.loads(message.key)
                new = None if message.value is None else orjson.loads(message.value)
                held = latest[key] if key in latest else data.get(key)
            except Exception:  # not ours to judge: apply it as Faust would
                kept.append(event)
                continue
            if isinstance(new, dict) and isinstance(held, dict) and superseded(new, held):
                self.skipped += 1
                continue
            latest[key] = new
            kept.append(event)
        if len(kept) < len(batch):
            log.warning("table %s: skipped %d changelog records that absorbed less than the "
                        "value held (written by a worker after its partitions moved)",
                        self.name, len(batch) - len(kept))
        super().apply_changelog_batch(kept)


def rocksdb_options(settings: Settings) -> dict[str, int]:
    """Memtables of ``app.rocksdb_write_buffer_mb``, two per partition's database.

    Faust's defaults (64 MB, three of them, per partition and table) let a worker's peak
    RSS grow with the events it writes until they are full: 427 MB after 300k events in
    single mode against 238 MB after 100k; with 8 MB, 276 against 238 (issue 17). The
    store is rebuilt from the changelog anyway, so smaller memtables only flush sooner.
    """
    return {"write_buffer_size": settings.app.rocksdb_write_buffer_mb << 20,
            "max_write_buffer_number": 2}


class RocksDBBudget:
    """One memory budget for every RocksDB database of a worker (``app.rocksdb_memory_mb``).

    Faust opens a database per table and partition, each with its own block cache and
    memtables, so a worker's native memory grew with its partitions and with the bytes
    it wrote: after a 4-minute MySQL outage with 10,000 users, catching up took the
    worker from 270 MB to 724 MB while Python's own allocations grew by 114 MB (issue 15).
    Here all databases share one LRU cache, their memtables are charged to it through
    one write-buffer manager, and index and filter blocks live in it too (RocksDB's
    "memory usage" guide: a single limit for block cache, memtables and table readers).
    """

    def __init__(self, total_mb: int) -> None:
        import rocksdict

        self.total = total_mb << 20
        self.cache = rocksdict.Cache(self.total)
        #: memtables may take at most half of the cache; writers never stall on it
        self.write_buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            self.total // 2, False, self.cache)

    def usage(self) -> int:
        """Bytes held in the shared cache, memtable reservations included."""
        return int(self.cache.get_usage())


def budgeted_options(base: Any, budget: RocksDBBudget) -> Any:
    """A copy of a store's ``rocksdb_options`` whose ``as_options`` uses ``budget``."""
    import rocksdict
    from faust.stores.rocksdb import RocksDBOptions

    class Options(RocksDBOptions):  # type: ignore[misc]
        def as_options(self) -> Any:
            db_options = super().as_options()
            if not self.use_rocksdict:
                return db_options  # python-rocksdb: Faust's own options, unbudgeted
            table = rocksdict.BlockBasedOptions()
            table.set_bloom_filter(self.bloom_filter_size, block_based=True)
            table.set_block_cache(budget.cache)
            table.set_cache_index_and_filter_blocks(True)
            table.set_pin_l0_filter_and_index_blocks_in_cache(True)
            table.set_index_type(rocksdict.BlockBasedIndexType.binary_search())
            db_options.set_block_based_table_factory(table)
            db_options.set_write_buffer_manager(budget.write_buffers)
            return db_options

    options = Options.__new__(Options)
    options.__dict__.update(vars(base))
    return options


def create_tables(app: faust.App, settings: Settings) -> Tables:
    partitions = settings.kafka.partitions
    options = rocksdb_options(settings)
    budget: list[RocksDBBudget] = []

    def shared_budget() -> RocksDBBudget:  # made on first use: only RocksDB needs it
        if not budget:
            budget.append(RocksDBBudget(settings.app.rocksdb_memory_mb))
        return budget[0]

    def table(name: str, help: str) -> Any:
        made = GuardedTable(
            app, name=name, default=None, beacon=app.tables.beacon, partitions=partitions,
            schema=_SCHEMA, help=help, options=dict(options))
        made.rocksdb_budget = shared_budget
        return app.tables.add(made)

    return Tables(
        state=table(STATE_TABLE, "Combiner state: slot watermarks, partials, user windows"),
        merged=table(MERGED_TABLE, "Merged windows and per-slot close marks"),
    )


def set_changelog_buffer(app: faust.App, max_messages: int) -> None:
    """Raise the changelog records Faust's producer buffers before it throttles the
    streams (``producer.buffer``; Faust's default, 100, throttled every batch of ours)."""
    app.producer.buffer.max_messages = max_messages  # type: ignore[attr-defined]
