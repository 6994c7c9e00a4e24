"""Multi-row ``VALUES`` statements built from the rows' parameters, escaped as pymysql does.

Why not the driver's ``executemany``: it escapes each parameter through a type lookup
and formats each datetime anew, and in single mode every user window is a row each
flush; that path (row parameters, ``escape_item``, ``escape_datetime``, ``naive_utc``)
was about 8% of the worker's CPU (py-spy, docs/benchmarks.md).  Here the common types
take a direct branch, a window start's literal is cached by its epoch ms, and any other
type goes to pymysql's own ``escape_item``, so the SQL means what the driver's would.

Strings use backslash escaping, which is right because the sink's sessions set a
``sql_mode`` without ``NO_BACKSLASH_ESCAPES`` (``mysql._SQL_MODE``; a test pins it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any, Final

from pymysql.converters import escape_bytes_prefixed, escape_float, escape_item, escape_string

from collector.aggregates.definition import naive_utc

#: aiomysql's ``Cursor.max_stmt_length``: a statement is cut into pieces below this size
MAX_STATEMENT_BYTES: Final = 1_024_000

_CACHE_MAX: Final = 4096


def datetime_literal(value: datetime) -> str:
    """``'YYYY-MM-DD HH:MM:SS[.ffffff]'``: pymysql's ``escape_datetime`` of a naive value."""
    return "'" + value.isoformat(" ") + "'"


def literal(value: Any) -> str:
    """One parameter as SQL; ``ProgrammingError`` for NaN/inf, as the driver raises it."""
    kind = type(value)
    if kind is str:
        return "'" + escape_string(value) + "'"
    if kind is int:
        return str(value)
    if value is None:
        return "NULL"
    if kind is bool:
        return "1" if value else "0"
    if kind is float:
        return str(escape_float(value))
    if kind is datetime and value.tzinfo is None:
        return datetime_literal(value)
    if isinstance(value, bytes | bytearray):
        return str(escape_bytes_prefixed(bytes(value)))
    return str(escape_item(value, "utf8mb4"))


class WindowStarts:
    """Window start (epoch ms) -> its DATETIME literal; a flush repeats a few starts."""

    def __init__(self) -> None:
        self._cache: dict[int, str] = {}

    def __call__(self, ms: int) -> str:
        got = self._cache.get(ms)
        if got is None:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            got = self._cache[ms] = datetime_literal(naive_utc(ms))
        return got


def values_tuple(start: str, params: Iterable[Any], end: str) -> bytes:
    """``(start,p1,p2,…,end)`` (two literals already made) as the UTF-8 the driver sends."""
    return ("(" + start + "," + ",".join([literal(p) for p in params]) + "," + end + ")"
            ).encode("utf-8", "surrogateescape")


def statements(prefix: str, postfix: str, rows: list[bytes],
               limit: int = MAX_STATEMENT_BYTES) -> Iterator[bytes]:
    """``prefix row,row,… postfix`` in as few statements as stay under ``limit`` bytes."""
    head = prefix.encode("utf-8")
    tail = postfix.encode("utf-8")
    sql = bytearray(head)
    for row in rows:
        if len(sql) > len(head) and len(sql) + len(row) + len(tail) + 1 > limit:
            yield bytes(sql + tail)
            sql = bytearray(head)
        elif len(sql) > len(head):
            sql += b","
        sql += row
    if len(sql) > len(head):
        yield bytes(sql + tail)


__all__ = ["MAX_STATEMENT_BYTES", "WindowStarts", "datetime_literal", "literal",
           "statements", "values_tuple"]
