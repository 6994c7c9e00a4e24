"""Redis cache of user profiles (cache-aside in front of MySQL ``users``).

A profile is stored as its JSON under ``{key_prefix}{user_id}``; a user MySQL does not
know is stored as a short-lived negative marker, so unknown ids do not hit MySQL on
every event. Errors are sorted the way faust's cache backends sort them: operational
ones (refused, lost, timed out, loading, read-only replica) become ``CacheUnavailable``,
the rest (auth, protocol, bad command) ``SourceError``. Nothing is retried here: the
enricher decides whether to fall back to MySQL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Final, final

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from collector.config.settings import RedisSettings
from collector.sources.errors import CacheUnavailable, SourceError
from collector.sources.users import UserProfile

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

    async def put_many(self, profiles: Mapping[str, UserProfile | None]) -> None:
        """Cache loaded profiles; None caches "unknown user" for the shorter negative TTL."""
        if not profiles:
            return
        client = self._redis()
        async with self._guard("SET"):
            async with client.pipeline(transaction=False) as pipe:
                for user_id, profile in profiles.items():
                    if profile is None:
                        pipe.set(self.key(user_id), NEGATIVE_MARKER, ex=self._settings.negative_ttl)
                    else:
                        pipe.set(self.key(user_id), profile.to_json(), ex=self._settings.user_ttl)
                await pipe.execute()

    async def invalidate(self, user_id: str) -> None:
        """Drop the cached answer for ``user_id`` so the next lookup reads MySQL."""
        client = self._redis()
        async with self._guard("DEL"):
            await client.delete(self.key(user_id))

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            timeout = self._settings.timeout
            self._client = aioredis.Redis.from_url(
                self._settings.url.get_secret_value(),
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                # No retries inside: one bounded attempt, the enricher decides what next.
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
        return self._client

    @asynccontextmanager
    async def _guard(self, op: str) -> AsyncIterator[None]:
        """Bound ``op`` by the timeout and translate Redis errors into source errors."""
        try:
            async with asyncio.timeout(self._settings.timeout):
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
