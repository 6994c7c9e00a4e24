"""The table query API without Faust: parameters, windows out of state, response shape.

Kept apart from the views so every rule (ranges, 400s, finality, the scatter-gather
merge) is unit-tested on plain dicts; ``collector.web.query`` only adds ownership,
routing and HTTP.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka.partitioner import murmur2

from collector.aggregates import BY_NAME, DEFINITIONS, Aggregate, WindowSpec
from collector.aggregates.definition import epoch_ms, naive_utc
from collector.engine.windows import EVENT_STATS, SEGMENT_STATS, USER_ACTIVITY, USER_SESSIONS
from collector.models.contract import TYPE_RE, USER_ID_RE
from collector.models.validate import parse_rfc3339_ms

DEFAULT_RANGE_MS = 3_600_000
#: Longest ``to - from``: a user query reads one key per window in the range.
MAX_RANGE_MS = 31 * 24 * 3_600_000
#: Segment and country are free text from the users table; keep them bounded.
_LABEL_RE = re.compile(r"[^\x00-\x1f|]{1,64}")
_EPOCH_MS_RE = re.compile(r"[0-9]{1,16}")
#: Most sink rows one history query reads (a month of one-minute windows is 44,640).
HISTORY_LIMIT = 100_000
_ONE_MS = timedelta(milliseconds=1)

#: key names of each table, from the definitions
KEY_NAMES: dict[str, tuple[str, ...]] = {d.name: d.key_names for d in DEFINITIONS}


class ParamError(ValueError):
    """A bad query parameter: answered 400 ``{"error": message, "field": field}``."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message

    def body(self) -> dict[str, str]:
        return {"error": self.message, "field": self.field}


@dataclass(frozen=True, slots=True)
class Query:
    """One parsed request: which table, which keys (None = any), which window starts."""

    table: str
    from_ms: int
    to_ms: int
    key: dict[str, str | None] = field(default_factory=dict)

    def wants(self, key: Sequence[str], ws: int) -> bool:
        if not self.from_ms <= ws < self.to_ms:
            return False
        return all(want is None or want == got
                   for want, got in zip(self.key.values(), key, strict=True))


def rfc3339(ms: int) -> str:
    """UTC RFC 3339 with milliseconds and a ``Z``."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def parse_time(text: str, name: str) -> int:
    """Epoch ms from RFC 3339 (with an offset) or from a plain epoch-millisecond integer."""
    text = text.strip()
    if _EPOCH_MS_RE.fullmatch(text):
        return int(text)
    ms = parse_rfc3339_ms(text)
    if ms is None:
        raise ParamError(name, f"{name} must be RFC 3339 with an offset "
                               "(2026-01-01T00:00:00Z) or epoch milliseconds")
    return ms


def parse_range(params: Mapping[str, str], now_ms: int) -> tuple[int, int]:
    """``[from, to)`` in ms: to defaults to now, from to one hour before ``to``."""
    to_ms = parse_time(params["to"], "to") if params.get("to") else now_ms
    from_ms = (parse_time(params["from"], "from") if params.get("from")
               else to_ms - DEFAULT_RANGE_MS)
    if from_ms >= to_ms:
        raise ParamError("from", "from must be before to")
    if to_ms - from_ms > MAX_RANGE_MS:
        raise ParamError("from", f"range longer than {MAX_RANGE_MS // 86_400_000} days")
    return from_ms, to_ms


def _optional(params: Mapping[str, str], name: str, ok: Callable[[str], bool],
              rule: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not ok(value):
        raise ParamError(name, f"{name} {rule}")
    return value


def parse_events(params: Mapping[str, str], sources: Sequence[str], now_ms: int) -> Query:
    source = _optional(params, "source", lambda v: v in sources,
                       f"must be one of {', '.join(sources)}")
    etype = _optional(params, "type", lambda v: TYPE_RE.fullmatch(v) is not None,
                      f"must match {TYPE_RE.pattern}")
    from_ms, to_ms = parse_range(params, now_ms)
    return Query(EVENT_STATS, from_ms, to_ms, {"source": source, "type": etype})


def parse_segments(params: Mapping[str, str], now_ms: int) -> Query:
    def label(value: str) -> bool:
        return _LABEL_RE.fullmatch(value) is not None

    rule = "must be 1-64 characters without control characters or '|'"
    segment = _optional(params, "segment", label, rule)
    country = _optional(params, "country", label, rule)
    from_ms, to_ms = parse_range(params, now_ms)
    return Query(SEGMENT_STATS, from_ms, to_ms, {"segment": segment, "country": country})


def parse_user(user_id: str, params: Mapping[str, str], now_ms: int) -> Query:
    if USER_ID_RE.fullmatch(user_id) is None:
        raise ParamError("user_id", f"user_id must match {USER_ID_RE.pattern}")
    from_ms, to_ms = parse_range(params, now_ms)
    return Query(USER_ACTIVITY, from_ms, to_ms, {"user_id": user_id})


#: a configured aggregate's key filter: any label up to a property string's 256 characters
_VALUE_RE = re.compile(r"[^\x00-\x1f|]{1,256}")


def parse_aggregate(defn: Aggregate, params: Mapping[str, str], sources: Sequence[str],
                    now_ms: int) -> Query:
    """A configured aggregate's query: each key column is an optional filter."""
    key: dict[str, str | None] = {}
    for k in defn.keys:
        if k.sources:
            key[k.name] = _optional(params, k.name, lambda v: v in sources,
                                    f"must be one of {', '.join(sources)}")
        elif k.name == "user_id":  # what /users/{id}/... accept: no other id can exist
            key[k.name] = _optional(params, k.name,
                                    lambda v: USER_ID_RE.fullmatch(v) is not None,
                                    f"must match {USER_ID_RE.pattern}")
        else:
            key[k.name] = _optional(params, k.name,
                                    lambda v: _VALUE_RE.fullmatch(v) is not None,
                                    "must be 1-256 characters without control characters "
                                    "or '|'")
    from_ms, to_ms = parse_range(params, now_ms)
    return Query(defn.name, from_ms, to_ms, key)


def parse_sessions(user_id: str, params: Mapping[str, str], now_ms: int) -> Query:
    """One user's sessions that start in ``[from, to)``."""
    return dataclasses.replace(parse_user(user_id, params, now_ms), table=USER_SESSIONS)


def parse_partitions(text: str | None, count: int) -> list[int] | None:
    """The internal ``partitions=0,2`` list of a scatter-gather sub-request."""
    if text is None:
        return None
    try:
        parts = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise ParamError("partitions", "partitions must be comma-separated integers") from None
    if any(not 0 <= p < count for p in parts):
        raise ParamError("partitions", f"partitions must lie in [0, {count})")
    return parts


def user_partition(user_id: str, partitions: int) -> int:
    """The raw topics' partition of a user: Kafka's default murmur2 on the raw id bytes.

    Faust's ``table_route`` hashes the *json-serialized* key (``"u1"`` with quotes), which
    lands elsewhere than the producers' raw keys, so routing computes it like producers do.
    """
    return (murmur2(user_id.encode()) & 0x7FFFFFFF) % partitions


def user_window_starts(query: Query, spec: WindowSpec) -> range:
    """Starts of the tumbling windows that begin in ``[from, to)``."""
    first = -(-query.from_ms // spec.step_ms) * spec.step_ms
    return range(first, query.to_ms, spec.step_ms)


def _end(spec: WindowSpec, ws: int, values: Mapping[str, Any]) -> int:
    """A window's end; a session's is its last event."""
    end: int = values["last_ts"] if spec.session else spec.end(ws)
    return end


def window(table: str, spec: WindowSpec, key: Sequence[str], ws: int,
           agg: dict[str, Any], final: bool, defn: Aggregate | None = None) -> dict[str, Any]:
    """One window of the response (``defn``: the table's, when it is not a built-in)."""
    defn = BY_NAME[table] if defn is None else defn
    values = defn.row_values(agg)
    return {
        "window_start": rfc3339(ws),
        "window_end": rfc3339(_end(spec, ws, values)),
        "window_start_ms": ws,
        "key": dict(zip(defn.key_names, key, strict=True)),
        "values": values,
        "final": final,
    }


def session_windows(sessions: Iterable[tuple[dict[str, Any], bool]], user_id: str,
                    query: Query, spec: WindowSpec, closed: int,
                    defn: Aggregate | None = None) -> list[dict[str, Any]]:
    """A user's live sessions (state, whether its row was written final) that start in
    the query's range; final once ``closed``, the close mark, passed last + gap + grace
    (the flusher's rule), or once written final.  The values are what a MySQL row of
    the session answers (``history_window``), so live and written ones look alike."""
    defn = BY_NAME[query.table] if defn is None else defn
    out = []
    for agg, written_final in sessions:
        start = agg["first_ts"]
        if query.wants([user_id], start):
            final = written_final or spec.is_closed(agg["last_ts"], closed)
            live = window(query.table, spec, [user_id], start, agg, final, defn)
            values = {**live["values"], "first_ts": start}
            live["values"] = {name: values[name] for name in defn.outputs}
            out.append(live)
    return sort_windows(out)


def merged_windows(
    items: Iterable[tuple[str, dict[str, Any]]], query: Query, spec: WindowSpec,
    partitions: Iterable[int], close_mark: Callable[[int], int],
    defn: Aggregate | None = None,
) -> list[dict[str, Any]]:
    """The merged-table windows matching ``query`` in ``partitions``.

    ``close_mark(partition)`` is the lowest close mark of every input slot there: the
    merged window is final once it has passed the window's end + grace.
    """
    defn = BY_NAME[query.table] if defn is None else defn
    wanted = set(partitions)
    marks: dict[int, int] = {}
    out = []
    for _, value in items:
        partition = value.get("partition")
        if (value.get("kind") != "m" or value.get("table") != query.table
                or partition not in wanted or not query.wants(value["key"], value["ws"])):
            continue
        assert isinstance(partition, int)
        if partition not in marks:
            marks[partition] = close_mark(partition)
        agg = defn.combine(list(value["slots"].values()))
        final = spec.is_closed(value["ws"], marks[partition])
        out.append(window(query.table, spec, value["key"], value["ws"], agg, final, defn))
    return sort_windows(out)


def sort_key(item: dict[str, Any]) -> tuple[int, tuple[str, ...]]:
    return item["window_start_ms"], tuple(item["key"].values())


def sort_windows(windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(windows, key=sort_key)


def gather(parts: Iterable[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Scatter-gather merge: partitions are disjoint, so concatenate and sort.

    Should two workers both report a window (a rebalance between the sub-requests),
    keep the further-along copy (final first, then the higher count) rather than add.
    """
    best: dict[tuple[int, tuple[str, ...]], dict[str, Any]] = {}
    for part in parts:
        for item in part:
            ident = sort_key(item)
            seen = best.get(ident)
            rank = (item["final"], item["values"].get("count", 0))
            if seen is None or rank > (seen["final"], seen["values"].get("count", 0)):
                best[ident] = item
    return sort_windows(list(best.values()))


def response(query: Query, spec: WindowSpec, windows: list[dict[str, Any]],
             **extra: Any) -> dict[str, Any]:
    """The JSON body every query endpoint answers."""
    return {
        "table": query.table,
        "from": rfc3339(query.from_ms),
        "to": rfc3339(query.to_ms),
        "window_seconds": spec.seconds,
        "windows": windows,
        "complete": True,
        **extra,
    }


# ------------------------------------------------------------ history (sink rows)

#: Value columns the history SELECT reads per table, in order, after window_start, the
#: key columns and before ``final`` (from the definitions: the columns that store a value).
HISTORY_COLUMNS: dict[str, tuple[str, ...]] = {
    d.name: tuple(c.name for c in d.history_columns) for d in DEFINITIONS if "mysql" in d.sinks
}


def history_sql(query: Query, window_seconds: int,
                defn: Aggregate | None = None) -> tuple[str, list[Any]]:
    """SELECT of the sink rows for ``query``: window_start, key, values, final.  A
    configured aggregate's identifiers are quoted, as in its upsert."""
    if defn is None:
        table, keys = query.table, KEY_NAMES[query.table]
        values = HISTORY_COLUMNS[query.table]
    else:
        table, keys = f"`{defn.name}`", tuple(f"`{k}`" for k in defn.key_names)
        values = tuple(f"`{c.name}`" for c in defn.history_columns)
    columns = ("window_start", *keys, *values, "final")
    where = ["window_seconds = %s", "window_start >= %s", "window_start < %s"]
    args: list[Any] = [window_seconds, naive_utc(query.from_ms), naive_utc(query.to_ms)]
    if (defn or BY_NAME[query.table]).window == "session":
        where.append("merged_into IS NULL")  # a marker: its session moved
    for name, value in query.key.items():
        if value is not None:
            where.append(f"`{name}` = %s" if defn is not None else f"{name} = %s")
            args.append(value)
    sql = (f"SELECT {', '.join(columns)} FROM {table} WHERE {' AND '.join(where)} "
           f"ORDER BY window_start LIMIT {HISTORY_LIMIT}")
    return sql, args


def history_window(table: str, spec: WindowSpec, row: Sequence[Any],
                   defn: Aggregate | None = None) -> dict[str, Any]:
    """One SELECT row of :func:`history_sql` as a response window."""
    defn = BY_NAME[table] if defn is None else defn
    nkeys = len(defn.keys)
    ws = epoch_ms(row[0])
    key = [str(k) for k in row[1:1 + nkeys]]
    values = defn.history_values(list(row[1 + nkeys:-1]))
    if spec.session:
        values = {**values, "first_ts": ws}  # the session start is the row's key
        values = {name: values[name] for name in defn.outputs}
    return {
        "window_start": rfc3339(ws),
        "window_end": rfc3339(_end(spec, ws, values)),
        "window_start_ms": ws,
        "key": dict(zip(defn.key_names, key, strict=True)),
        "values": values,
        "final": bool(row[-1]),
    }


def overlay_sessions(history: Iterable[dict[str, Any]], live: list[dict[str, Any]],
                     moved: Iterable[int]) -> list[dict[str, Any]]:
    """Live sessions over the sink's rows: a row whose start is a marker in the state
    (not yet written as one), or that lies inside a live session, is an older version
    of a session that moved or merged."""
    gone = set(moved)
    spans = [(w["values"]["first_ts"], w["values"]["last_ts"]) for w in live]
    kept = [w for w in history if w["window_start_ms"] not in gone
            and not any(a <= w["window_start_ms"] <= b for a, b in spans)]
    return overlay(kept, live)


def overlay(history: Iterable[dict[str, Any]],
            live: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Live windows (tables) replace history rows of the same window and key.

    The tables hold every open window and closed ones until they expire (user windows:
    until their final row is written); the sink rows carry the rest.
    """
    out = {sort_key(w): w for w in history}
    out.update((sort_key(w), w) for w in live)
    return sort_windows(list(out.values()))
