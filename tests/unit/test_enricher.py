"""Enricher logic against in-memory fakes: outcomes, fallbacks, bounds, circuits, stampedes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from datetime import datetime

import pymysql
import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.db.migrate import load_migrations, split_statements
from collector.enrichment import (
    NEGATIVE,
    UNKNOWN_PROFILE,
    CacheUnavailable,
    Enricher,
    Negative,
    Outcome,
    SourceError,
    SourceUnavailable,
    UserProfile,
    mysql_errors,
    upsert_user,
)

ALICE = UserProfile("u00001", "smb", "DE", "pro")
BOB = UserProfile("u00002", "consumer", "US", "free")
BACKOFF = 0.05


class FakeCache:
    """ProfileCache's async surface over a dict; ``down``/``delay`` simulate outages."""

    def __init__(self) -> None:
        self.data: dict[str, UserProfile | Negative] = {}
        self.down = False
        self.delay = 0.0
        self.mgets: list[list[str]] = []
        self.calls: list[str] = []
        self.version: dict[str, int] = {}

    async def _io(self, op: str) -> None:
        self.calls.append(op)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise CacheUnavailable("redis down")

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def get_many(self, user_ids: Iterable[str]) -> dict[str, UserProfile | Negative]:
        ids = list(user_ids)
        self.mgets.append(ids)
        await self._io("mget")
        return {u: self.data[u] for u in ids if u in self.data}

    async def versions(self, user_ids: Iterable[str]) -> dict[str, bytes]:
        await self._io("versions")
        return {u: str(self.version.get(u, 0)).encode() for u in user_ids}

    async def put_many(
        self, profiles: Mapping[str, UserProfile | None], versions: Mapping[str, bytes]
    ) -> int:
        await self._io("put")
        done = 0
        for user_id, profile in profiles.items():
            if versions.get(user_id) == str(self.version.get(user_id, 0)).encode():
                self.data[user_id] = NEGATIVE if profile is None else profile
                done += 1
        return done

    async def invalidate(self, user_id: str) -> None:
        await self._io("invalidate")
        self.version[user_id] = self.version.get(user_id, 0) + 1
        self.data.pop(user_id, None)


class FakeRepo:
    """UserRepository's async surface over a dict."""

    def __init__(self, *users: UserProfile) -> None:
        self.users = {user.user_id: user for user in users}
        self.down = False
        self.delay = 0.0
        self.loads: list[list[str]] = []
        self.calls: list[str] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def get_many(self, user_ids: Iterable[str]) -> dict[str, UserProfile]:
        ids = list(user_ids)
        self.loads.append(ids)
        rows = {u: self.users[u] for u in ids if u in self.users}  # read, then the reply
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise SourceUnavailable("mysql down")
        return rows

    async def upsert(self, profile: UserProfile, signup_at: datetime | None = None) -> None:
        self.calls.append("upsert")
        self.users[profile.user_id] = profile


@pytest.fixture
def cache() -> FakeCache:
    return FakeCache()


@pytest.fixture
def repo() -> FakeRepo:
    return FakeRepo(ALICE, BOB)


@pytest.fixture
def enricher(cache: FakeCache, repo: FakeRepo) -> Enricher:
    return Enricher(cache, repo, lookup_timeout=0.2, redis_backoff=BACKOFF, mysql_backoff=BACKOFF)


async def settle() -> None:
    """Let background cache fills run."""
    for _ in range(5):
        await asyncio.sleep(0)


def outcomes(result: dict[str, tuple[UserProfile, Outcome]]) -> dict[str, Outcome]:
    return {user_id: outcome for user_id, (_, outcome) in result.items()}


async def test_hit_comes_from_redis_only(
    enricher: Enricher, cache: FakeCache, repo: FakeRepo
) -> None:
    cache.data[ALICE.user_id] = ALICE
    assert await enricher.enrich_many([ALICE.user_id]) == {ALICE.user_id: (ALICE, Outcome.HIT)}
    assert repo.loads == []


async def test_miss_loads_mysql_then_caches(
    enricher: Enricher, cache: FakeCache, repo: FakeRepo
) -> None:
    assert await enricher.enrich_many([ALICE.user_id]) == {ALICE.user_id: (ALICE, Outcome.MISS)}
    await settle()
    assert cache.data[ALICE.user_id] == ALICE
    assert await enricher.enrich_many([ALICE.user_id]) == {ALICE.user_id: (ALICE, Outcome.HIT)}
    assert repo.loads == [[ALICE.user_id]]


async def test_unknown_user_is_negative_and_cached(
    enricher: Enricher, cache: FakeCache, repo: FakeRepo
) -> None:
    first = await enricher.enrich_many(["nobody"])
    await settle()
    second = await enricher.enrich_many(["nobody"])
    assert first == second == {"nobody": (UNKNOWN_PROFILE, Outcome.NEGATIVE)}
    assert cache.data["nobody"] is NEGATIVE
    assert repo.loads == [["nobody"]]


async def test_batch_is_one_mget_and_one_select(
    enricher: Enricher, cache: FakeCache, repo: FakeRepo
) -> None:
    cache.data[ALICE.user_id] = ALICE
    result = await enricher.enrich_many([ALICE.user_id, BOB.user_id, "nobody", BOB.user_id])
    assert outcomes(result) == {
        ALICE.user_id: Outcome.HIT,
        BOB.user_id: Outcome.MISS,
        "nobody": Outcome.NEGATIVE,
    }
    assert cache.mgets == [[ALICE.user_id, BOB.user_id, "nobody"]]
    assert repo.loads == [[BOB.user_id, "nobody"]]


async def test_empty_batch(enricher: Enricher, cache: FakeCache) -> None:
    assert await enricher.enrich_many([]) == {}
    assert cache.mgets == []


async def test_redis_down_reads_mysql(enricher: Enricher, cache: FakeCache) -> None:
    cache.down = True
    result = await enricher.enrich_many([ALICE.user_id, "nobody"])
    assert result == {
        ALICE.user_id: (ALICE, Outcome.MISS),
        "nobody": (UNKNOWN_PROFILE, Outcome.NEGATIVE),
    }


async def test_both_down_is_degraded(enricher: Enricher, cache: FakeCache, repo: FakeRepo) -> None:
    cache.down = repo.down = True
    result = await enricher.enrich_many([ALICE.user_id, "nobody"])
    assert result == {
        ALICE.user_id: (UNKNOWN_PROFILE, Outcome.DEGRADED),
        "nobody": (UNKNOWN_PROFILE, Outcome.DEGRADED),
    }


async def test_lookup_never_exceeds_timeout(cache: FakeCache, repo: FakeRepo) -> None:
    enricher = Enricher(cache, repo, lookup_timeout=0.1)
    repo.delay = 5.0
    began = time.monotonic()
    result = await enricher.enrich_many([ALICE.user_id])
    elapsed = time.monotonic() - began
    assert result == {ALICE.user_id: (UNKNOWN_PROFILE, Outcome.DEGRADED)}
    assert 0.09 <= elapsed < 0.3
    await enricher.close()  # cancels the load still running


async def test_slow_mysql_opens_its_circuit(cache: FakeCache, repo: FakeRepo) -> None:
    enricher = Enricher(cache, repo, lookup_timeout=0.1, mysql_backoff=1.0)
    repo.delay = 5.0
    await enricher.enrich_many([ALICE.user_id])
    began = time.monotonic()
    result = await enricher.enrich_many([BOB.user_id])  # would wait again without the circuit
    assert result == {BOB.user_id: (UNKNOWN_PROFILE, Outcome.DEGRADED)}
    assert time.monotonic() - began < 0.05
    assert repo.loads == [[ALICE.user_id]]
    await enricher.close()


async def test_slow_redis_opens_its_circuit(cache: FakeCache, repo: FakeRepo) -> None:
    enricher = Enricher(cache, repo, lookup_timeout=0.1, redis_backoff=1.0)
    cache.delay = 5.0
    assert outcomes(await enricher.enrich_many([ALICE.user_id])) == {ALICE.user_id: "degraded"}
    began = time.monotonic()
    assert outcomes(await enricher.enrich_many([ALICE.user_id])) == {ALICE.user_id: "miss"}
    assert time.monotonic() - began < 0.05
    assert len(cache.mgets) == 1


async def test_timeout_keeps_answers_already_found(cache: FakeCache, repo: FakeRepo) -> None:
    enricher = Enricher(cache, repo, lookup_timeout=0.1)
    cache.data[ALICE.user_id] = ALICE
    repo.delay = 5.0
    began = time.monotonic()
    result = await enricher.enrich_many([ALICE.user_id, BOB.user_id])
    assert result == {
        ALICE.user_id: (ALICE, Outcome.HIT),
        BOB.user_id: (UNKNOWN_PROFILE, Outcome.DEGRADED),
    }
    assert time.monotonic() - began < 0.3
    await enricher.close()


async def test_circuit_skips_dead_redis_then_probes(
    enricher: Enricher, cache: FakeCache, repo: FakeRepo
) -> None:
    cache.down = True
    for _ in range(5):
        result = await enricher.enrich_many([ALICE.user_id])
        assert result[ALICE.user_id] == (ALICE, Outcome.MISS)
    assert len(cache.mgets) == 1  # the other four batches did not pay for a dead Redis
    await asyncio.sleep(BACKOFF * 1.5)
    await enricher.enrich_many([ALICE.user_id])
    assert len(cache.mgets) == 2  # one probe after the backoff


async def test_circuit_skips_dead_mysql(
    enricher: Enricher, cache: FakeCache, repo: FakeRepo
) -> None:
    cache.down = repo.down = True
    for _ in range(3):
        assert outcomes(await enricher.enrich_many(["x"])) == {"x": Outcome.DEGRADED}
    assert len(repo.loads) == 1


async def test_recovers_when_services_return(
    enricher: Enricher, cache: FakeCache, repo: FakeRepo
) -> None:
    cache.down = repo.down = True
    assert outcomes(await enricher.enrich_many([ALICE.user_id]))[ALICE.user_id] == "degraded"
    cache.down = repo.down = False
    await asyncio.sleep(BACKOFF * 1.5)
    assert outcomes(await enricher.enrich_many([ALICE.user_id]))[ALICE.user_id] == "miss"
    await settle()
    assert outcomes(await enricher.enrich_many([ALICE.user_id]))[ALICE.user_id] == "hit"


async def test_stampede_guard_shares_one_load(
    enricher: Enricher, cache: FakeCache, repo: FakeRepo
) -> None:
    repo.delay = 0.05
    first, second, third = await asyncio.gather(
        enricher.enrich_many([ALICE.user_id]),
        enricher.enrich_many([ALICE.user_id, BOB.user_id]),
        enricher.enrich_many([ALICE.user_id]),
    )
    assert first == third == {ALICE.user_id: (ALICE, Outcome.MISS)}
    assert outcomes(second) == {ALICE.user_id: Outcome.MISS, BOB.user_id: Outcome.MISS}
    assert repo.loads == [[ALICE.user_id], [BOB.user_id]]


async def test_shared_load_survives_a_caller_timing_out(cache: FakeCache, repo: FakeRepo) -> None:
    enricher = Enricher(cache, repo, lookup_timeout=0.05, mysql_backoff=0.01)
    repo.delay = 0.08
    first = await enricher.enrich_many([ALICE.user_id])
    assert first == {ALICE.user_id: (UNKNOWN_PROFILE, Outcome.DEGRADED)}
    await asyncio.sleep(0.02)  # the circuit half-opens: a second caller joins the load
    second = await enricher.enrich_many([ALICE.user_id])
    assert second == {ALICE.user_id: (ALICE, Outcome.MISS)}
    await settle()
    assert cache.data[ALICE.user_id] == ALICE  # the load finished and filled the cache
    assert repo.loads == [[ALICE.user_id]]
    await enricher.close()


async def test_never_raises(enricher: Enricher, repo: FakeRepo) -> None:
    async def broken(user_ids: Iterable[str]) -> dict[str, UserProfile]:
        raise RuntimeError("bug")

    repo.get_many = broken  # type: ignore[method-assign]
    result = await enricher.enrich_many([ALICE.user_id])
    assert result == {ALICE.user_id: (UNKNOWN_PROFILE, Outcome.DEGRADED)}


async def test_invalidate_during_load_does_not_cache_stale_row(
    enricher: Enricher, cache: FakeCache, repo: FakeRepo
) -> None:
    repo.delay = 0.05
    lookup = asyncio.create_task(enricher.enrich_many([ALICE.user_id]))
    await asyncio.sleep(0.01)
    await enricher.invalidate(ALICE.user_id)
    await lookup
    await settle()
    assert ALICE.user_id not in cache.data


async def test_an_update_on_another_worker_voids_a_load_in_flight(
    enricher: Enricher, cache: FakeCache, repo: FakeRepo
) -> None:
    """Worker A loads the old row; worker B updates MySQL and invalidates (a different
    process: A's in-flight bookkeeping never hears of it); A's fill must not cache the
    old row, or every worker would serve it until the TTL."""
    repo.delay = 0.05
    lookup = asyncio.create_task(enricher.enrich_many([ALICE.user_id]))
    await asyncio.sleep(0.01)  # A's load has read the version and waits on MySQL
    changed = UserProfile(ALICE.user_id, "enterprise", "DE", "enterprise")
    repo.users[ALICE.user_id] = changed
    other_worker = cache  # B talks to Redis directly, not through A's enricher
    await other_worker.invalidate(ALICE.user_id)
    assert (await lookup)[ALICE.user_id] == (ALICE, Outcome.MISS)  # read before the update
    await settle()
    assert ALICE.user_id not in cache.data  # the stale fill was refused
    repo.delay = 0.0
    assert await enricher.enrich_many([ALICE.user_id]) == {ALICE.user_id: (changed, Outcome.MISS)}
    await settle()
    assert cache.data[ALICE.user_id] == changed  # the next load fills normally


async def test_upsert_user_writes_mysql_then_invalidates(
    enricher: Enricher, cache: FakeCache, repo: FakeRepo
) -> None:
    cache.data[ALICE.user_id] = ALICE
    changed = UserProfile(ALICE.user_id, "enterprise", "DE", "enterprise")
    order: list[str] = []
    repo.calls, cache.calls = order, order
    await upsert_user(repo, enricher, changed)
    assert order == ["upsert", "invalidate"]
    assert await enricher.enrich_many([ALICE.user_id]) == {ALICE.user_id: (changed, Outcome.MISS)}


async def test_upsert_user_reports_failed_invalidation(cache: FakeCache, repo: FakeRepo) -> None:
    cache.down = True
    with pytest.raises(CacheUnavailable):
        await upsert_user(repo, cache, BOB)
    assert repo.calls == ["upsert"]  # the write stands


@given(
    st.text(max_size=64),
    st.text(max_size=64),
    st.text(max_size=8),
    st.text(max_size=32),
)
def test_profile_json_round_trip(user_id: str, segment: str, country: str, plan: str) -> None:
    profile = UserProfile(user_id, segment, country, plan)
    assert UserProfile.from_json(profile.to_json()) == profile


@pytest.mark.parametrize("raw", [b"\x00", b"[]", b'{"user_id": 1}', b"{", b'"x"'])
def test_profile_from_bad_json(raw: bytes) -> None:
    with pytest.raises(ValueError):
        UserProfile.from_json(raw)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (pymysql.err.OperationalError(2003, "Can't connect"), SourceUnavailable),
        (pymysql.err.OperationalError(2013, "Lost connection"), SourceUnavailable),
        (pymysql.err.InterfaceError(0, ""), SourceUnavailable),
        (ConnectionResetError(), SourceUnavailable),
        (TimeoutError(), SourceUnavailable),
        (pymysql.err.OperationalError(1045, "Access denied"), SourceError),
        (pymysql.err.ProgrammingError(1064, "syntax"), SourceError),
        (pymysql.err.IntegrityError(1062, "duplicate"), SourceError),
    ],
)
def test_mysql_errors_are_sorted(exc: Exception, kind: type[SourceError]) -> None:
    with pytest.raises(SourceError) as info, mysql_errors("test"):
        raise exc
    assert type(info.value) is kind
    assert info.value.__cause__ is exc


def test_foreign_errors_pass_through() -> None:
    with pytest.raises(KeyError), mysql_errors("test"):
        raise KeyError("x")


def test_split_statements() -> None:
    sql = (
        "-- header\nCREATE TABLE a (x INT);\n\nINSERT INTO a VALUES (1); -- trailing\n-- only\n;\n"
    )
    sql += "UPDATE a SET x = ';'\nWHERE x = 1;"
    assert split_statements(sql) == (
        "-- header\nCREATE TABLE a (x INT)",
        "INSERT INTO a VALUES (1)",
        "UPDATE a SET x = ';'\nWHERE x = 1",
    )


def test_packaged_migrations_are_ordered() -> None:
    migrations = load_migrations()
    assert [m.name for m in migrations][:1] == ["0001_users"]
    assert [m.version for m in migrations] == sorted({m.version for m in migrations})
    assert "CREATE TABLE IF NOT EXISTS users" in migrations[0].statements[0]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def local_enricher(cache: FakeCache, repo: FakeRepo, clock: Clock, **kw: int) -> Enricher:
    return Enricher(cache, repo, lookup_timeout=0.2, redis_backoff=BACKOFF,
                    mysql_backoff=BACKOFF, local_ttl=5.0, clock=clock, **kw)


async def test_local_copy_answers_hot_users_without_redis(
    cache: FakeCache, repo: FakeRepo
) -> None:
    """Redis' answers (profiles and unknown markers) are kept in process for local_ttl:
    the next batches cost no MGET, with the same outcomes, until they expire."""
    clock = Clock()
    enricher = local_enricher(cache, repo, clock)
    cache.data[ALICE.user_id] = ALICE
    cache.data["nobody"] = NEGATIVE
    want = {ALICE.user_id: (ALICE, Outcome.HIT), "nobody": (UNKNOWN_PROFILE, Outcome.NEGATIVE)}
    assert await enricher.enrich_many([ALICE.user_id, "nobody"]) == want
    assert len(cache.mgets) == 1
    clock.now += 4.9
    assert await enricher.enrich_many([ALICE.user_id, "nobody"]) == want
    assert len(cache.mgets) == 1, "answered in process"
    cache.down = True  # a Redis outage does not reach the hot users either
    assert await enricher.enrich_many([ALICE.user_id]) == {ALICE.user_id: (ALICE, Outcome.HIT)}
    cache.down = False
    clock.now += 0.2  # expired: Redis again
    assert await enricher.enrich_many([ALICE.user_id]) == {ALICE.user_id: (ALICE, Outcome.HIT)}
    assert cache.mgets[-1] == [ALICE.user_id]
    assert repo.loads == []


async def test_an_update_drops_the_local_copy_at_once(cache: FakeCache, repo: FakeRepo) -> None:
    """upsert_user (the users topic's agent) invalidates through the enricher: the next
    event is enriched from MySQL with the new profile, not from the local copy."""
    clock = Clock()
    enricher = local_enricher(cache, repo, clock)
    cache.data[ALICE.user_id] = ALICE
    await enricher.enrich_many([ALICE.user_id])
    changed = UserProfile(ALICE.user_id, "enterprise", "FR", "enterprise")
    await upsert_user(repo, enricher, changed)
    assert await enricher.enrich_many([ALICE.user_id]) == {
        ALICE.user_id: (changed, Outcome.MISS)}


async def test_an_mget_overlapping_an_update_fills_no_local_copy(
    cache: FakeCache, repo: FakeRepo
) -> None:
    """Redis read the old profile, then the update invalidated: keeping that answer
    would serve the old profile for local_ttl after the update."""
    clock = Clock()
    enricher = local_enricher(cache, repo, clock)
    cache.data[ALICE.user_id] = ALICE
    cache.delay = 0.05
    lookup = asyncio.create_task(enricher.enrich_many([ALICE.user_id]))
    await asyncio.sleep(0.01)  # the MGET is under way
    changed = UserProfile(ALICE.user_id, "enterprise", "FR", "enterprise")
    repo.users[ALICE.user_id] = changed
    await enricher.invalidate(ALICE.user_id)
    assert (await lookup)[ALICE.user_id] == (ALICE, Outcome.HIT)  # read before the update
    cache.delay = 0.0
    assert await enricher.enrich_many([ALICE.user_id]) == {
        ALICE.user_id: (changed, Outcome.MISS)}


async def test_local_copy_is_bounded(cache: FakeCache, repo: FakeRepo) -> None:
    clock = Clock()
    enricher = local_enricher(cache, repo, clock, local_max=2)
    cache.data.update({ALICE.user_id: ALICE, BOB.user_id: BOB, "nobody": NEGATIVE})
    for user_id in (ALICE.user_id, BOB.user_id, "nobody"):
        await enricher.enrich_many([user_id])
    assert len(cache.mgets) == 3
    await enricher.enrich_many([BOB.user_id, "nobody"])
    assert len(cache.mgets) == 3, "the two newest are kept"
    await enricher.enrich_many([ALICE.user_id])
    assert cache.mgets[-1] == [ALICE.user_id], "the oldest went first"
