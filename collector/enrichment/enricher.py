"""Batched, bounded user-profile lookups: Redis first, MySQL for misses, never an exception.

The stream processor must keep moving when Redis or MySQL is slow or gone, so every
batch finishes within ``lookup_timeout`` and ids nobody could answer for come back
``DEGRADED`` with ``UNKNOWN_PROFILE``. A dead dependency is skipped for a short backoff
(a circuit breaker) instead of costing a timeout per batch; after the backoff one probe
call half-opens the circuit and the enricher recovers by itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from collector.config.settings import Settings
from collector.drivers.deadline import deadline
from collector.enrichment.cache import NEGATIVE, Negative, ProfileCache
from collector.enrichment.errors import SourceError
from collector.enrichment.users import UNKNOWN_PROFILE, UserProfile, UserRepository

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    """How a profile was obtained; callers count these for metrics."""

    HIT = "hit"  # answered by Redis (or this worker's copy of Redis' answer, redis.local_ttl)
    MISS = "miss"  # not in Redis, loaded from MySQL
    NEGATIVE = "negative"  # known to be unknown (cached marker or MySQL has no row)
    DEGRADED = "degraded"  # nobody could answer in time: UNKNOWN_PROFILE


class CacheLike(Protocol):
    """What the enricher needs from ``ProfileCache``."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def get_many(self, user_ids: Iterable[str]) -> dict[str, UserProfile | Negative]: ...
    async def versions(self, user_ids: Iterable[str]) -> dict[str, bytes]: ...
    async def put_many(
        self, profiles: Mapping[str, UserProfile | None], versions: Mapping[str, bytes]
    ) -> int: ...
    async def invalidate(self, user_id: str) -> None: ...


class RepositoryLike(Protocol):
    """What the enricher needs from ``UserRepository``."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def get_many(self, user_ids: Iterable[str]) -> dict[str, UserProfile]: ...
    async def upsert(self, profile: UserProfile, signup_at: datetime | None = None) -> None: ...


class Invalidator(Protocol):
    """Anything that can drop a cached profile (``ProfileCache`` or ``Enricher``)."""

    async def invalidate(self, user_id: str) -> None: ...


class Circuit:
    """Skip a failed dependency for ``backoff`` seconds, then let ONE probe call through.

    Why a probe and not everybody: while a dependency hangs, each caller would pay the
    full timeout; the probe pays it alone and closes the circuit if it succeeds.
    """

    def __init__(self, name: str, backoff: float) -> None:
        self.name = name
        self._backoff = backoff
        self._open_until: float | None = None  # None: closed

    @property
    def is_closed(self) -> bool:
        return self._open_until is None

    def allow(self) -> bool:
        if self._open_until is None:
            return True
        now = asyncio.get_running_loop().time()
        if now < self._open_until:
            return False
        self._open_until = now + self._backoff  # this caller is the probe
        return True

    def success(self) -> None:
        if self._open_until is not None:
            log.info("%s is back: closing its circuit", self.name)
        self._open_until = None

    def failure(self, exc: BaseException) -> None:
        if self._open_until is None:
            log.warning("%s failed, skipping it for %.1fs: %s", self.name, self._backoff, exc)
        self._open_until = asyncio.get_running_loop().time() + self._backoff


@dataclass(eq=False, slots=True)
class _Load:
    """One MySQL load shared by every caller that wants one of its ids."""

    ids: list[str]
    result: asyncio.Future[dict[str, UserProfile]]
    invalidated: set[str] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


class Enricher:
    """Resolves user ids to profiles with one MGET and at most one SELECT per batch."""

    def __init__(
        self,
        cache: CacheLike,
        repo: RepositoryLike,
        *,
        lookup_timeout: float,
        redis_backoff: float = 1.0,
        mysql_backoff: float = 1.0,
        local_ttl: float = 0.0,
        local_max: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lookup_timeout <= 0:
            raise ValueError("lookup_timeout must be positive")
        #: user_id -> (Redis' answer, when it expires): a hot user costs no round trip
        #: (an MGET and its parsing were ~8% of the worker's CPU, one event per message);
        #: dropped by invalidate(), so a users-topic update is seen at once
        self._local: dict[str, tuple[UserProfile | Negative, float]] = {}
        self._local_ttl = local_ttl
        self._local_max = local_max
        self._clock = clock
        #: bumped by every invalidate(): an MGET that overlapped one fills nothing
        self._epoch = 0
        self._cache = cache
        self._repo = repo
        self._lookup_timeout = lookup_timeout
        self._redis = Circuit("redis", redis_backoff)
        self._mysql = Circuit("mysql", mysql_backoff)
        # Stampede guard: user_id -> the load in flight for it (per instance).
        self._inflight: dict[str, _Load] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings, *, lookup_timeout: float | None = None) -> Enricher:
        """An enricher over Redis and MySQL; the default bound lets both answer once."""
        if lookup_timeout is None:
            lookup_timeout = settings.redis.timeout + settings.mysql.timeout
        return cls(
            ProfileCache(settings.redis),
            UserRepository(settings.mysql),
            lookup_timeout=lookup_timeout,
            local_ttl=settings.redis.local_ttl,
            local_max=settings.redis.local_max,
        )

    async def start(self) -> None:
        await self._cache.start()
        await self._repo.start()

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._cache.close()
        await self._repo.close()

    async def enrich_many(
        self, user_ids: Collection[str]
    ) -> dict[str, tuple[UserProfile, Outcome]]:
        """Profile and outcome for every id; never raises, never exceeds ``lookup_timeout``."""
        ids = list(dict.fromkeys(user_ids))
        results: dict[str, tuple[UserProfile, Outcome]] = {}
        waiting: list[Circuit] = []  # the dependency being awaited, for the timeout case
        if ids:
            try:
                async with deadline(self._lookup_timeout):
                    await self._resolve(ids, results, waiting)
            except TimeoutError:
                if waiting:  # too slow counts as down: later batches skip it for a while
                    waiting[-1].failure(TimeoutError(f"no answer in {self._lookup_timeout}s"))
                log.warning(
                    "user lookup exceeded %.3fs; %d of %d ids degraded",
                    self._lookup_timeout,
                    len(ids) - len(results),
                    len(ids),
                )
            except Exception:
                log.exception("user lookup failed; unresolved ids degraded")
        for user_id in ids:
            results.setdefault(user_id, (UNKNOWN_PROFILE, Outcome.DEGRADED))
        return results

    async def invalidate(self, user_id: str) -> None:
        """Forget ``user_id`` in Redis and make a load in flight not cache its (old) answer."""
        self._local.pop(user_id, None)
        self._epoch += 1
        load = self._inflight.pop(user_id, None)
        if load is not None:
            load.invalidated.add(user_id)
        await self._cache.invalidate(user_id)

    async def _resolve(
        self,
        ids: list[str],
        results: dict[str, tuple[UserProfile, Outcome]],
        waiting: list[Circuit],
    ) -> None:
        if self._local:
            ids = self._from_local(ids, results)
            if not ids:
                return
        misses = ids
        if self._redis.allow():
            waiting.append(self._redis)
            epoch = self._epoch
            try:
                cached = await self._cache.get_many(ids)
            except SourceError as exc:
                self._redis.failure(exc)
            else:
                self._redis.success()
                if self._local_ttl > 0 and epoch == self._epoch:
                    self._remember(cached)
                for user_id, answer in cached.items():
                    if isinstance(answer, Negative):
                        results[user_id] = (UNKNOWN_PROFILE, Outcome.NEGATIVE)
                    else:
                        results[user_id] = (answer, Outcome.HIT)
                misses = [user_id for user_id in ids if user_id not in results]
        if not misses:
            return
        wanted = set(misses)
        waiting.append(self._mysql)
        for load in self._loads_for(misses):
            try:
                found = await asyncio.shield(load.result)
            except SourceError:
                continue  # already logged by the circuit; these ids stay degraded
            for user_id in load.ids:
                if user_id not in wanted:
                    continue
                profile = found.get(user_id)
                if profile is None:
                    results[user_id] = (UNKNOWN_PROFILE, Outcome.NEGATIVE)
                else:
                    results[user_id] = (profile, Outcome.MISS)

    def _from_local(self, ids: list[str], results: dict[str, tuple[UserProfile, Outcome]]
                    ) -> list[str]:
        """Answer what the local copy holds and has not expired; the ids left."""
        local, now, rest = self._local, self._clock(), []
        for user_id in ids:
            entry = local.get(user_id)
            if entry is None or entry[1] <= now:
                rest.append(user_id)
            elif entry[0] is NEGATIVE:
                results[user_id] = (UNKNOWN_PROFILE, Outcome.NEGATIVE)
            else:
                results[user_id] = (entry[0], Outcome.HIT)  # type: ignore[assignment]
        return rest

    def _remember(self, cached: Mapping[str, UserProfile | Negative]) -> None:
        """Keep Redis' answers for ``local_ttl``; the oldest go first past ``local_max``."""
        local, expires, limit = self._local, self._clock() + self._local_ttl, self._local_max
        for user_id, answer in cached.items():
            local.pop(user_id, None)  # re-inserted at the end: the oldest stay in front
            if len(local) >= limit:
                del local[next(iter(local))]
            local[user_id] = (answer, expires)

    def _loads_for(self, misses: list[str]) -> list[_Load]:
        """Join loads in flight for these ids and start one new load for the rest.

        With the circuit open nothing is joined either: a load hanging on a dead MySQL
        would cost every batch the full lookup timeout.
        """
        if not self._mysql.allow():
            return []
        loads: dict[int, _Load] = {}
        fresh: list[str] = []
        for user_id in misses:
            load = self._inflight.get(user_id)
            if load is None:
                fresh.append(user_id)
            else:
                loads[id(load)] = load
        if fresh:
            load = _Load(fresh, asyncio.get_running_loop().create_future())
            for user_id in fresh:
                self._inflight[user_id] = load
            # A task of its own: a caller timing out must not cancel the others' load.
            load.task = asyncio.create_task(self._run_load(load), name="enricher-load")
            self._tasks.add(load.task)
            load.task.add_done_callback(self._tasks.discard)
            loads[id(load)] = load
        return list(loads.values())

    async def _run_load(self, load: _Load) -> None:
        try:
            try:
                versions = await self._versions(load.ids)
                found = await self._repo.get_many(load.ids)
            except SourceError as exc:
                self._mysql.failure(exc)
                load.result.set_exception(exc)
                load.result.exception()  # retrieved: no warning if every caller gave up
                return
            except asyncio.CancelledError:  # close(): waiters degrade, nobody hangs
                load.result.set_exception(SourceError("user load cancelled"))
                load.result.exception()
                raise
            except Exception as exc:  # a bug, not an outage: still never the caller's problem
                log.exception("user load failed")
                self._mysql.failure(exc)
                load.result.set_exception(SourceError(f"user load failed: {exc!r}"))
                load.result.exception()
                return
            self._mysql.success()
            load.result.set_result(found)
        finally:
            for user_id in load.ids:
                if self._inflight.get(user_id) is load:
                    del self._inflight[user_id]
        # Fill the cache after the waiters have their answer (they do not wait for it).
        fill = {u: found.get(u) for u in load.ids if u not in load.invalidated}
        if fill and versions and self._redis.allow():
            try:
                await self._cache.put_many(fill, versions)
            except SourceError as exc:
                self._redis.failure(exc)
            else:
                self._redis.success()

    async def _versions(self, user_ids: list[str]) -> dict[str, bytes]:
        """Profile versions before the load; none (so no fill) while Redis is failing."""
        if not self._redis.allow():
            return {}
        try:
            versions = await self._cache.versions(user_ids)
        except SourceError as exc:
            self._redis.failure(exc)
            return {}
        except Exception:  # a bug: lose the fill, never the load
            log.exception("reading profile versions failed; not filling the cache")
            return {}
        self._redis.success()
        return versions


async def upsert_user(
    repo: RepositoryLike,
    invalidator: Invalidator,
    profile: UserProfile,
    *,
    signup_at: datetime | None = None,
) -> None:
    """Write MySQL first, then drop the cached copy, so readers see the change at once.

    The order matters: invalidating first would let a concurrent lookup re-cache the old
    row. If the invalidation fails (Redis down) the write stands and ``CacheUnavailable``
    is raised so the caller can retry ``invalidate``; otherwise the old profile could be
    served for up to ``user_ttl``.
    """
    await repo.upsert(profile, signup_at)
    await invalidator.invalidate(profile.user_id)


__all__ = [
    "CacheLike",
    "Circuit",
    "Enricher",
    "Invalidator",
    "Outcome",
    "RepositoryLike",
    "upsert_user",
]
