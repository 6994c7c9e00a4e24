"""Read the aggregates back from MariaDB and InfluxDB, in the oracle's shape."""

from __future__ import annotations

import urllib.parse
from datetime import UTC, datetime
from typing import Any

import aiohttp

from collector.config import Settings
from collector.db import connect

Ident = tuple[str, int, int, tuple[str, ...]]


def _ms(value: datetime) -> int:
    return int(value.replace(tzinfo=UTC).timestamp() * 1000)


async def mysql_rows(
    settings: Settings, lo_ms: int, hi_ms: int, keys: dict[str, str]
) -> dict[Ident, tuple[dict[str, Any], bool]]:
    """Rows with window_start in [lo, hi) whose first key column equals ``keys[table]``
    prefix match (LIKE prefix%)."""
    lo = datetime.fromtimestamp(lo_ms / 1000, UTC).replace(tzinfo=None)
    hi = datetime.fromtimestamp(hi_ms / 1000, UTC).replace(tzinfo=None)
    out: dict[Ident, tuple[dict[str, Any], bool]] = {}
    async with connect(settings, autocommit=True) as conn, conn.cursor() as cur:
        await cur.execute(
            "SELECT window_start, window_seconds, source, type, count, value_count, "
            "value_sum, value_min, value_max, final FROM event_stats "
            "WHERE window_start >= %s AND window_start < %s AND source LIKE %s",
            (lo, hi, keys["event_stats"] + "%"))
        for ws, secs, src, typ, c, vc, vs, vmin, vmax, fin in await cur.fetchall():
            out[("event_stats", _ms(ws), secs, (src, typ))] = (
                {"count": c, "value_count": vc, "value_sum": vs, "value_min": vmin,
                 "value_max": vmax}, bool(fin))
        await cur.execute(
            "SELECT window_start, window_seconds, user_id, count, types, types_truncated, "
            "first_event_at, last_event_at, final FROM user_activity "
            "WHERE window_start >= %s AND window_start < %s AND user_id LIKE %s",
            (lo, hi, keys["user_activity"] + "%"))
        for ws, secs, uid, c, types, truncated, first, last, fin in await cur.fetchall():
            out[("user_activity", _ms(ws), secs, (uid,))] = (
                {"count": c, "types": sorted(types.split(",")), "first_ts": _ms(first),
                 "last_ts": _ms(last), "types_truncated": bool(truncated)}, bool(fin))
        await cur.execute(
            "SELECT window_start, window_seconds, segment, country, count, value_sum, final "
            "FROM segment_stats WHERE window_start >= %s AND window_start < %s "
            "AND segment LIKE %s", (lo, hi, keys["segment_stats"] + "%"))
        for ws, secs, segment, country, c, vs, fin in await cur.fetchall():
            out[("segment_stats", _ms(ws), secs, (segment, country))] = (
                {"count": c, "value_sum": vs}, bool(fin))
    return out


async def influx_query(settings: Settings, q: str) -> list[dict[str, Any]]:
    """InfluxQL over the v1 HTTP API; rows as dicts (time in epoch ms)."""
    params = urllib.parse.urlencode({"db": settings.influx.database, "q": q, "epoch": "ms"})
    async with aiohttp.ClientSession() as session, session.get(
        f"{settings.influx.url}/query?{params}"
    ) as resp:
        body = await resp.json()
    rows: list[dict[str, Any]] = []
    for result in body.get("results", []):
        for series in result.get("series", []) or []:
            tags = series.get("tags", {})
            for values in series["values"]:
                rows.append({**tags, **dict(zip(series["columns"], values, strict=True))})
    return rows


async def influx_create_db(settings: Settings) -> None:
    data = urllib.parse.urlencode({"q": f'CREATE DATABASE "{settings.influx.database}"'})
    async with aiohttp.ClientSession() as session, session.post(
        f"{settings.influx.url}/query", data=data,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as resp:
        assert resp.status == 200, await resp.text()
