"""Session windows per user, built at flush time from the per-user tumbling windows.

A session is a run of a user's events with less than the gap between consecutive ones
(Beam's ``Sessions``).  With a gap of at least the tumbling size, two events in one
user window are less than a gap apart, so a user's sessions are exactly the chains of
their non-empty user windows ("panes") in which each pane starts less than a gap after
the previous one ends: count, distinct types, first and last event merge pane by pane.
So sessions cost nothing per event: the fold, the event-id dedupe, the offset guards
and the late rule are the user window's, and the flusher copies each changed pane (its
absolute value, so a replay or a resend changes nothing) into the user's sessions entry
``g|table|user_id`` (changelogged, in the user's partition).

- Panes that no event can reach any more (the user window is gone) are folded into
  ``pieces``, the sessions they form on their own: the entry stays bounded by the
  allowed lateness, not by the length of a session.
- A session is **final** once the close mark passed ``last + gap + grace``; a late event
  that changes it (extends it, or bridges it with the next) rewrites it as ``revision +
  1``.  It is **gone** once the user window an event would need to touch it is gone;
  it is dropped when MySQL confirmed its last row.
- A session's row is keyed by its start.  A start that stops being one (its session
  was absorbed by a bridging event, or an out-of-order event moved the start earlier)
  keeps a *marker* until MySQL confirms it: the row is rewritten final with zero counts
  and ``merged_into`` = the start of the session that holds its events now.  A marker is
  another absolute version of the row, so it keeps the sinks' at-least-once rules (a
  DELETE could be overtaken by a replayed upsert and resurrect the row), and
  ``SUM(count)`` over the table stays right.  A marker may point at a start that later
  became a marker itself: follow ``merged_into`` to the session.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from collector.aggregates import (
    Aggregate,
    Count,
    DistinctValues,
    Min,
    Sum,
    Truncated,
    WindowSpec,
)
from collector.aggregates.configured import EVENTS
from collector.aggregates.fields import DistinctCount
from collector.engine.specs import EXTRA, Specs
from collector.sinks import Row

KIND = "g"
SEP = "|"
NEVER = 2**62

Entry = dict[str, Any]
State = dict[str, Any]


def session_key(table: str, user_id: str) -> str:
    return f"{KIND}{SEP}{table}{SEP}{user_id}"


@dataclass(frozen=True, slots=True)
class Due:
    """When an entry needs the flusher without a change of its own: the close mark at
    which a session becomes final, and the stream time / highest close mark at which a
    pane or a session is gone."""

    close: int
    st: int
    ret: int

    def reached(self, mark: int, st: int, ret: int) -> bool:
        return mark >= self.close or st >= self.st or ret >= self.ret


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """One session-window aggregate over the per-user tumbling windows (``pane``)."""

    name: str
    defn: Aggregate
    spec: WindowSpec
    pane: WindowSpec
    expires_ms: int
    #: measures a new pane value adds to (the rest merge idempotently)
    additive: tuple[str, ...] = ()
    #: whether a session's row is updated from its last one and the changed panes
    #: (every measure additive or idempotent), instead of merging all its panes again
    incremental: bool = False
    #: state keys holding lists or dicts (copied with the state: folds and merges
    #: change them in place)
    lists: tuple[str, ...] = ()
    dicts: tuple[str, ...] = ()
    #: the state key counting a session's events (how a flush sees it changed)
    count: str = "count"
    #: a configured session: its panes are the user windows' ``agg[EXTRA][name]``
    extra: bool = False
    #: user_sessions while configured sessions exist: a pane copied from a user window
    #: leaves their states (``agg[EXTRA]``) out
    strip: bool = False

    def copy(self, agg: Mapping[str, Any]) -> State:
        out = dict(agg)
        if self.strip:
            out.pop(EXTRA, None)
        for name in self.lists:
            out[name] = list(out[name])
        for name in self.dicts:
            out[name] = dict(out[name])
        return out

    def pane_of(self, agg: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """This aggregate's state in a user window's ``agg`` (not copied); None when the
        window has none (a configured session's, for a window from before it was
        configured, or that counted no event since)."""
        if not self.extra:
            return agg
        states = agg.get(EXTRA)
        return None if states is None else states.get(self.name)

    @classmethod
    def of(cls, specs: Specs, defn: Aggregate) -> SessionPlan:
        additive = tuple(m.name for m in defn.measures if isinstance(m, Count | Sum))
        incremental = all(isinstance(m, Count | Sum | Min | DistinctValues | Truncated
                                     | DistinctCount)
                          for m in defn.measures)  # Min: also Max, FirstTs, LastTs
        empty = defn.new()
        lists = tuple(k for k, v in empty.items() if isinstance(v, list))
        dicts = tuple(k for k, v in empty.items() if isinstance(v, dict))
        extra = defn.configured
        return cls(defn.name, defn.bound(specs.max_user_types), specs.for_table(defn.name),
                   specs.user, specs.expires_ms, additive, incremental, lists, dicts,
                   EVENTS if extra else "count", extra, bool(specs.extra) and not extra)

    @property
    def gap(self) -> int:
        return self.spec.size_ms

    def new_entry(self, user_id: str, partition: int) -> Entry:
        return {"kind": KIND, "table": self.name, "partition": partition, "key": [user_id],
                "panes": {}, "pieces": [], "rows": {}, "dead": []}

    def _pane_gone(self, ws: int, st: int, ret: int) -> bool:
        """The user window at ``ws`` takes no event any more (Specs.is_gone's rule)."""
        return self.pane.is_late(ws, st) or ws + self.expires_ms <= ret

    def _reach(self, last: int) -> int:
        """Start of the newest user window an event touching a session ending at
        ``last`` may fall in (an event at ``last + gap - 1``)."""
        return self.pane.newest_start(last + self.gap - 1)

    # ------------------------------------------------------------------ panes

    def chain(self, parts: list[State]) -> list[State]:
        """Sessions of time-ordered, non-overlapping parts (panes or pieces): a part
        starting less than a gap after the previous one's last event continues it."""
        out: list[State] = []
        for part in parts:
            if out and part["first_ts"] - out[-1]["last_ts"] < self.gap:
                self.defn.merge(out[-1], part)
            else:
                out.append(self.copy(part))
        return out

    def compact(self, entry: Entry, st: int, ret: int) -> list[str]:
        """Fold panes no event can reach into ``pieces`` (oldest first, and panes go in
        start order); the remaining pane starts, oldest first."""
        panes: dict[str, State] = entry["panes"]
        order = sorted(panes, key=int)
        done = 0
        while done < len(order) and self._pane_gone(int(order[done]), st, ret):
            done += 1
        if done:
            entry["pieces"] = self.chain([*entry["pieces"],
                                          *(panes.pop(ws) for ws in order[:done])])
        return order[done:]

    def sessions(self, entry: Entry) -> list[State]:
        panes = entry["panes"]
        ordered = [panes[ws] for ws in sorted(panes, key=int)]
        return self.chain([*entry["pieces"], *ordered])

    # ------------------------------------------------------------------ flush

    def row(self, entry: Entry, agg: State, final: bool, revision: int) -> Row:
        return Row(table=self.name, window_start_ms=agg["first_ts"],
                   window_seconds=self.spec.seconds, key=(entry["key"][0],),
                   values=self.defn.row_values(agg), final=final,
                   latest_event_ms=agg["latest"], revision=revision)

    def marker_row(self, entry: Entry, marker: Mapping[str, Any]) -> Row:
        agg = self.defn.new()
        agg["first_ts"] = agg["last_ts"] = start = marker["s"]
        values = {**self.defn.row_values(agg), "merged_into": marker["into"]}
        return Row(table=self.name, window_start_ms=start, window_seconds=self.spec.seconds,
                   key=(entry["key"][0],), values=values, final=True, latest_event_ms=0,
                   revision=marker["rev"])

    def flush(self, entry: Entry, mark: int, st: int, ret: int, resend: bool,
              confirmed: Callable[[int], int | None],
              updated: Mapping[str, State | None] | None = None) -> tuple[list[Row], Due]:
        """Rows to write for ``entry`` (changed or newly final sessions, all of them on
        ``resend``; markers for starts that stopped being sessions) and when it is due
        next.  ``updated``: the panes copied in since the last flush, by start, with
        their previous value (None: new).  Sessions
        are delimited on event times alone; only those that may need a row are merged
        (the hot path: one user's newest session).  Drops the oldest sessions whose last
        row MySQL confirmed (``confirmed(start)``: its revision, -1 for a marker) and
        that nothing can change.  Updates ``entry`` in place."""
        updated = updated or {}
        before = entry["panes"].keys() & updated.keys()
        order = self.compact(entry, st, ret)
        panes, pieces = entry["panes"], entry["pieces"]
        parts: list[State] = [*pieces, *(panes[ws] for ws in order)]
        # a pane updated and compacted in one go makes the pieces fresh
        stale = bool(before) and not before <= panes.keys()
        fresh = [stale] * len(pieces) + [ws in updated for ws in order]
        groups: list[list[int]] = []  # [start, last, first part, end part]
        for n, part in enumerate(parts):
            if groups and part["first_ts"] - groups[-1][1] < self.gap:
                groups[-1][1], groups[-1][3] = part["last_ts"], n + 1
            else:
                groups.append([part["first_ts"], part["last_ts"], n, n + 1])
        out: list[Row] = []
        rows: dict[str, dict[str, Any]] = entry["rows"]  # start -> what was written there
        absorbed: set[int] = set()
        if len(rows) > len(groups) or any(str(g[0]) not in rows for g in groups):
            absorbed = self._moved(entry, groups)
        lateness = self.pane.size_ms + self.pane.lateness_ms
        close = due_st = due_ret = NEVER
        for ws in order:
            due_st = min(due_st, int(ws) + lateness)
            due_ret = min(due_ret, int(ws) + self.expires_ms)
        dropped, prefix = -1, True
        for start, last, lo, hi in groups:
            written = rows.get(str(start))
            reach = self._pane_gone(self._reach(last), st, ret)
            final = reach or self.spec.is_closed(last, mark) or bool(written and written["fin"])
            if resend or written is None or (not written["fin"] and final) or any(fresh[lo:hi]):
                known = written.get("agg") if written else None
                if known is None or resend or stale or start in absorbed:
                    agg = self.copy(parts[lo])  # whole: new, moved, merged or restarted
                    for part in parts[lo + 1:hi]:
                        self.defn.merge(agg, part)
                else:  # the parts of its last row, some panes updated since: add those
                    agg = known  # ours alone (rows[start]), updated in place
                    first = max(lo - len(pieces), 0)
                    for ws in order[first:max(hi - len(pieces), first)]:
                        if ws in updated:
                            self._update(agg, panes[ws], updated[ws])
                prev: dict[str, Any] = written or {"fin": False, "rev": 0, "n": -1, "last": -1}
                changed = (prev["n"], prev["last"]) != (agg[self.count], last)
                if changed or resend or (final and not prev["fin"]):
                    rev = prev["rev"] + 1 if (prev["fin"] and final and changed) else prev["rev"]
                    out.append(self.row(entry, agg, final, rev))
                    prev = {"fin": prev["fin"] or final, "rev": rev}
                rows[str(start)] = {"fin": prev["fin"], "rev": prev["rev"], "n": agg[self.count],
                                    "last": last, "agg": agg if self.incremental else None}
            elif prefix and reach and confirmed(start) == written["rev"]:
                dropped = last  # its last row is in MySQL: nothing can change it
                del rows[str(start)]
                continue
            prefix = False
            if not rows[str(start)]["fin"]:
                close = min(close, last + self.gap + self.spec.grace_ms)
            reach_ws = self._reach(last)
            due_st = min(due_st, reach_ws + lateness)
            due_ret = min(due_ret, reach_ws + self.expires_ms)
        if dropped >= 0:  # the oldest sessions, gone: made of pieces only
            entry["pieces"] = [p for p in pieces if p["first_ts"] > dropped]
        out += self._markers(entry, {g[0] for g in groups}, resend, confirmed)
        return out, Due(close, due_st, due_ret)

    def _moved(self, entry: Entry, groups: list[list[int]]) -> set[int]:
        """Starts written before that are no session now become markers (into the
        session that holds their time); their finality and revision carry over.  The
        sessions that took them in (merge those whole)."""
        rows: dict[str, dict[str, Any]] = entry["rows"]
        starts = {str(g[0]) for g in groups}
        absorbed = set()
        for was in [w for w in rows if w not in starts]:
            into = next((g[0] for g in groups if g[0] <= int(was) <= g[1]), None)
            old = rows.pop(was)
            if into is None:
                continue
            absorbed.add(into)
            holder = rows.setdefault(str(into), {"fin": False, "rev": 0, "n": -1, "last": -1})
            holder["fin"] = holder["fin"] or old["fin"]
            holder["rev"] = max(holder["rev"], old["rev"])
            entry["dead"].append({"s": int(was), "into": into, "sent": False,
                                  "rev": old["rev"] + 1 if old["fin"] else 0})
        return absorbed

    def _update(self, agg: State, pane: State, old: State | None) -> None:
        """``agg`` with one pane's new value instead of its ``old`` one: a user window
        only grows, so idempotent measures merge it again and additive ones add the
        difference."""
        self.defn.merge(agg, pane)
        if old is not None:
            for name in self.additive:
                agg[name] -= old[name]

    def _markers(self, entry: Entry, starts: set[int], resend: bool,
                 confirmed: Callable[[int], int | None]) -> list[Row]:
        out, kept = [], []
        for marker in entry["dead"]:
            if marker["s"] in starts:
                continue  # a session starts there again: its row replaces the marker
            if marker["sent"] and not resend and confirmed(marker["s"]) == -1:
                continue
            if not marker["sent"] or resend:
                marker["sent"] = True
                out.append(self.marker_row(entry, marker))
            kept.append(marker)
        entry["dead"] = kept
        return out

    @staticmethod
    def empty(entry: Entry) -> bool:
        return not entry["panes"] and not entry["pieces"] and not entry["dead"]
