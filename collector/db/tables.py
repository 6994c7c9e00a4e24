"""MySQL tables of configured aggregates: generated from the definition, not migrated.

A built-in table comes from a migration (checked against its definition by
collector.db.schema at test time).  A configured aggregate has no migration, so the
worker (and ``collector db migrate``) creates its table from the definition at start-up
with ``CREATE TABLE IF NOT EXISTS`` and compares an existing table's columns with the
definition: a table left by an earlier, different declaration of the same name would
make every upsert fail (or, worse, write into columns meaning something else), so a
difference stops start-up naming the table and column (exit 2) instead.

Identifiers are whitelisted by the settings (collector.config.aggregates) and quoted
here as well; no value is ever formatted into the SQL.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from typing import Any, Final

import pymysql

from collector.aggregates import Aggregate
from collector.config import Settings
from collector.db.migrate import connect
from collector.enrichment.users import mysql_errors

_SAFE: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
#: what information_schema's COLUMN_TYPE says for the type a definition names
_ALIASES: Final = {"bool": "tinyint(1)", "boolean": "tinyint(1)"}
_INT_WIDTH: Final = re.compile(r"^(tinyint|smallint|mediumint|int|bigint)\(\d+\)$")


class SchemaMismatch(Exception):
    """An existing table disagrees with its configured aggregate's definition."""

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def ident(name: str) -> str:
    """A quoted identifier; refuses anything the whitelist would not have let through."""
    if not _SAFE.match(name):
        raise ValueError(f"{name!r} is not a safe SQL identifier")
    return f"`{name}`"


def create_sql(defn: Aggregate) -> str:
    """``CREATE TABLE IF NOT EXISTS`` of a definition, in the built-in tables' style
    (UTC DATETIME(3) times, key columns utf8mb4_bin so 'Web' and 'web' stay two rows)."""
    keys = set(defn.key_names)
    lines = []
    for name, (sql, nullable) in defn.schema_columns().items():
        collate = " COLLATE utf8mb4_bin" if name in keys else ""
        default = {"revision": " DEFAULT 0", "final": " DEFAULT FALSE"}.get(name, "")
        null = "NULL" if nullable else "NOT NULL"
        lines.append(f"    {ident(name)} {sql}{collate} {null}{default}")
    primary = ", ".join(ident(n) for n in ("window_start", "window_seconds", *defn.key_names))
    lines.append(f"    PRIMARY KEY ({primary})")
    body = ",\n".join(lines)
    return (f"CREATE TABLE IF NOT EXISTS {ident(defn.name)} (\n{body}\n) "
            "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci")


def canonical_type(sql: str) -> str:
    """A column type as information_schema spells it, without integer display widths
    (MariaDB says ``int(11)``, MySQL 8 ``int``)."""
    text = " ".join(sql.lower().split())
    text = _ALIASES.get(text, text)
    if text == "tinyint(1)":
        return text
    match = _INT_WIDTH.match(text)
    return match.group(1) if match else text


#: (column, COLUMN_TYPE, IS_NULLABLE, COLUMN_KEY) rows of information_schema.columns
LiveColumn = tuple[str, str, str, str]


def mismatches(defn: Aggregate, live: Iterable[LiveColumn]) -> list[str]:
    """Every way an existing table differs from ``defn`` (empty: it matches)."""
    want = defn.schema_columns()
    got = {str(name): (canonical_type(str(ctype)), str(null).upper() == "YES", str(key))
           for name, ctype, null, key in live}
    problems = []
    for name, (sql, nullable) in want.items():
        have = got.get(name)
        if have is None:
            problems.append(f"{defn.name}.{name}: in the definition, not in the table")
            continue
        if have[0] != canonical_type(sql) or have[1] != nullable:
            problems.append(
                f"{defn.name}.{name}: the definition says {sql}"
                f"{' NULL' if nullable else ' NOT NULL'}, the table has {have[0]}"
                f"{' NULL' if have[1] else ' NOT NULL'}")
    problems += [f"{defn.name}.{name}: in the table, not in the definition"
                 for name in got if name not in want]
    primary = {"window_start", "window_seconds", *defn.key_names}
    have_primary = {name for name, (_, _, key) in got.items() if key == "PRI"}
    if not problems and have_primary != primary:
        problems.append(f"{defn.name}: primary key ({', '.join(sorted(have_primary))}), "
                        f"the definition needs ({', '.join(sorted(primary))})")
    return problems


_COLUMNS_SQL: Final = (
    "SELECT column_name, column_type, is_nullable, column_key FROM information_schema.columns "
    "WHERE table_schema = DATABASE() AND table_name = %s")


async def ensure_tables(cur: Any, aggregates: Iterable[Aggregate]) -> list[str]:
    """Create the missing tables of configured aggregates that write to MySQL; raise
    :class:`SchemaMismatch` naming every column an existing one disagrees on.  Returns
    the tables created.  ``cur``: an aiomysql cursor (autocommit: DDL commits anyway)."""
    created, problems = [], []
    for defn in aggregates:
        if not defn.configured or "mysql" not in defn.sinks:
            continue
        await cur.execute(_COLUMNS_SQL, (defn.name,))
        live = await cur.fetchall()
        if live:
            problems += mismatches(defn, live)
            continue
        with warnings.catch_warnings():  # "already exists": another worker won the race
            warnings.simplefilter("ignore", pymysql.Warning)
            await cur.execute(create_sql(defn))
        created.append(defn.name)
    if problems:
        raise SchemaMismatch(problems)
    return created


async def ensure_configured_tables(settings: Settings,
                                   aggregates: Iterable[Aggregate]) -> list[str]:
    """:func:`ensure_tables` on a connection of its own; ``SourceUnavailable`` while
    MySQL cannot be reached, ``SchemaMismatch`` when a table disagrees."""
    wanted = [a for a in aggregates if a.configured and "mysql" in a.sinks]
    if not wanted:
        return []
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        with mysql_errors("create configured aggregate tables"):
            return await ensure_tables(cur, wanted)


__all__ = ["SchemaMismatch", "canonical_type", "create_sql", "ensure_configured_tables",
           "ensure_tables", "ident", "mismatches"]
