"""State over a Faust table, written with an explicit partition.

Faust writes a table's store and changelog to the partition of the *current event*.
In a ``take()`` batch that is the batch's last event, and in a timer there is none, so
:class:`FaustState` sets the current event (Faust's private ``_current_event``) to a
stand-in for the partition around each write, and writes the store with its private
``_set``/``_del`` when it sends the changelog itself.

:class:`FaustState` also keeps the values it wrote (write-through): the aggregator reads
each touched window back on the next batch, and a RocksDB read plus JSON decode cost
about 7% of the worker's CPU with one event per message.  Only our own writes are
cached, never a read, because changelog recovery writes the store behind our back; and
the owner clears the cache on every rebalance, before that recovery starts.

With ``coalesce`` the writes do not go to the store and changelog at once either: each
key's newest value waits in ``_dirty`` until :meth:`FaustState.checkpoint`, which the
worker runs before every offset commit, rebalance and flush (collector.adapters.
checkpoint), as Kafka Streams' record cache does: a window that several batches touch
in between is encoded, stored and produced once.  A crash drops what no checkpoint
sent, which no commit covered either.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import OrderedDict, deque
from collections.abc import Awaitable, Iterator
from typing import Any, Protocol

import orjson
from faust.streams import _current_event
from faust.types import TP
from rocksdict import WriteBatch

log = logging.getLogger(__name__)

#: cached values per FaustState; the least recently written go first (1-5 KB each)
CACHE_MAX = 20_000
#: Faust's own ``json`` serializer passes OPT_NON_STR_KEYS too; for str keys, which
#: are all our values have, the bytes are the same and come 0.4 µs sooner without it
#: (0.75 against 1.19 µs for a 500-byte user window, timeit); a non-str key raises
#: TypeError and takes Faust's path (see _encode)
_ORJSON_STR_KEYS = orjson.OPT_UTC_Z
_MISSING = object()


class _Message:
    __slots__ = ("partition", "topic")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition


class _StandIn:
    """Just enough of a faust Event for tables and stores: ``.message.partition``."""

    __slots__ = ("__weakref__", "message")

    def __init__(self, topic: str, partition: int) -> None:
        self.message = _Message(topic, partition)


class ChangelogOutput(Protocol):
    """Where :class:`FaustState` sends its changelog records in bulk."""

    async def batches(self, topic: str) -> Any: ...


class FaustState:
    """:class:`State` over a Faust table whose changelog is co-partitioned with a topic.

    With an ``output``, writes go to the store at once and their changelog records are
    collected and sent as one record batch per partition by :meth:`submit`, instead of
    Faust's one ``send_soon`` per key (a future, a buffer hop and a RocksDB write of the
    persisted offset each: about a third of the worker's CPU with one event per message).
    The records are the store's own bytes, so recovery rebuilds the same store.  A write
    nobody submits is submitted on the next loop iteration, before any offset commit
    (which flushes the producer) could pass it.
    """

    def __init__(self, table: Any, source_topic: str, cache_max: int = CACHE_MAX,
                 output: ChangelogOutput | None = None,
                 uncached: tuple[str, ...] = (), coalesce: bool = False) -> None:
        self.table = table
        self._topic = source_topic
        self._stand_ins: dict[int, _StandIn] = {}
        self._refs: dict[int, weakref.ref[_StandIn]] = {}
        #: key -> the value last written through this object (0 disables the cache),
        #: least recently written first.  Bounded: a cache that only cleared when full
        #: kept every window a backlog touched (issue 15: 761 MB against 475 MB without
        #: it, catching up after a 4-minute MySQL outage with 10,000 users)
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cache_max = cache_max
        #: key prefixes never cached: entries read once a flush or less, which would
        #: only push the hot ones out (sessions entries: two per user in all would make
        #: a 10,000-user hot set miss a 20,000 cache on every read)
        self._uncached = uncached
        self._output = output
        #: key -> (partition, its newest value or None for a delete) not yet written to
        #: the store and changelog (``coalesce`` with an output only; module docstring)
        self._dirty: dict[str, tuple[int, dict[str, Any] | None]] = {}
        self._coalesce = coalesce and output is not None
        #: changelog records written to the store but not yet handed to the producer
        self._pending: list[tuple[int, bytes, bytes | None]] = []
        self._auto_submit: asyncio.Handle | None = None
        self._auto_tasks: set[asyncio.Task[Any]] = set()
        #: one submit at a time, so a key's records reach the changelog in write order
        self._submit_lock = asyncio.Lock()
        #: changelog key -> the newest bytes written since the last submit.  A refused
        #: batch is produced again with the newest value of each key (here, else in
        #: ``_inflight``), so an older value never lands after a newer one (recovery
        #: keeps the last record per key)
        self._latest: dict[bytes, bytes | None] = {}
        #: [the generation a submit sent, its deliveries not yet settled], oldest first;
        #: settled ones leave from the oldest end only, so a retry still finds a newer
        #: value.  One map kept until no delivery at all was outstanding grew with the
        #: keys written under steady load (87 of 280 MB at N = 500k, memray).
        self._inflight: deque[list[Any]] = deque()
        #: delivery futures of every submit not yet settled (a batch's, the automatic
        #: one, a flush's): a submit returns them all, so a batch acked after awaiting
        #: them waits for every changelog record written before it, whichever submit
        #: handed it to the producer (the automatic one runs at the batch's first yield)
        self._unsettled: set[Any] = set()
        #: partition -> RocksDB writes not yet in the store, applied as one WriteBatch
        #: by :meth:`_flush_store` before any store read, submit or rebalance
        self._store_batches: dict[int, Any] = {}
        #: json key and value serializers: encode with orjson directly (Faust's path
        #: through its serializer registry costs 2.0 µs a write against 0.6 µs)
        self._direct_json = (getattr(table, "key_serializer", None) == "json"
                             and getattr(table, "value_serializer", None) == "json")

    def invalidate(self, drop: bool = False) -> None:
        """Forget cached values: call on rebalance, before changelog recovery writes.
        Coalesced values are written first (the revoke checkpointed them already, see
        collector.adapters.checkpoint), or with ``drop`` forgotten: a fenced worker's."""
        if drop:
            self._dirty.clear()
        else:
            self._write_dirty()
        self._flush_store()  # ours first: recovery must write after them, not before
        self._cache.clear()

    def _write_dirty(self) -> None:
        """Hand every coalesced value to the store and the pending changelog records, in
        the order of their last writes: the aggregator writes a slot (its highest offset
        absorbed) after its batch's windows, so a recovery that reads only part of a
        checkpoint (several record batches) never gets a slot ahead of its windows."""
        dirty, self._dirty = self._dirty, {}
        write = self._write
        for key, (partition, value) in dirty.items():
            write(partition, key, value)

    async def checkpoint(self) -> None:
        """Store and send every coalesced value and wait until the changelog has them
        all, and every record submitted before: offsets processed so far may then be
        committed.  Raises if a delivery failed (the commit must not happen)."""
        self._write_dirty()
        futures = await self.submit()
        if futures:
            await asyncio.gather(*futures)

    def _mark(self, partition: int, key: str, value: dict[str, Any] | None) -> None:
        self._dirty.pop(key, None)  # to the end: the checkpoint writes in last-write order
        self._dirty[key] = (partition, value)

    def coalesced(self) -> int:  # keys whose newest value waits for the next checkpoint
        return len(self._dirty)

    def _stand_in(self, partition: int) -> weakref.ref[_StandIn]:
        ref = self._refs.get(partition)
        if ref is None:
            stand_in = self._stand_ins[partition] = _StandIn(self._topic, partition)
            ref = self._refs[partition] = weakref.ref(stand_in)
        return ref

    # get/set/delete set and reset the context variable inline: a @contextmanager costs
    # ~1.9 µs per call against ~0.3 µs, and these run once per key and batch
    def get(self, partition: int, key: str) -> dict[str, Any] | None:
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        if self._dirty:
            dirty = self._dirty.get(key)
            if dirty is not None:  # not cached (evicted, or an uncached prefix)
                return dirty[1]
        if self._store_batches:
            self._flush_store()
        token = _current_event.set(self._stand_in(partition))  # type: ignore[arg-type]
        try:
            value: dict[str, Any] | None = self.table.get(key)
            return value
        finally:
            _current_event.reset(token)

    def set(self, partition: int, key: str, value: dict[str, Any]) -> None:
        if self._output is None:
            token = _current_event.set(self._stand_in(partition))  # type: ignore[arg-type]
            try:
                self.table[key] = value
            finally:
                _current_event.reset(token)
        elif self._coalesce:
            self._mark(partition, key, value)
        else:
            self._write(partition, key, value)
        if self._cache_max and not key.startswith(self._uncached):
            cache = self._cache
            if key in cache:
                cache.move_to_end(key)
            elif len(cache) >= self._cache_max:
                cache.popitem(last=False)
            cache[key] = value

    def delete(self, partition: int, key: str) -> None:
        self._cache.pop(key, None)
        if self._coalesce:
            self._mark(partition, key, None)
            return
        if self._output is not None:
            self._write(partition, key, None)
            return
        token = _current_event.set(self._stand_in(partition))  # type: ignore[arg-type]
        try:
            if key in self.table:
                del self.table[key]
        finally:
            _current_event.reset(token)

    def _encode(self, key: str, value: dict[str, Any] | None) -> tuple[bytes, bytes | None]:
        table = self.table
        if self._direct_json:
            try:
                return (orjson.dumps(key),
                        None if value is None else orjson.dumps(value, option=_ORJSON_STR_KEYS))
            except TypeError:  # a non-str key, or a type only Faust's encoder knows:
                pass           # its path below (the same bytes)
        dumps = table.app.serializers
        kb: bytes = dumps.dumps_key(table.key_type, key, serializer=table.key_serializer)
        vb: bytes | None = None if value is None else dumps.dumps_value(
            table.value_type, value, serializer=table.value_serializer)
        return kb, vb

    def _write(self, partition: int, key: str, value: dict[str, Any] | None) -> None:
        """Store before the changelog (a None value deletes: a tombstone).

        RocksDB writes are collected per partition and applied as one ``WriteBatch``
        (one WAL write) when anything reads the store, submits or rebalances, instead of
        one ``put`` each (4.4 µs against 1.6 µs a key, measured).

        The bytes are copied before they are kept until the submit: each orjson output
        holds a ~4 KB buffer whatever its length (orjson issue 483), and a flush that
        writes 20,000 windows at once left that much heap behind (memray).
        """
        kb, vb = self._encode(key, value)
        kb = memoryview(kb).tobytes()
        if vb is not None:
            vb = memoryview(vb).tobytes()
        store = self.table.data
        if not hasattr(store, "_set"):  # the memory store keeps decoded values
            if value is None:
                store.pop(key, None)
            else:  # coalescing: a copy, or changes a rebalance drops stayed in the store
                store[key] = orjson.loads(vb) if self._coalesce and vb else value
        elif getattr(store, "use_rocksdict", False):
            batch = self._store_batches.get(partition)
            if batch is None:
                batch = self._store_batches[partition] = WriteBatch(raw_mode=True)
            if vb is None:
                batch.delete(kb)
            else:
                batch.put(kb, vb)
        else:
            token = _current_event.set(self._stand_in(partition))  # type: ignore[arg-type]
            try:
                if vb is None:
                    store._del(kb)
                else:
                    store._set(kb, vb)
            finally:
                _current_event.reset(token)
        self._pending.append((partition, kb, vb))
        self._latest[kb] = vb
        if self._auto_submit is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (sync unit tests): submit() must be called
                return
            self._auto_submit = loop.call_soon(self._submit_later)

    def _flush_store(self) -> None:
        """Apply the collected RocksDB writes, one WriteBatch per partition."""
        batches, self._store_batches = self._store_batches, {}
        if batches:
            store = self.table.data
            for partition, batch in batches.items():
                store._db_for_partition(partition).write(batch)

    def _submit_later(self) -> None:
        self._auto_submit = None
        self._flush_store()
        if self._pending:
            task = asyncio.ensure_future(self._submit_logged())
            self._auto_tasks.add(task)
            task.add_done_callback(self._auto_tasks.discard)

    async def _submit_logged(self) -> None:
        try:
            await self.submit()
        except Exception:
            log.exception("sending %s changelog records failed", self.table.name)

    async def submit(self) -> list[Awaitable[Any]]:
        """Hand the pending changelog records to the producer; the delivery futures of
        every record handed over and not yet delivered (this call's and earlier ones')."""
        self._flush_store()  # the store holds a value before its changelog record
        if self._output is None:
            return []
        if not self._pending and not self._submit_lock.locked():
            return list(self._unsettled)
        async with self._submit_lock:  # (a submit under way: its futures too)
            pending, self._pending = self._pending, []
            if not pending:
                return list(self._unsettled)
            entry: list[Any] = [self._latest, 1]  # 1: held while it is being submitted
            self._latest = {}
            self._inflight.append(entry)
            futures: list[Awaitable[Any]] = []
            try:
                topic = self.table.changelog_topic.get_topic_name()
                batches = await self._output.batches(topic)
                for partition, kb, vb in pending:
                    batches.add(kb, vb, partition)
                futures = await batches.submit(
                    on_delivered=lambda partition, offset: self._persisted(topic, partition,
                                                                           offset),
                    refresh=self._refresh)
            finally:
                entry[1] += len(futures) - 1
                unsettled = self._unsettled
                for fut in futures:  # callbacks run later, never inside add_done_callback
                    fut.add_done_callback(  # type: ignore[attr-defined]
                        lambda _, entry=entry: self._settled(entry))
                    unsettled.add(fut)
                    fut.add_done_callback(unsettled.discard)  # type: ignore[attr-defined]
                self._trim()
            return list(unsettled)

    def _refresh(self, kb: bytes, vb: bytes | None) -> tuple[bytes, bytes | None]:
        newest = self._latest.get(kb, _MISSING)
        if newest is _MISSING:
            for generation, _ in reversed(self._inflight):
                newest = generation.get(kb, _MISSING)
                if newest is not _MISSING:
                    break
            else:
                return kb, vb
        return kb, newest  # type: ignore[return-value]

    def kept_for_retries(self) -> int:
        """Changelog values held in case a delivery is refused (bounded by what is in
        flight: the memory tests and debugging read it)."""
        return len(self._latest) + sum(len(generation) for generation, _ in self._inflight)

    def _settled(self, entry: list[Any]) -> None:
        entry[1] -= 1
        self._trim()

    def _trim(self) -> None:
        inflight = self._inflight
        while inflight and inflight[0][1] == 0:
            inflight.popleft()

    def _persisted(self, topic: str, partition: int, offset: int) -> None:
        """What Faust's ``_on_changelog_sent`` does per record, once per record batch:
        the store remembers how far the changelog is already in it (recovery starts there)."""
        table = self.table
        tp = TP(topic, partition)
        if table.app.in_transaction:
            table.app.tables.persist_offset_on_commit(table.data, tp, offset)
        else:
            table.data.set_persisted_offset(tp, offset)

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every entry: the store's, with the coalesced values over them."""
        self._flush_store()
        token = _current_event.set(None)
        try:
            stored = list(self.table.items())
        finally:
            _current_event.reset(token)
        dirty = self._dirty
        if not dirty:
            return iter(stored)
        entries = [(k, v) for k, v in stored if k not in dirty]
        entries += [(k, v) for k, (_, v) in dirty.items() if v is not None]
        return iter(entries)
