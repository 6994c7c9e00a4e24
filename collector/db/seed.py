"""Deterministic demo users, so the event producer (ids ``u00000``…) mostly hits known users."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

from collector.config.settings import Settings
from collector.db.migrate import connect
from collector.enrichment.users import mysql_errors

SEGMENTS = ("consumer", "smb", "enterprise")
SEGMENT_WEIGHTS = (70, 25, 5)
COUNTRIES = ("DE", "US", "FR", "BR", "JP", "IN")
COUNTRY_WEIGHTS = (20, 30, 10, 15, 10, 15)
PLANS = ("free", "starter", "pro", "business")
PLAN_WEIGHTS = (55, 20, 18, 7)
_SIGNUP_EPOCH = datetime(2023, 1, 1, tzinfo=UTC)
_SIGNUP_SPAN_SECONDS = 2 * 365 * 86400
_BATCH = 1000

_UPSERT = (
    "INSERT INTO users (user_id, segment, country, plan, signup_at, updated_at) "
    "VALUES (%s, %s, %s, %s, %s, %s) "
    "ON DUPLICATE KEY UPDATE segment = VALUES(segment), country = VALUES(country), "
    "plan = VALUES(plan), signup_at = VALUES(signup_at), updated_at = VALUES(updated_at)"
)


def demo_user_id(index: int) -> str:
    """The id scheme shared with the producer."""
    return f"u{index:05d}"


def demo_users(count: int, seed: int = 7) -> Iterator[tuple[str, str, str, str, datetime]]:
    """(user_id, segment, country, plan, signup_at) rows; same seed, same users."""
    rng = random.Random(seed)
    for index in range(count):
        segment = rng.choices(SEGMENTS, SEGMENT_WEIGHTS)[0]
        country = rng.choices(COUNTRIES, COUNTRY_WEIGHTS)[0]
        plan = "enterprise" if segment == "enterprise" else rng.choices(PLANS, PLAN_WEIGHTS)[0]
        signup_at = _SIGNUP_EPOCH + timedelta(seconds=rng.randrange(_SIGNUP_SPAN_SECONDS))
        yield demo_user_id(index), segment, country, plan, signup_at


async def seed_users(settings: Settings, count: int, seed: int = 7,
                     progress: Callable[[int, int], None] | None = None) -> int:
    """Upsert ``count`` demo users (idempotent); returns how many were written.

    Changed rows are not invalidated in Redis: seeding is for a fresh stack.
    ``progress(done, total)`` is called after every batch of 1000.
    """
    if count < 0:
        raise ValueError("count must not be negative")
    now = datetime.now(UTC)
    rows = [(*row, now) for row in demo_users(count, seed)]
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        for start in range(0, len(rows), _BATCH):
            with mysql_errors("seed"):
                await cur.executemany(_UPSERT, rows[start : start + _BATCH])
            if progress is not None:
                progress(min(start + _BATCH, len(rows)), len(rows))
    return len(rows)


__all__ = ["COUNTRIES", "PLANS", "SEGMENTS", "demo_user_id", "demo_users", "seed_users"]
