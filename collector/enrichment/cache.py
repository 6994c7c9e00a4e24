"""Redis cache of user profiles (cache-aside in front of MySQL ``users``).

A profile is stored as its JSON under ``{key_prefix}{user_id}``; a user MySQL does not
know is stored as a short-lived negative marker, so unknown ids do not hit MySQL on
every event. Errors are sorted the way faust's cache backends sort them: operational
ones (refused, lost, timed out, loading, read-only replica) become ``CacheUnavailable``,
the rest (auth, protocol, bad command) ``SourceError``. Nothing is retried here: the
enricher decides whether to fall back to MySQL.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Final, final

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from collector.config.settings import RedisSettings
from collector.drivers.deadline import deadline
from collector.enrichment.errors import CacheUnavailable, SourceError
from collector.enrichment.users import UserProfile

log = logging.getLogger(__name__)

#: Stored for users MySQL does not know. Never valid JSON, so never a profile.
NEGATIVE_MARKER: Final = b"\x00"

# Checked before _OPERATIONAL: these subclass ConnectionError/ResponseError but are
# configuration problems a retry will not fix.
_IRRECOVERABLE: Final = (
    rexc.AuthenticationError,
    rexc.AuthorizationError,
    rexc.NoPermissionError,
)
_OPERATIONAL: Final = (
    rexc.ConnectionError,  # refused, reset, BusyLoadingError, MaxConnectionsError
    rexc.TimeoutError,
    rexc.ReadOnlyError,  # failover in progress
    rexc.TryAgainError,
    rexc.ClusterDownError,
    rexc.OutOfMemoryError,
    OSError,
    EOFError,
)


#: Suffix of a user's version key; ``~`` cannot occur in a user_id, so no key collides.
VERSION_SUFFIX: Final = "~v"

#: SET KEYS[1] ARGV[1] EX ARGV[2] only while the version KEYS[2] is still ARGV[3]; atomic.
_FILL_IF_VERSION: Final = """
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


@final
class Negative:
    """A cached "MySQL has no such user" answer (see ``NEGATIVE``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEGATIVE"


#: The only ``Negative`` instance callers need; compare with ``isinstance``.
NEGATIVE: Final = Negative()


class ProfileCache:
    """Batched profile reads and writes against Redis, each bounded by ``settings.timeout``."""

    def __init__(self, settings: RedisSettings) -> None:
        self._settings = settings
        self._client: aioredis.Redis | None = None

    async def start(self) -> None:
        """Create the client; it connects lazily, so a down Redis does not stop startup."""
        self._redis()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def key(self, user_id: str) -> str:
        return f"{self._settings.key_prefix}{user_id}"

    async def get_many(self, user_ids: Iterable[str]) -> dict[str, UserProfile | Negative]:
        """Cached answers for ``user_ids`` with ONE MGET; ids missing from the result missed."""
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return {}
        client = self._redis()
        async with self._guard("MGET"):
            values = await client.mget([self.key(user_id) for user_id in ids])
        found: dict[str, UserProfile | Negative] = {}
        for user_id, value in zip(ids, values, strict=True):
            if value is None:
                continue
            if value == NEGATIVE_MARKER:
                found[user_id] = NEGATIVE
                continue
            try:
                profile = UserProfile.from_json(value)
            except ValueError:
                log.warning("ignoring corrupt cache entry for user %r", user_id)
                continue  # a miss: the reload overwrites it
            if profile.user_id == user_id:
                found[user_id] = profile
        return found

    def version_key(self, user_id: str) -> str:
        return f"{self._settings.key_prefix}{user_id}{VERSION_SUFFIX}"

    async def versions(self, user_ids: Iterable[str]) -> dict[str, bytes]:
        """Each user's profile version (bumped by ``invalidate``), read BEFORE loading MySQL."""
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return {}
        client = self._redis()
        async with self._guard("MGET"):
            values = await client.mget([self.version_key(user_id) for user_id in ids])
        return {u: _as_bytes(value or b"0") for u, value in zip(ids, values, strict=True)}

    async def put_many(
        self, profiles: Mapping[str, UserProfile | None], versions: Mapping[str, bytes]
    ) -> int:
        """Cache loaded profiles; None caches "unknown user" for the shorter negative TTL.

        A profile is only cached if its version is still the one read before the MySQL
        load: otherwise an update (on any worker) came in between, and the loaded row may
        be the old one.  Returns how many entries were cached.
        """
        todo = [u for u in profiles if u in versions]
        if not todo:
            return 0
        client = self._redis()
        async with self._guard("SET"):
            async with client.pipeline(transaction=False) as pipe:
                for user_id in todo:
                    profile = profiles[user_id]
                    value = NEGATIVE_MARKER if profile is None else profile.to_json()
                    ttl = self._settings.user_ttl if profile else self._settings.negative_ttl
                    pipe.eval(_FILL_IF_VERSION, 2, self.key(user_id), self.version_key(user_id),
                              value, ttl, versions[user_id])
                results = await pipe.execute()
        return sum(1 for result in results if result)

    async def invalidate(self, user_id: str) -> None:
        """Drop the cached answer for ``user_id`` and bump its version (voids loads in flight)."""
        client = self._redis()
        version_key = self.version_key(user_id)
        async with self._guard("DEL"):
            async with client.pipeline(transaction=True) as pipe:
                pipe.incr(version_key)
                # outlives any load in flight; an expired version reads "0", which can only
                # make a fill skip, never cache a stale row
                pipe.expire(version_key, max(self._settings.user_ttl, 60))
                pipe.delete(self.key(user_id))
                await pipe.execute()

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            # redis-py's own read timeout is plain asyncio: it would fire behind a busy
            # loop (see drivers/deadline.py), so it is only a backstop past _guard's bound
            backstop = self._settings.timeout * 8
            self._client = aioredis.Redis.from_url(
                self._settings.url.get_secret_value(),
                socket_timeout=backstop,
                socket_connect_timeout=backstop,
                # No retries inside: one bounded attempt, the enricher decides what next.
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
        return self._client

    @asynccontextmanager
    async def _guard(self, op: str) -> AsyncIterator[None]:
        """Bound ``op`` by the timeout and translate Redis errors into source errors."""
        try:
            async with deadline(self._settings.timeout):
                yield
        except TimeoutError as exc:
            raise CacheUnavailable(f"redis {op} timed out after {self._settings.timeout}s") from exc
        except _IRRECOVERABLE as exc:
            raise SourceError(f"redis {op}: {exc!r}") from exc
        except _OPERATIONAL as exc:
            raise CacheUnavailable(f"redis {op}: {exc!r}") from exc
        except rexc.RedisError as exc:
            raise SourceError(f"redis {op}: {exc!r}") from exc


__all__ = ["NEGATIVE", "NEGATIVE_MARKER", "Negative", "ProfileCache"]
