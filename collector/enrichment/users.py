"""User profiles and the MySQL ``users`` repository (source of truth for enrichment).

Driver errors are translated here, at the adapter boundary, into
``collector.enrichment.errors``: whoever calls the repository only has to tell "try again
later" (``SourceUnavailable``) from "this will never work" (``SourceError``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiomysql
import orjson
import pymysql

from collector.config.settings import MySQLSettings
from collector.drivers.deadline import deadline
from collector.drivers.mysql import LazyPool
from collector.enrichment.errors import SourceError, SourceUnavailable

log = logging.getLogger(__name__)

#: Largest ``IN (...)`` list per SELECT; keeps statements small and plans predictable.
CHUNK_SIZE = 500

# OperationalError codes that are configuration mistakes, not outages: retrying is futile.
_CONFIG_ERRNOS = frozenset({1044, 1045, 1049, 1130, 1698})


@dataclass(frozen=True, slots=True)
class UserProfile:
    """The user attributes an event is enriched with."""

    user_id: str
    segment: str
    country: str
    plan: str

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "user_id": self.user_id,
                "segment": self.segment,
                "country": self.country,
                "plan": self.plan,
            }
        )

    @classmethod
    def from_json(cls, data: bytes | str) -> UserProfile:
        """Parse ``to_json`` output; ``ValueError`` for anything else (e.g. a corrupt cache)."""
        obj = orjson.loads(data)
        if not isinstance(obj, dict):
            raise ValueError("profile JSON must be an object")
        values = [obj.get(name) for name in ("user_id", "segment", "country", "plan")]
        strings = [value for value in values if isinstance(value, str)]
        if len(strings) != len(values):
            raise ValueError("profile JSON needs string user_id, segment, country and plan")
        return cls(*strings)


#: Attributes used when a user is unknown or could not be looked up (``user_id`` is
#: empty: it is the same object for every such user; the caller knows the id).
UNKNOWN_PROFILE = UserProfile(user_id="", segment="unknown", country="unknown", plan="unknown")


def _classify(exc: BaseException) -> type[SourceError] | None:
    """Which error class ``exc`` becomes, or None if it is not a MySQL/transport error."""
    if isinstance(exc, pymysql.err.OperationalError):
        errno = exc.args[0] if exc.args else 0
        return SourceError if errno in _CONFIG_ERRNOS else SourceUnavailable
    if isinstance(exc, pymysql.err.InterfaceError):
        return SourceUnavailable  # connection closed under us
    if isinstance(exc, pymysql.err.MySQLError):
        return SourceError  # ProgrammingError, IntegrityError, DataError, ...
    if isinstance(exc, OSError | EOFError | TimeoutError):
        return SourceUnavailable
    return None


@contextmanager
def mysql_errors(what: str) -> Iterator[None]:
    """Translate MySQL driver/transport errors raised by ``what`` into source errors."""
    try:
        yield
    except SourceError:
        raise
    except Exception as exc:
        kind = _classify(exc)
        if kind is None:
            raise
        detail = "timed out" if isinstance(exc, TimeoutError) else f"{exc!r}"
        raise kind(f"mysql {what}: {detail}") from exc


class UserRepository:
    """Reads and writes ``users`` through a small aiomysql pool.

    The pool is created lazily, so a worker starts even while MySQL is down; calls
    then raise ``SourceUnavailable`` until it is back. Every call is bounded by
    ``settings.timeout``.
    """

    def __init__(self, settings: MySQLSettings) -> None:
        self._settings = settings
        self._pool = LazyPool(settings)

    async def start(self) -> None:
        """Connect now if possible; an outage here is not fatal (the pool is lazy)."""
        try:
            await self._ensure_pool()
        except SourceUnavailable as exc:
            log.warning("users repository starts without MySQL: %s", exc)

    async def close(self) -> None:
        await self._pool.close()

    async def get_many(self, user_ids: Iterable[str]) -> dict[str, UserProfile]:
        """Profiles of the ids that exist (absent ids are unknown users)."""
        ids = list(dict.fromkeys(user_ids))
        found: dict[str, UserProfile] = {}
        for start in range(0, len(ids), CHUNK_SIZE):
            chunk = ids[start : start + CHUNK_SIZE]
            marks = ",".join(["%s"] * len(chunk))
            rows = await self._query(
                f"SELECT user_id, segment, country, plan FROM users WHERE user_id IN ({marks})",
                chunk,
            )
            for user_id, segment, country, plan in rows:
                found[user_id] = UserProfile(user_id, segment, country, plan)
        return found

    async def upsert(self, profile: UserProfile, signup_at: datetime | None = None) -> None:
        """Insert or update one user; ``signup_at`` (UTC-aware) is kept unless given."""
        if signup_at is not None and signup_at.tzinfo is None:
            raise ValueError("signup_at must be timezone-aware")
        signup = signup_at.astimezone(UTC) if signup_at is not None else None
        # MariaDB rejects MySQL 8's ``AS new`` alias, so VALUES() it is.
        await self._query(
            "INSERT INTO users (user_id, segment, country, plan, signup_at, updated_at) "
            "VALUES (%s, %s, %s, %s, COALESCE(%s, UTC_TIMESTAMP(3)), UTC_TIMESTAMP(3)) "
            "ON DUPLICATE KEY UPDATE segment = VALUES(segment), country = VALUES(country), "
            "plan = VALUES(plan), signup_at = COALESCE(%s, signup_at), "
            "updated_at = VALUES(updated_at)",
            (profile.user_id, profile.segment, profile.country, profile.plan, signup, signup),
        )

    async def _ensure_pool(self) -> aiomysql.Pool:
        with mysql_errors("connect"):
            return await self._pool.get()

    async def _query(self, sql: str, args: Any) -> list[tuple[Any, ...]]:
        pool = await self._ensure_pool()
        with mysql_errors("query"):
            async with deadline(self._settings.timeout):
                conn = await pool.acquire()
                try:
                    async with conn.cursor() as cur:
                        await cur.execute(sql, args)
                        return list(await cur.fetchall())
                except BaseException:
                    # A half-read reply must never go back to the pool.
                    conn.close()
                    raise
                finally:
                    pool.release(conn)


__all__ = ["CHUNK_SIZE", "UNKNOWN_PROFILE", "UserProfile", "UserRepository", "mysql_errors"]
