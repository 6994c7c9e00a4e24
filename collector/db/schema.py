"""The MySQL schema the migrations create, checked against the aggregate definitions.

A definition that gains a column without a migration (or a migration that adds one the
definition does not know) would only fail at the first write in production; this check
names the column at test time instead (tests/unit/test_aggregates.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from collector.aggregates import DEFINITIONS, Aggregate
from collector.db.migrate import Migration, load_migrations

#: table -> column -> (type, nullable)
Schema = dict[str, dict[str, tuple[str, bool]]]

_CREATE: Final = re.compile(
    r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?`?(\w+)`?\s*\((.*)\)[^)]*$", re.I | re.S)
_ADD: Final = re.compile(
    r"ALTER\s+TABLE\s+`?(\w+)`?\s+ADD\s+(?:COLUMN\s+)?(?:IF\s+NOT\s+EXISTS\s+)?(.*)$",
    re.I | re.S)
_DROP: Final = re.compile(
    r"ALTER\s+TABLE\s+`?(\w+)`?\s+DROP\s+(?:COLUMN\s+)?(?:IF\s+EXISTS\s+)?`?(\w+)`?\s*$",
    re.I | re.S)
_NOT_COLUMNS: Final = ("PRIMARY", "KEY", "UNIQUE", "INDEX", "CONSTRAINT", "FOREIGN", "CHECK")


def _code(statement: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in statement.splitlines()).strip()


def _parts(body: str) -> list[str]:
    """Split a column list at commas outside parentheses (``DECIMAL(10,2)``) and quotes
    (``COMMENT 'a, b'``)."""
    parts, depth, start, quote = [], 0, 0, ""
    for i, char in enumerate(body):
        if quote:
            quote = "" if char == quote else quote
            continue
        if char in "'\"":
            quote = char
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return [p.strip() for p in parts if p.strip()]


def _column(definition: str) -> tuple[str, tuple[str, bool]] | None:
    words = definition.split()
    if len(words) < 2 or words[0].upper() in _NOT_COLUMNS:
        return None
    rest = " ".join(words[2:]).upper()
    return words[0].strip("`"), (words[1].upper(), "NOT NULL" not in rest)


def migrated_schema(migrations: Iterable[Migration]) -> Schema:
    """Columns of every table after applying ``migrations`` (CREATE TABLE, ADD/DROP
    COLUMN; other statements do not change columns here)."""
    schema: Schema = {}
    for migration in migrations:
        for statement in migration.statements:
            code = _code(statement)
            if match := _CREATE.match(code):
                table = schema.setdefault(match.group(1), {})
                for part in _parts(match.group(2)):
                    if (column := _column(part)) is not None:
                        table[column[0]] = column[1]
            elif match := _DROP.match(code):
                schema.get(match.group(1), {}).pop(match.group(2), None)
            elif (match := _ADD.match(code)) and (column := _column(match.group(2))):
                schema.setdefault(match.group(1), {})[column[0]] = column[1]
    return schema


def schema_drift(aggregates: Iterable[Aggregate] = DEFINITIONS,
                 migrations: Iterable[Migration] | None = None) -> list[str]:
    """Every disagreement between the definitions' MySQL columns and the migrations."""
    schema = migrated_schema(load_migrations() if migrations is None else migrations)
    problems = []
    for defn in aggregates:
        if "mysql" not in defn.sinks:
            continue
        table = schema.get(defn.name)
        if table is None:
            problems.append(f"{defn.name}: no migration creates the table")
            continue
        want = defn.schema_columns()
        for name, (sql, nullable) in want.items():
            got = table.get(name)
            if got is None:
                problems.append(f"{defn.name}.{name}: in the definition, in no migration")
            elif got != (sql.upper(), nullable):
                problems.append(f"{defn.name}.{name}: the definition says {sql}"
                                f"{' NULL' if nullable else ' NOT NULL'}, the migrations "
                                f"{got[0]}{' NULL' if got[1] else ' NOT NULL'}")
        problems += [f"{defn.name}.{name}: in the migrations, not in the definition"
                     for name in table if name not in want]
    return problems


__all__ = ["migrated_schema", "schema_drift"]
