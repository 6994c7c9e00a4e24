"""Configured aggregates' tables against the real MariaDB: ``collector db migrate``
creates them from the definition, does it once, refuses (exit 2, naming the column) a
table that disagrees, and the MySQL sink upserts into a created table (revision/final
as the built-ins, quoted identifiers included)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from collector.aggregates.configured import configured_aggregates
from collector.cli.main import main
from collector.config import Settings, load_settings
from collector.db import connect
from collector.db.tables import ensure_configured_tables
from collector.sinks import MySQLSink, Row

pytestmark = pytest.mark.integration

T0 = 1_700_000_040_000


async def columns(settings: Settings, table: str) -> list[tuple[str, str]]:
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        await cur.execute("SELECT column_name, column_type FROM information_schema.columns "
                          "WHERE table_schema = DATABASE() AND table_name = %s "
                          "ORDER BY ordinal_position", (table,))
        return [(str(a), str(b)) for a, b in await cur.fetchall()]


async def drop(settings: Settings, table: str) -> None:
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        await cur.execute(f"DROP TABLE IF EXISTS `{table}`")


async def test_migrate_creates_once_and_refuses_a_disagreeing_table(
    migrated: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    name = "order_" + uuid.uuid4().hex[:8]  # quoted: the sink writes `select` below
    monkeypatch.setenv(f"COLLECTOR_AGGREGATES__{name.upper()}__GROUP_BY", "source,properties.plan")
    monkeypatch.setenv(f"COLLECTOR_AGGREGATES__{name.upper()}__MEASURES",
                       "select=count,max(value),users=distinct(user_id)")
    settings = load_settings()
    try:
        assert await asyncio_main(["db", "migrate"]) == 0
        assert f"created configured aggregate table(s): {name}" in capsys.readouterr().out
        assert [c for c, _ in await columns(settings, name)] == [
            "window_start", "window_seconds", "revision", "final", "updated_at", "source",
            "properties_plan", "select", "max_value", "users", "users_truncated"]
        assert await asyncio_main(["db", "migrate"]) == 0  # idempotent: nothing to create
        assert "created configured" not in capsys.readouterr().out

        sink = MySQLSink(settings.mysql, aggregates={d.name: d for d in
                                                     configured_aggregates(settings)})
        values = {"select": 3, "max_value": None, "users": 2, "users_truncated": False}
        try:
            sink.add([Row(name, T0, 60, ("web", "pro"), values, False, T0)])
            assert (await sink.flush()).written == 1
            sink.add([Row(name, T0, 60, ("web", "pro"), {**values, "select": 4}, True, T0, 1)])
            await sink.flush()
            sink.add([Row(name, T0, 60, ("web", "pro"), {**values, "select": 1}, False, T0)])
            await sink.flush()  # a non-final row never overwrites a final one
        finally:
            await sink.close()
        async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
            await cur.execute(f"SELECT window_start, `select`, max_value, users, revision, "
                              f"final FROM `{name}`")
            rows = await cur.fetchall()
        start = datetime.fromtimestamp(T0 / 1000, UTC).replace(tzinfo=None)
        assert [tuple(r) for r in rows] == [(start, 4, None, 2, 1, 1)]

        async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
            await cur.execute(f"ALTER TABLE `{name}` MODIFY users INT NULL")
        assert await asyncio_main(["db", "migrate"]) == 2
        err = capsys.readouterr().err
        assert (f"{name}.users: the definition says BIGINT NOT NULL, the table has int NULL"
                in err)
    finally:
        await drop(settings, name)


async def asyncio_main(argv: list[str]) -> int:
    """``collector …`` in a thread (it runs its own event loop)."""
    import asyncio

    return await asyncio.to_thread(main, argv)


async def test_two_workers_starting_at_once_both_find_the_table(migrated: Settings,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    import asyncio

    name = "race_" + uuid.uuid4().hex[:8]
    monkeypatch.setenv(f"COLLECTOR_AGGREGATES__{name.upper()}__GROUP_BY", "type")
    settings = load_settings()
    try:
        created = await asyncio.gather(
            *(ensure_configured_tables(settings, configured_aggregates(settings))
              for _ in range(3)))
        assert sum(len(c) for c in created) >= 1  # the others found it or raced harmlessly
        assert await ensure_configured_tables(settings, configured_aggregates(settings)) == []
    finally:
        await drop(settings, name)
