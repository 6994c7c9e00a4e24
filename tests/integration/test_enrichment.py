"""Enrichment against real Redis and MariaDB: migrations, outcomes, outages, recovery.

Happy paths use the shared stack (unique ids, cleaned up). Outage tests kill and pause
their OWN throwaway redis-server/mariadbd (``servers.py``), never the shared ones.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from pydantic import SecretStr

from collector.config.settings import MySQLSettings, RedisSettings, Settings
from collector.db import connect, demo_users, load_migrations, migrate, seed_users
from collector.enrichment import (
    NEGATIVE,
    UNKNOWN_PROFILE,
    CacheUnavailable,
    Enricher,
    Outcome,
    ProfileCache,
    SourceError,
    SourceUnavailable,
    UserProfile,
    UserRepository,
    upsert_user,
)
from tests.integration.servers import MariaDBServer, RedisServer, binary, free_port

pytestmark = pytest.mark.integration

LOOKUP_TIMEOUT = 0.5
BACKOFF = 0.5


def _unique(tag: str) -> str:
    return f"it-{uuid.uuid4().hex[:12]}-{tag}"


def _outcomes(result: dict[str, tuple[UserProfile, Outcome]]) -> dict[str, Outcome]:
    return {user_id: outcome for user_id, (_, outcome) in result.items()}


async def _delete_users(settings: Settings, *user_ids: str) -> None:
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        marks = ",".join(["%s"] * len(user_ids))
        await cur.execute(f"DELETE FROM users WHERE user_id IN ({marks})", user_ids)


# -- throwaway servers (session: initialising a MariaDB datadir costs seconds) ---------


@pytest.fixture(scope="session")
def own_mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDBServer]:
    if binary("mariadbd") is None:
        pytest.skip("mariadb-server is not installed")
    server = MariaDBServer(tmp_path_factory.mktemp("mariadb"))
    try:
        server.init()
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if binary("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        server.start()
        yield server
    finally:
        server.kill()


@pytest.fixture
async def own(own_redis: RedisServer, own_mariadb: MariaDBServer) -> AsyncIterator[Settings]:
    """Settings for the throwaway pair, migrated; both servers healthy again afterwards."""
    settings = Settings(
        redis=RedisSettings(url=SecretStr(own_redis.url), timeout=0.25),
        mysql=MySQLSettings(dsn=SecretStr(own_mariadb.dsn), timeout=1.0),
    )
    await migrate(settings)
    yield settings
    for server in (own_redis, own_mariadb):
        if server.running:
            server.resume()
        else:
            await asyncio.to_thread(server.start)


# -- migrations ------------------------------------------------------------------------


async def test_migrate_fresh_database_once_despite_concurrent_runners(
    own_mariadb: MariaDBServer,
) -> None:
    database = f"mig_{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(own_mariadb.execute, f"CREATE DATABASE {database}")
    dsn = own_mariadb.dsn.rsplit("/", 1)[0] + f"/{database}"
    settings = Settings(mysql=MySQLSettings(dsn=SecretStr(dsn)))
    packaged = await asyncio.to_thread(load_migrations)
    runs = await asyncio.gather(*(migrate(settings) for _ in range(3)))
    assert [run for run in runs if run] == [[m.name for m in packaged]]  # one runner did all
    assert packaged[0].name == "0001_users"
    assert await migrate(settings) == []
    async with connect(settings) as conn, conn.cursor() as cur:
        await cur.execute("SELECT version, name FROM schema_migrations ORDER BY version")
        assert await cur.fetchall() == tuple((m.version, m.name) for m in packaged)
        await cur.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'users' ORDER BY ordinal_position",
            (database,),
        )
        columns = [row[0] for row in await cur.fetchall()]
    assert columns == ["user_id", "segment", "country", "plan", "signup_at", "updated_at"]


async def test_migrate_shared_stack_is_idempotent(stack: Settings) -> None:
    await migrate(stack)
    assert await migrate(stack) == []
    repo = UserRepository(stack.mysql)
    try:
        assert await repo.get_many([_unique("none")]) == {}
    finally:
        await repo.close()


async def test_seed_users_is_deterministic(own: Settings) -> None:
    assert await seed_users(own, 50) == 50
    assert await seed_users(own, 50) == 50
    repo = UserRepository(own.mysql)
    try:
        found = await repo.get_many(f"u{i:05d}" for i in range(60))
    finally:
        await repo.close()
    assert sorted(found) == [f"u{i:05d}" for i in range(50)]
    expected = {row[0]: UserProfile(*row[:4]) for row in demo_users(50)}
    assert found == expected
    assert {p.segment for p in found.values()} <= {"consumer", "smb", "enterprise"}


async def test_missing_table_is_irrecoverable(own_mariadb: MariaDBServer) -> None:
    database = f"empty_{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(own_mariadb.execute, f"CREATE DATABASE {database}")
    dsn = own_mariadb.dsn.rsplit("/", 1)[0] + f"/{database}"
    repo = UserRepository(MySQLSettings(dsn=SecretStr(dsn)))
    try:
        with pytest.raises(SourceError) as info:
            await repo.get_many(["u00001"])
        assert not isinstance(info.value, SourceUnavailable)
    finally:
        await repo.close()


# -- outcomes against the shared stack -------------------------------------------------


@pytest.fixture
async def shared(stack: Settings) -> AsyncIterator[tuple[Settings, Enricher]]:
    await migrate(stack)
    enricher = Enricher.from_settings(stack, lookup_timeout=2.0)
    await enricher.start()
    yield stack, enricher
    await enricher.close()


async def test_hit_miss_negative(shared: tuple[Settings, Enricher]) -> None:
    settings, enricher = shared
    known, unknown = _unique("known"), _unique("unknown")
    repo, cache = UserRepository(settings.mysql), ProfileCache(settings.redis)
    profile = UserProfile(known, "smb", "FR", "pro")
    try:
        await repo.upsert(profile)
        first = await enricher.enrich_many([known, unknown])
        assert first == {known: (profile, Outcome.MISS), unknown: (UNKNOWN_PROFILE, "negative")}
        await asyncio.sleep(0.05)  # the cache fill runs after the answer
        cached = await cache.get_many([known, unknown])
        assert cached == {known: profile, unknown: NEGATIVE}
        second = await enricher.enrich_many([known, unknown])
        assert _outcomes(second) == {known: Outcome.HIT, unknown: Outcome.NEGATIVE}
        assert second[known][0] == profile
    finally:
        await cache.invalidate(known)
        await cache.invalidate(unknown)
        await _delete_users(settings, known)
        await asyncio.gather(repo.close(), cache.close())


async def test_upsert_user_is_seen_by_next_lookup(shared: tuple[Settings, Enricher]) -> None:
    settings, enricher = shared
    user_id = _unique("changes")
    repo = UserRepository(settings.mysql)
    try:
        await upsert_user(repo, enricher, UserProfile(user_id, "consumer", "DE", "free"))
        await enricher.enrich_many([user_id])
        await asyncio.sleep(0.05)
        assert _outcomes(await enricher.enrich_many([user_id])) == {user_id: Outcome.HIT}
        changed = UserProfile(user_id, "enterprise", "DE", "enterprise")
        await upsert_user(repo, enricher, changed)
        assert await enricher.enrich_many([user_id]) == {user_id: (changed, Outcome.MISS)}
    finally:
        await enricher.invalidate(user_id)
        await _delete_users(settings, user_id)
        await repo.close()


async def test_a_fill_racing_an_update_is_refused(shared: tuple[Settings, Enricher]) -> None:
    """Real Redis: a fill whose version was read before an invalidate (another worker's
    profile update) does not cache the old row; a fill with the new version does."""
    settings, _ = shared
    cache = ProfileCache(settings.redis)
    user_id = _unique("race")
    old, new = UserProfile(user_id, "smb", "DE", "free"), UserProfile(user_id, "smb", "DE", "pro")
    try:
        before = await cache.versions([user_id])
        await cache.invalidate(user_id)  # the update lands while the load reads MySQL
        assert await cache.put_many({user_id: old}, before) == 0
        assert await cache.get_many([user_id]) == {}
        assert await cache.put_many({user_id: new}, await cache.versions([user_id])) == 1
        assert await cache.get_many([user_id]) == {user_id: new}
    finally:
        await cache.invalidate(user_id)
        await cache.close()


# -- outages on throwaway servers ------------------------------------------------------


async def _timed(enricher: Enricher, ids: list[str]) -> tuple[dict[str, Outcome], float]:
    began = time.monotonic()
    result = await enricher.enrich_many(ids)
    return _outcomes(result), time.monotonic() - began


async def _until(enricher: Enricher, ids: list[str], want: dict[str, Outcome]) -> float:
    """Seconds until a lookup answers ``want`` (polling every 50 ms, at most 10 s)."""
    began = time.monotonic()
    while (await _timed(enricher, ids))[0] != want:
        assert time.monotonic() - began < 10, f"never got {want}"
        await asyncio.sleep(0.05)
    return time.monotonic() - began


@pytest.mark.parametrize("mysql_outage", ["pause", "kill"])
async def test_outages_degrade_within_bound_and_recover(
    own: Settings, own_redis: RedisServer, own_mariadb: MariaDBServer, mysql_outage: str
) -> None:
    """Redis killed, then MySQL hanging (SIGSTOP) or gone (SIGKILL), then both back."""
    known, unknown = _unique("known"), _unique("unknown")
    ids = [known, unknown]
    repo = UserRepository(own.mysql)
    enricher = Enricher(
        ProfileCache(own.redis),
        repo,
        lookup_timeout=LOOKUP_TIMEOUT,
        redis_backoff=BACKOFF,
        mysql_backoff=BACKOFF,
    )
    await enricher.start()
    try:
        await upsert_user(repo, enricher, UserProfile(known, "smb", "JP", "pro"))
        hits = {known: Outcome.HIT, unknown: Outcome.NEGATIVE}
        assert (await _timed(enricher, ids))[0] == {known: "miss", unknown: "negative"}
        await _until(enricher, ids, hits)

        own_redis.kill()  # Redis gone: answers come from MySQL, not degraded
        outcomes, first = await _timed(enricher, ids)
        assert outcomes == {known: Outcome.MISS, unknown: Outcome.NEGATIVE}
        _, skipped = await _timed(enricher, ids)  # circuit open: Redis not even tried
        assert first < LOOKUP_TIMEOUT and skipped < LOOKUP_TIMEOUT

        # MySQL hangs (pause) or refuses (kill) as well: degraded, within the bound.
        own_mariadb.pause() if mysql_outage == "pause" else own_mariadb.kill()
        began = time.monotonic()
        outcomes, took = await _timed(enricher, ids)
        assert outcomes == {known: Outcome.DEGRADED, unknown: Outcome.DEGRADED}
        assert took < LOOKUP_TIMEOUT + 0.1
        outcomes, degraded_fast = await _timed(enricher, ids)  # both circuits open
        assert outcomes == {known: Outcome.DEGRADED, unknown: Outcome.DEGRADED}
        assert degraded_fast < 0.05
        until_degraded = time.monotonic() - began

        began = time.monotonic()
        if mysql_outage == "pause":
            own_mariadb.resume()
        else:
            await asyncio.to_thread(own_mariadb.start)
        await asyncio.to_thread(own_redis.start)
        restart = time.monotonic() - began
        began = time.monotonic()
        until_answers = await _until(
            enricher, ids, {known: Outcome.MISS, unknown: Outcome.NEGATIVE}
        )
        until_hits = await _until(enricher, ids, hits) + until_answers
        print(
            f"\nredis killed: first lookup {first * 1000:.0f} ms, next {skipped * 1000:.0f} ms;"
            f" mysql {mysql_outage}: degraded after {took * 1000:.0f} ms"
            f" (next {degraded_fast * 1000:.0f} ms, both {until_degraded * 1000:.0f} ms);"
            f" restart took {restart * 1000:.0f} ms, then answers after"
            f" {until_answers * 1000:.0f} ms,"
            f" hits after {until_hits * 1000:.0f} ms"
        )
        assert until_hits < 5
    finally:
        await enricher.close()


async def test_hanging_redis_costs_one_timeout_per_backoff(
    own: Settings, own_redis: RedisServer
) -> None:
    user_id = _unique("hang")
    profile = UserProfile(user_id, "smb", "IN", "free")
    repo, cache = UserRepository(own.mysql), ProfileCache(own.redis)
    enricher = Enricher(cache, repo, lookup_timeout=LOOKUP_TIMEOUT, redis_backoff=5.0)
    await enricher.start()
    try:
        await upsert_user(repo, enricher, profile)
        own_redis.pause()
        outcomes, first = await _timed(enricher, [user_id])
        assert outcomes == {user_id: Outcome.MISS}  # Redis timed out, MySQL answered
        assert own.redis.timeout <= first < LOOKUP_TIMEOUT
        times = [(await _timed(enricher, [user_id]))[1] for _ in range(5)]
        assert max(times) < own.redis.timeout  # circuit open: no timeout paid again
        own_redis.resume()
        # The MGET cut off by the timeout must not leave its late reply on a pooled
        # connection: the next commands read their own answers.
        await cache.put_many({user_id: profile, "it-nobody": None},
                             await cache.versions([user_id, "it-nobody"]))
        assert await cache.get_many([user_id, "it-nobody", "it-absent"]) == {
            user_id: profile,
            "it-nobody": NEGATIVE,
        }
    finally:
        own_redis.resume()
        await enricher.close()


async def test_repository_starts_without_mysql_and_reconnects(
    own: Settings, own_mariadb: MariaDBServer
) -> None:
    own_mariadb.kill()
    repo = UserRepository(own.mysql)
    try:
        await repo.start()  # does not raise
        began = time.monotonic()
        with pytest.raises(SourceUnavailable):
            await repo.get_many(["u00001"])
        assert time.monotonic() - began < own.mysql.timeout + 0.2
        await asyncio.to_thread(own_mariadb.start)
        assert await repo.get_many(["nobody"]) == {}
        own_mariadb.kill()  # pooled connection dies under us
        with pytest.raises(SourceUnavailable):
            await repo.get_many(["nobody"])
        await asyncio.to_thread(own_mariadb.start)
        assert await repo.get_many(["nobody"]) == {}
    finally:
        await repo.close()


async def test_cache_errors_are_sorted(own_redis: RedisServer) -> None:
    refused = ProfileCache(RedisSettings(url=SecretStr(f"redis://127.0.0.1:{free_port()}/0")))
    wrong_auth = ProfileCache(
        RedisSettings(url=SecretStr(f"redis://user:secret@127.0.0.1:{own_redis.port}/0"))
    )
    try:
        began = time.monotonic()
        with pytest.raises(CacheUnavailable):
            await refused.get_many(["a"])
        assert time.monotonic() - began < 0.5
        with pytest.raises(SourceError) as info:
            await wrong_auth.get_many(["a"])
        assert not isinstance(info.value, SourceUnavailable)
    finally:
        await asyncio.gather(refused.close(), wrong_auth.close())


async def test_a_busy_loop_is_not_a_redis_outage(own: Settings, own_redis: RedisServer) -> None:
    """Redis answers while the worker's loop is blocked (a long flush, a loaded host).

    With a plain ``asyncio.timeout`` the reply, already in the socket, lost the race to
    the timer: the MGET counted as a Redis failure, the circuit opened, and with MySQL
    unreachable the profile came back DEGRADED (the full-size outage run enriched
    thousands of events as ``unknown`` that way). The lookup must read the reply.
    """
    user_id = _unique("busy")
    profile = UserProfile(user_id, "smb", "NL", "pro")
    repo, cache = UserRepository(own.mysql), ProfileCache(own.redis)
    await cache.put_many({user_id: profile}, await cache.versions([user_id]))
    # No MySQL behind it: a Redis "timeout" can only end DEGRADED, never MISS.
    unreachable = MySQLSettings(dsn=SecretStr(f"mysql://u:p@127.0.0.1:{free_port()}/x"),
                                timeout=0.2)
    enricher = Enricher(cache, UserRepository(unreachable), lookup_timeout=0.5,
                        redis_backoff=5.0)
    await enricher.start()

    def block() -> None:
        # Redis is held until 50 ms so that its reply lands while this callback holds
        # the loop, as it does when the host is loaded (unpaused it would answer before
        # the loop's next poll and the race would never be run).
        threading.Timer(0.05, own_redis.resume).start()
        time.sleep(4 * own.redis.timeout)

    try:
        for _ in range(3):
            own_redis.pause()
            # 10 ms in, the MGET is written and waiting for the paused Redis
            asyncio.get_running_loop().call_later(0.01, block)
            outcomes = _outcomes(await enricher.enrich_many([user_id]))
            assert outcomes == {user_id: Outcome.HIT}
    finally:
        own_redis.resume()
        await cache.invalidate(user_id)
        await enricher.close()
        await repo.close()
