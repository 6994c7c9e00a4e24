"""The MySQL sink's own multi-row statements mean what pymysql's escaping would send."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pymysql
import pytest
from pymysql.converters import escape_item, escape_string

from collector.aggregates.definition import naive_utc
from collector.sinks import mysql
from collector.sinks.sql_values import (
    WindowStarts,
    datetime_literal,
    literal,
    statements,
    values_tuple,
)

HOSTILE = ["", "plain", "it's", "back\\slash", "quote\"d", "nul\x00byte", "new\nline",
           "ctrl\x1a", "'; DROP TABLE users; --", "ünïcödé ✓ 🚀", "\\'", "%s %(x)s"]


def pymysql_literal(value: Any) -> str:
    """What aiomysql's ``Connection.escape`` makes of a value (backslash mode)."""
    if isinstance(value, str):
        return "'" + escape_string(value) + "'"
    return str(escape_item(value, "utf8mb4"))


def test_literals_equal_the_drivers_for_every_type_the_rows_carry() -> None:
    rng = random.Random(7)
    values: list[Any] = [*HOSTILE, 0, 1, -1, 2**63 - 1, True, False, None, 0.0, -0.0, 1.5,
                         1e-300, 3.141592653589793, 1e20, Decimal("1.25"),
                         datetime(2026, 12, 7, 1, 2, 3), datetime(2026, 12, 7, 1, 2, 3, 4000),  # noqa: DTZ001
                         datetime(999, 1, 1), naive_utc(0), naive_utc(1_765_000_000_123)]  # noqa: DTZ001
    values += [rng.uniform(-1e6, 1e6) for _ in range(200)]
    values += [rng.randrange(-2**40, 2**40) for _ in range(200)]
    values += ["".join(chr(rng.randrange(0, 0x2FF)) for _ in range(12)) for _ in range(200)]
    for value in values:
        assert literal(value) == pymysql_literal(value), value


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_are_refused_like_the_driver_refuses_them(bad: float) -> None:
    with pytest.raises(pymysql.err.ProgrammingError, match="can not be used"):
        literal(bad)
    with pytest.raises(pymysql.err.ProgrammingError):
        values_tuple("'x'", [1, bad], "'y'")


def test_window_start_literal_is_the_naive_utc_datetime_and_stays_bounded() -> None:
    starts = WindowStarts()
    for ms in (0, 60_000, 1_765_000_000_123, 1_765_000_000_000):
        assert starts(ms) == pymysql_literal(naive_utc(ms))
        assert starts(ms) == pymysql_literal(naive_utc(ms))  # cached, same answer
    for ms in range(0, 10_000 * 60_000, 60_000):
        starts(ms)
    assert len(starts._cache) <= 4096
    assert starts(59 * 60_000) == "'1970-01-01 00:59:00'"


def test_values_tuple_is_one_utf8_row() -> None:
    now = datetime(2026, 12, 7, tzinfo=UTC).replace(tzinfo=None) + timedelta(milliseconds=5)
    row = values_tuple("'2026-12-07 00:00:00'", [60, "it's ✓", None, 2, True],
                       datetime_literal(now))
    assert row == ("('2026-12-07 00:00:00',60,'it\\'s ✓',NULL,2,1,"
                   "'2026-12-07 00:00:00.005000')").encode()


def test_statements_cut_under_the_limit_and_keep_every_row_once() -> None:
    rows = [f"({i},'{'x' * (i % 50)}')".encode() for i in range(500)]
    out = list(statements("INSERT INTO t (a, b) VALUES ", " ON DUP", rows, limit=2_000))
    assert len(out) > 5
    got: list[bytes] = []
    for sql in out:
        assert len(sql) <= 2_000
        assert sql.startswith(b"INSERT INTO t (a, b) VALUES (") and sql.endswith(b") ON DUP")
        got += [b"(" + part + b")" for part in
                sql[len(b"INSERT INTO t (a, b) VALUES ("):-len(b") ON DUP")].split(b"),(")]
    assert got == rows
    assert list(statements("P ", " Q", [])) == []
    assert list(statements("P ", " Q", [b"(1)"])) == [b"P (1) Q"]
    huge = [b"(" + b"y" * 3_000 + b")", b"(2)"]  # one row over the limit still goes, alone
    assert list(statements("P ", " Q", huge, limit=2_000)) == [b"P " + huge[0] + b" Q", b"P (2) Q"]


def test_sessions_keep_backslash_escapes_which_the_literals_rely_on() -> None:
    assert "NO_BACKSLASH_ESCAPES" not in mysql._SQL_MODE
    assert "sql_mode" in mysql._SQL_MODE


def test_upsert_sql_is_the_parts_the_statements_are_built_from() -> None:
    prefix, holders, postfix = mysql._upsert_parts("segment_stats")
    assert prefix.endswith(" VALUES ") and postfix.startswith(" ON DUPLICATE KEY UPDATE ")
    assert mysql.upsert_sql("segment_stats") == f"{prefix}({holders}){postfix}"
