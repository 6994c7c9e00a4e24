"""The expected aggregates of a list of events, computed the plain way (no collector code)."""

from __future__ import annotations

from typing import Any

Ident = tuple[str, int, int, tuple[str, ...]]


def hopping_starts(ts: int, size_ms: int, step_ms: int) -> list[int]:
    newest = ts - ts % step_ms
    return list(range(newest - size_ms + step_ms, newest + 1, step_ms))


def oracle(
    events: list[dict[str, Any]],
    *,
    tumbling_ms: int = 60_000,
    hop_size_ms: int = 300_000,
    hop_step_ms: int = 60_000,
    segment_only: list[dict[str, Any]] | None = None,
    max_user_types: int = 30,
) -> dict[Ident, dict[str, Any]]:
    """{(table, window_start_ms, window_seconds, key): values} for ``events``.

    ``segment_only`` events count in segment_stats alone (late for the tumbling tables
    but inside an open hopping window).  A user window lists the first
    ``max_user_types`` distinct types in arrival order (sorted), and says if there were
    more.
    """
    out: dict[Ident, dict[str, Any]] = {}
    t_secs, h_secs = tumbling_ms // 1000, hop_size_ms // 1000
    for e in events:
        ws = e["ts"] - e["ts"] % tumbling_ms
        value = e.get("value")
        r = out.setdefault(("event_stats", ws, t_secs, (e["source"], e["type"])),
                           {"count": 0, "value_count": 0, "value_sum": 0.0,
                            "value_min": None, "value_max": None})
        r["count"] += 1
        if value is not None:
            r["value_count"] += 1
            r["value_sum"] += value
            r["value_min"] = value if r["value_min"] is None else min(r["value_min"], value)
            r["value_max"] = value if r["value_max"] is None else max(r["value_max"], value)
        u = out.setdefault(("user_activity", ws, t_secs, (e["user_id"],)),
                           {"count": 0, "types": [], "first_ts": e["ts"], "last_ts": e["ts"]})
        u["count"] += 1
        if e["type"] not in u["types"]:
            u["types"].append(e["type"])
        u["first_ts"] = min(u["first_ts"], e["ts"])
        u["last_ts"] = max(u["last_ts"], e["ts"])
    for e in [*events, *(segment_only or [])]:
        for start in hopping_starts(e["ts"], hop_size_ms, hop_step_ms):
            s = out.setdefault(("segment_stats", start, h_secs, (e["segment"], e["country"])),
                               {"count": 0, "value_sum": 0.0})
            s["count"] += 1
            s["value_sum"] += e.get("value") or 0.0
    for values in out.values():
        if "types" in values:
            values["types_truncated"] = len(values["types"]) > max_user_types
            values["types"] = sorted(values["types"][:max_user_types])
    return out


def _field(event: dict[str, Any], name: str) -> Any:
    if name.startswith("properties."):
        return (event.get("properties") or {}).get(name.split(".", 1)[1])
    return event.get(name)


def _label(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value == int(value):
        return str(int(value))
    return str(value)


def group_by_oracle(
    events: list[dict[str, Any]], table: str, group_by: list[str],
    measures: dict[str, tuple[str, str | None]], *, size_ms: int = 60_000,
    step_ms: int | None = None,
) -> dict[Ident, dict[str, Any]]:
    """A configured aggregate's rows, the plain way: ``measures`` maps each output column
    to (function, field), e.g. {"users": ("distinct", "user_id")}; every window of size
    ``size_ms`` starting at a multiple of ``step_ms`` (default: tumbling) holding the
    event's ts counts it.  Events must already be enriched and deduplicated."""
    step = size_ms if step_ms is None else step_ms
    groups: dict[Ident, list[dict[str, Any]]] = {}
    for e in events:
        key = tuple(_label(_field(e, f)) for f in group_by)
        first = e["ts"] - e["ts"] % step - size_ms + step
        for start in range(first, e["ts"] + 1, step):
            groups.setdefault((table, start, size_ms // 1000, key), []).append(e)
    out: dict[Ident, dict[str, Any]] = {}
    for ident, members in groups.items():
        row: dict[str, Any] = {}
        for column, (fn, field) in measures.items():
            numbers = [float(v) for e in members
                       if field is not None and type(v := _field(e, field)) in (int, float)]
            if fn == "count":
                row[column] = len(members)
            elif fn == "sum":
                row[column] = sum(numbers)
            elif fn in ("min", "max"):
                row[column] = (min if fn == "min" else max)(numbers) if numbers else None
            elif fn == "distinct":
                assert field is not None
                row[column] = len({_label(_field(e, field)) for e in members})
                row[f"{column}_truncated"] = False
        out[ident] = row
    return out


def session_oracle(
    events: list[dict[str, Any]], *, gap_ms: int = 1_800_000, max_user_types: int = 30,
) -> dict[Ident, dict[str, Any]]:
    """{("user_sessions", start, gap_s, (user_id,)): values}: each user's events sorted by
    time, cut where the next event is ``gap_ms`` or more after the previous one.

    Arrival order (the list order) decides which ``max_user_types`` types are listed.
    """
    by_user: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}
    for i, e in enumerate(events):
        by_user.setdefault(e["user_id"], []).append((e["ts"], i, e))
    out: dict[Ident, dict[str, Any]] = {}
    for user, items in by_user.items():
        items.sort(key=lambda item: (item[0], item[1]))
        groups: list[list[tuple[int, int, dict[str, Any]]]] = []
        for item in items:
            if groups and item[0] - groups[-1][-1][0] < gap_ms:
                groups[-1].append(item)
            else:
                groups.append([item])
        for group in groups:
            types: list[str] = []
            for _, _, e in sorted(group, key=lambda item: item[1]):
                if e["type"] not in types:
                    types.append(e["type"])
            out[("user_sessions", group[0][0], gap_ms // 1000, (user,))] = {
                "count": len(group),
                "types": sorted(types[:max_user_types]),
                "first_ts": group[0][0],
                "last_ts": group[-1][0],
                "types_truncated": len(types) > max_user_types,
            }
    return out


def _number(e: dict[str, Any], field: str) -> float | None:
    raw = (e.get("properties") or {}).get(field.removeprefix("properties.")) \
        if field.startswith("properties.") else e.get(field)
    return float(raw) if type(raw) in (int, float) else None


def _text(e: dict[str, Any], field: str) -> str:
    raw = (e.get("properties") or {}).get(field.removeprefix("properties.")) \
        if field.startswith("properties.") else e.get(field)
    return "unknown" if raw is None else str(raw)


def configured_session_oracle(
    events: list[dict[str, Any]], table: str, measures: list[tuple[str, str, str | None]],
    *, gap_ms: int,
) -> dict[Ident, dict[str, Any]]:
    """A configured session aggregate's rows: {(table, start, gap_s, (user_id,)): values}
    with ``first_ts``, ``last_ts`` and each (name, fn, field) measure (count, sum, min,
    max, distinct with its ``<name>_truncated``, never truncated here), computed from each
    user's events cut where the next one is ``gap_ms`` or more after the previous."""
    by_user: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        by_user.setdefault(e["user_id"], []).append(e)
    out: dict[Ident, dict[str, Any]] = {}
    for user, items in by_user.items():
        items = sorted(items, key=lambda e: e["ts"])
        groups: list[list[dict[str, Any]]] = []
        for e in items:
            if groups and e["ts"] - groups[-1][-1]["ts"] < gap_ms:
                groups[-1].append(e)
            else:
                groups.append([e])
        for group in groups:
            values: dict[str, Any] = {"first_ts": group[0]["ts"], "last_ts": group[-1]["ts"]}
            for name, fn, field in measures:
                if fn == "count":
                    values[name] = len(group)
                    continue
                assert field is not None
                if fn == "distinct":
                    values[name] = len({_text(e, field) for e in group})
                    values[f"{name}_truncated"] = False
                    continue
                nums = [n for n in (_number(e, field) for e in group) if n is not None]
                if fn == "sum":
                    values[name] = float(sum(nums))
                else:
                    values[name] = (min if fn == "min" else max)(nums) if nums else None
            out[(table, group[0]["ts"], gap_ms // 1000, (user,))] = values
    return out


#: MySQL session rows as the e2e tests read them: (start, user_id) ->
#: (values, final, merged_into start or None)
SessionRows = dict[tuple[int, str], tuple[dict[str, Any], bool, int | None]]


def session_differences(rows: SessionRows, expected: dict[Any, dict[str, Any]]) -> list[str]:
    """What keeps session rows from being the oracle's sessions (empty: they are): each
    expected session a final row with its values (floats compared approximately), no
    other live row, and every marker final, counting nothing, leading through markers to
    a session."""
    want = {(i[1], i[3][0]): v for i, v in expected.items()}
    live = {k: v for k, v in rows.items() if v[2] is None}
    out = [f"missing {k}" for k in want if k not in live]
    out += [f"extra {k}: {live[k][0]}" for k in live if k not in want]
    out += [f"{k}: {live[k][0]} != {v}" for k, v in want.items()
            if k in live and not _same(live[k][0], v)]
    out += [f"{k} not final" for k in want if k in live and not live[k][1]]
    for (start, uid), (values, final, into) in rows.items():
        if into is None:
            continue
        target, hops = into, 0
        while (target, uid) in rows and rows[(target, uid)][2] is not None and hops < 10:
            target, hops = rows[(target, uid)][2], hops + 1
        if (target, uid) not in want:
            out.append(f"marker {start} {uid} leads to {target}, no session")
        if values["count"] != 0 or not final:
            out.append(f"marker {start} {uid} counts {values['count']} or is not final")
    return out


def _same(got: dict[str, Any], want: dict[str, Any]) -> bool:
    """Equal values, floats (sums of amounts) up to rounding."""
    import pytest

    return got.keys() == want.keys() and all(
        got[k] == pytest.approx(v) if isinstance(v, float) else got[k] == v
        for k, v in want.items())
