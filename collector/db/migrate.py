"""Schema migrations: ordered ``collector/migrations/NNNN_name.sql`` files, applied once.

Applied versions are recorded in ``schema_migrations``; each file runs in its own
transaction (MySQL commits DDL implicitly, so keep one DDL change per file to stay
restartable). ``GET_LOCK`` serialises concurrent runners (several workers starting at
once), so nothing is applied twice.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiomysql

from collector.config.settings import Settings
from collector.enrichment.errors import SourceError, SourceUnavailable
from collector.enrichment.users import mysql_errors

log = logging.getLogger(__name__)

LOCK_NAME = "collector_migrate"
LOCK_WAIT_SECONDS = 30

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# A statement ends with ';' at the end of a line, optionally followed by a ``--`` comment
# (so a ';' inside a line, e.g. in a string, stays put).
_STATEMENT_END = re.compile(r";[ \t]*(?:--[^\n]*)?(?:\r?\n|\Z)")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INT          NOT NULL,
    name       VARCHAR(255) NOT NULL,
    applied_at DATETIME(3)  NOT NULL COMMENT 'UTC',
    PRIMARY KEY (version)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file: ``version`` orders it, ``name`` (the file stem) identifies it."""

    version: int
    name: str
    statements: tuple[str, ...]


def split_statements(sql: str) -> tuple[str, ...]:
    """Statements of a file, without empty or comment-only pieces."""
    statements = []
    for piece in _STATEMENT_END.split(sql):
        code = "\n".join(
            line for line in piece.splitlines() if not line.lstrip().startswith("--")
        ).strip()
        if code:
            statements.append(piece.strip())
    return tuple(statements)


def load_migrations() -> list[Migration]:
    """All packaged migrations in version order (blocking file reads: call in a thread)."""
    # Next to the package, not importlib.resources: the latter breaks when an editable
    # install resolves ``collector`` as a namespace package (no single directory).
    folder = Path(__file__).resolve().parent.parent / "migrations"
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        match = _FILE_RE.match(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise SourceError(f"two migrations share version {version:04d}")
        stem = entry.name.removesuffix(".sql")
        text = entry.read_text("utf-8")
        found[version] = Migration(version, stem, split_statements(text))
    return [found[version] for version in sorted(found)]


@asynccontextmanager
async def connect(
    settings: Settings, *, autocommit: bool = False
) -> AsyncIterator[aiomysql.Connection]:
    """One short-lived connection for admin work (migrations, seeding)."""
    with mysql_errors("connect"):
        async with asyncio.timeout(settings.mysql.timeout):
            conn = await aiomysql.connect(
                connect_timeout=settings.mysql.timeout,
                autocommit=autocommit,
                charset="utf8mb4",
                **settings.mysql.connect_kwargs(),
            )
    try:
        yield conn
    finally:
        conn.close()


async def migrate(settings: Settings) -> list[str]:
    """Apply pending migrations in order; returns the names applied (empty if none)."""
    migrations = await asyncio.to_thread(load_migrations)
    applied: list[str] = []
    async with connect(settings) as conn, conn.cursor() as cur:
        with mysql_errors("migration lock"):
            await cur.execute("SELECT GET_LOCK(%s, %s)", (LOCK_NAME, LOCK_WAIT_SECONDS))
            (locked,) = await cur.fetchone()
        if locked != 1:
            raise SourceUnavailable(
                f"another migration held {LOCK_NAME!r} for {LOCK_WAIT_SECONDS}s"
            )
        try:
            with mysql_errors("migrate"):
                # Checked first: IF NOT EXISTS alone would raise a driver Warning every run.
                await cur.execute(
                    "SELECT COUNT(*) FROM information_schema.tables "
                    "WHERE table_schema = DATABASE() AND table_name = 'schema_migrations'"
                )
                (exists,) = await cur.fetchone()
                if not exists:
                    await cur.execute(_CREATE_TABLE)
                await cur.execute("SELECT version FROM schema_migrations")
                done = {row[0] for row in await cur.fetchall()}
                await conn.commit()
                for migration in migrations:
                    if migration.version in done:
                        continue
                    await _apply(conn, cur, migration)
                    applied.append(migration.name)
                unknown = done - {migration.version for migration in migrations}
                if unknown:
                    log.warning("database has migrations this code does not know: %s", unknown)
        finally:
            try:
                await cur.execute("DO RELEASE_LOCK(%s)", (LOCK_NAME,))
            except Exception as exc:  # closing the connection releases it anyway
                log.warning("could not release %r: %r", LOCK_NAME, exc)
    return applied


async def _apply(conn: aiomysql.Connection, cur: aiomysql.Cursor, migration: Migration) -> None:
    log.info("applying migration %s", migration.name)
    await conn.begin()
    try:
        for statement in migration.statements:
            await cur.execute(statement)
        await cur.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) "
            "VALUES (%s, %s, UTC_TIMESTAMP(3))",
            (migration.version, migration.name),
        )
        await conn.commit()
    except BaseException:
        try:
            await conn.rollback()
        except Exception as exc:  # keep the original error; the connection is closed next
            log.warning("rollback of %s failed: %r", migration.name, exc)
        raise


__all__ = ["LOCK_NAME", "Migration", "connect", "load_migrations", "migrate", "split_statements"]
