"""Changelog recovery skips a zombie's records that would take a key back.

A worker frozen past its session finishes the batch it was in after its partitions
moved, and writes their changelog after the new owner's records; applied in order,
the next owner recovered the zombie's older value (measured: a final user window with 3
of its 6 events).  Every value records the raw offsets it absorbed, which tells them
apart.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import faust
import orjson
from faust.types import TP

from collector.adapters.tables import GuardedTable, create_tables
from collector.config import Settings
from collector.engine.state import superseded


def test_a_value_that_absorbed_strictly_less_is_superseded() -> None:
    held = {"offs": {"a|1": 10, "b|1": 7}, "agg": {"count": 6}}
    assert superseded({"offs": {"a|1": 4, "b|1": 7}, "agg": {"count": 3}}, held)
    assert superseded({"offs": {"a|1": 10}, "agg": {"count": 5}}, held)  # b never seen
    assert superseded({"off": 3, "agg": {}}, {"off": 9, "agg": {}})  # partials and slots


def test_the_owners_own_writes_are_never_superseded() -> None:
    held = {"offs": {"a|1": 10, "b|1": 7}}
    assert not superseded({"offs": {"a|1": 11, "b|1": 7}}, held)  # absorbed more
    assert not superseded({"offs": {"a|1": 10, "b|1": 7}, "fin": 1}, held)  # same: a flush
    assert not superseded({"offs": {"a|1": 12, "b|1": 3}}, held)  # incomparable: keep
    assert not superseded(None, held)  # a tombstone
    assert not superseded({"offs": {"a|1": 1}}, None)  # a first write
    assert not superseded({"kind": "k", "closed": 5}, {"kind": "k", "closed": 9})  # no offsets


def event(key: str, value: dict[str, Any] | None, offset: int) -> Any:
    raw = None if value is None else orjson.dumps(value)
    message = SimpleNamespace(key=orjson.dumps(key), value=raw, partition=1, offset=offset,
                              tp=TP("collector-state-changelog", 1))
    return SimpleNamespace(message=message, key=key, value=value)


def test_recovery_keeps_the_newer_owners_value_whatever_the_order() -> None:
    app = faust.App("guard-test", broker="kafka://127.0.0.1:1", store="memory://",
                    autodiscover=False)
    table = create_tables(app, Settings()).state
    assert isinstance(table, GuardedTable)
    owner = {"offs": {"a|1": 20, "b|1": 9}, "agg": {"count": 6}}
    zombie = {"offs": {"a|1": 12, "b|1": 9}, "agg": {"count": 3}}
    table.apply_changelog_batch([event("u|u0|1000", owner, 5), event("u|u0|1000", zombie, 6)])
    assert table.data.get("u|u0|1000") == owner and table.skipped == 1
    # in a later batch too: the held value is read from the store
    table.apply_changelog_batch([event("u|u0|1000", zombie, 7)])
    assert table.data.get("u|u0|1000") == owner and table.skipped == 2
    # the owner's later writes, a deletion and a new life of the key are all applied
    newer = {"offs": {"a|1": 25, "b|1": 9}, "agg": {"count": 7}}
    table.apply_changelog_batch([event("u|u0|1000", newer, 8)])
    assert table.data.get("u|u0|1000") == newer
    table.apply_changelog_batch([event("u|u0|1000", None, 9),
                                 event("u|u0|1000", {"offs": {"a|1": 1}, "agg": {}}, 10)])
    assert table.data.get("u|u0|1000") == {"offs": {"a|1": 1}, "agg": {}}
    assert table.skipped == 2


def test_the_guard_reads_the_held_value_from_rocksdb(tmp_path: Any) -> None:
    app = faust.App("guard-test-rocks", broker="kafka://127.0.0.1:1", store="rocksdb://",
                    datadir=str(tmp_path), autodiscover=False)
    table = create_tables(app, Settings()).state
    owner = {"off": 40, "kind": "p", "agg": {"count": 4}}
    table.apply_changelog_batch([event("p|event_stats|a|1|x|1000", owner, 1)])
    table.apply_changelog_batch([event("p|event_stats|a|1|x|1000", {"off": 30, "kind": "p",
                                                                     "agg": {"count": 2}}, 2)])
    assert table.data.get("p|event_stats|a|1|x|1000") == owner and table.skipped == 1


def test_state_stores_get_small_memtables(tmp_path: Any) -> None:
    """app.rocksdb_write_buffer_mb reaches each table's RocksDB (Faust's 64 MB x 3 per
    partition let the worker's RSS grow with the events written: issue 17)."""
    app = faust.App("memtable-test", broker="kafka://127.0.0.1:1", store="rocksdb://",
                    datadir=str(tmp_path), autodiscover=False)
    settings = Settings.model_validate({"app": {"rocksdb_write_buffer_mb": 4}})
    tables = create_tables(app, settings)
    for table in (tables.state, tables.merged):
        options = table.data.rocksdb_options
        assert (options.write_buffer_size, options.max_write_buffer_number) == (4 << 20, 2)


def test_every_partition_database_shares_one_memory_budget(tmp_path: Any) -> None:
    """All table partitions draw on one cache of app.rocksdb_memory_mb with their
    memtables charged to it, instead of Faust's 2 GB cache per partition (issue 15: a
    worker catching up after a sink outage grew by 450 MB, 114 MB of it Python's)."""
    app = faust.App("budget-test", broker="kafka://127.0.0.1:1", store="rocksdb://",
                    datadir=str(tmp_path), autodiscover=False)
    settings = Settings.model_validate({"app": {"rocksdb_memory_mb": 16}})
    tables = create_tables(app, settings)
    dbs = [table.data._db_for_partition(p) for table in (tables.state, tables.merged)
           for p in range(2)]
    capacities = {db.property_int_value("rocksdb.block-cache-capacity") for db in dbs}
    assert capacities == {16 << 20}  # one cache of the budget's size, not 2 GB each
    budget = tables.state.rocksdb_budget()
    assert budget is tables.merged.rocksdb_budget()
    before = budget.usage()
    for n, db in enumerate(dbs):
        for i in range(2000):
            db[f"k{n}-{i}".encode()] = b"x" * 500
    # the memtables' memory is reserved in the shared cache, so the one limit covers it
    assert budget.usage() > before + (1 << 20)
    assert budget.usage() <= budget.total + (4 << 20)
    for db in dbs:
        db.close()

