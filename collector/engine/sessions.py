"""Session windows per user: fold, merge, emit and expire a user's sessions.

A user's sessions of one aggregate live in one state entry (``g|table|user_id``, in the
user's partition, changelogged like the user windows), sorted by start.  Each event
opens a proto-window ``[ts, ts + gap)``; sessions it touches (``first - gap < ts <
last + gap``) merge, as in Beam's ``Sessions``, so a late event can bridge two sessions
into one.  With the spec of :meth:`WindowSpec.sessions` (size = gap):

- an event is **late** when ``ts + gap + allowed lateness <= stream time`` (its own
  proto-window is past the allowed lateness), or its state would have expired;
- a session is **final** (its row written ``final``) once the close mark passed
  ``last + gap + grace``; a later change rewrites it as ``revision + 1``;
- a session is **gone** (dropped once its last final row is confirmed by MySQL) when no
  event that is not late could touch it any more.

The MySQL row of a session is keyed by its start.  When a session stops existing under
the start its row was written with (absorbed by a bridging event, or its start moved
earlier by an out-of-order event), the entry keeps a *marker* for that start until MySQL
confirms it: the row is rewritten final with ``merged_into`` = the start of the session
holding its events now and zero counts.  A marker is another absolute version of the
row, so it keeps the sinks' at-least-once rules (a DELETE could be overtaken by a
replayed upsert and resurrect the row), and ``SUM(count)`` over the table stays right.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from collector.aggregates import Aggregate, WindowSpec
from collector.aggregates.definition import Fold
from collector.engine.specs import Specs
from collector.sinks import Row

KIND = "g"
SEP = "|"

Entry = dict[str, Any]
Session = dict[str, Any]


def session_key(table: str, user_id: str) -> str:
    return f"{KIND}{SEP}{table}{SEP}{user_id}"


def start_of(session: Mapping[str, Any]) -> int:
    start: int = session["agg"]["first_ts"]
    return start


def end_of(session: Mapping[str, Any]) -> int:
    end: int = session["agg"]["last_ts"]
    return end


@dataclass(frozen=True, slots=True)
class Due:
    """When an entry needs the flusher without a change of its own: the close mark at
    which a session becomes final, and the horizon (``max(st - lateness horizon, ret -
    expires)``) at which one is gone."""

    close: int
    gone: int

    def reached(self, mark: int, cut: int) -> bool:
        return mark >= self.close or cut >= self.gone


NEVER = 2**62


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """One session-window aggregate, with the spec and fold chosen at start-up."""

    name: str
    defn: Aggregate
    spec: WindowSpec
    fold: Fold
    expires_ms: int

    @classmethod
    def of(cls, specs: Specs, defn: Aggregate) -> SessionPlan:
        bound = defn.bound(specs.max_user_types)
        return cls(defn.name, bound, specs.for_table(defn.name), bound.compile(),
                   specs.expires_ms)

    @property
    def gap(self) -> int:
        return self.spec.size_ms

    @property
    def horizon(self) -> int:
        """``ts <= st - horizon``: the event's proto-window is past the allowed lateness."""
        return self.spec.size_ms + self.spec.lateness_ms

    def cut(self, st: int, ret: int) -> int:
        """Events at or before this time are late (or their state expired)."""
        return max(st - self.horizon, ret - self.expires_ms)

    def is_late(self, ts: int, st: int, ret: int) -> bool:
        return ts <= self.cut(st, ret)

    def new_entry(self, user_id: str, partition: int) -> Entry:
        return {"kind": KIND, "table": self.name, "partition": partition, "key": [user_id],
                "offs": {}, "ss": [], "dead": []}

    # ---------------------------------------------------------------- the fold

    def add(self, entry: Entry, event: Mapping[str, Any], ts: int) -> None:
        """Count one event: into the session(s) it touches, merged, or a new one."""
        sessions: list[Session] = entry["ss"]
        gap = self.gap
        if sessions:  # the common case: in order, within the newest session's gap
            newest = sessions[-1]
            agg = newest["agg"]
            if agg["first_ts"] <= ts < agg["last_ts"] + gap:  # touches no older session
                self.fold(agg, event, ts)
                newest["ch"] = True
                return
        touching = [i for i, s in enumerate(sessions)
                    if s["agg"]["first_ts"] - gap < ts < s["agg"]["last_ts"] + gap]
        if touching:
            self._merge(entry, touching, event, ts)
            return
        session: Session = {"agg": self.defn.new(), "fin": False, "rev": 0, "sent": False,
                            "ch": True}
        self.fold(session["agg"], event, ts)
        at = next((i for i, s in enumerate(sessions) if start_of(s) > ts), len(sessions))
        sessions.insert(at, session)

    def _merge(self, entry: Entry, touching: list[int], event: Mapping[str, Any],
               ts: int) -> None:
        """Fold ``event`` into the earliest touched session, absorbing the others; a
        start that a written row no longer stands for gets a marker."""
        sessions: list[Session] = entry["ss"]
        keep = sessions[touching[0]]
        old = {start_of(keep): keep}
        for i in touching[1:]:
            other = sessions[i]
            old[start_of(other)] = other
            self.defn.merge(keep["agg"], other["agg"])
            keep["fin"] = keep["fin"] or other["fin"]
            keep["rev"] = max(keep["rev"], other["rev"])
        for i in reversed(touching[1:]):
            del sessions[i]
        self.fold(keep["agg"], event, ts)
        keep["ch"] = True
        start = start_of(keep)
        dead: list[dict[str, Any]] = entry["dead"]
        for marker in dead:
            if marker["into"] in old:
                marker["into"] = start
        for was, session in old.items():
            if was != start and session["sent"]:
                dead.append({"s": was, "into": start, "sent": False,
                             "rev": session["rev"] + 1 if session["fin"] else 0})
        if start not in old:
            keep["sent"] = False  # its row is a new one
        entry["dead"] = [m for m in dead if m["s"] != start]

    # ---------------------------------------------------------------- the flush

    def row(self, entry: Entry, session: Session, final: bool) -> Row:
        agg = session["agg"]
        return Row(table=self.name, window_start_ms=agg["first_ts"],
                   window_seconds=self.spec.seconds, key=(entry["key"][0],),
                   values=self.defn.row_values(agg), final=final,
                   latest_event_ms=agg["latest"], revision=session["rev"])

    def marker_row(self, entry: Entry, marker: Mapping[str, Any]) -> Row:
        agg = self.defn.new()
        agg["first_ts"] = agg["last_ts"] = start = marker["s"]
        values = {**self.defn.row_values(agg), "merged_into": marker["into"]}
        return Row(table=self.name, window_start_ms=start, window_seconds=self.spec.seconds,
                   key=(entry["key"][0],), values=values, final=True, latest_event_ms=0,
                   revision=marker["rev"])

    def flush(self, entry: Entry, mark: int, st: int, ret: int, resend: bool,
              confirmed: Callable[[int], int | None]) -> tuple[list[Row], bool]:
        """Rows to write for ``entry`` (changed, newly final, or all on ``resend``), and
        whether the entry changed.  ``confirmed(start)`` is the revision of the final
        row at ``start`` that MySQL confirmed (None: none), or for a marker -1."""
        rows: list[Row] = []
        changed = False
        cut = self.cut(st, ret)
        kept: list[Session] = []
        for session in entry["ss"]:
            last = end_of(session)
            gone = last + self.gap <= cut
            final = gone or session["fin"] or self.spec.is_closed(last, mark)
            if session["ch"] or resend or (final and not session["fin"]):
                if final and session["fin"] and session["ch"]:
                    session["rev"] += 1
                session["fin"] = session["fin"] or final
                session["ch"] = False
                session["sent"] = True
                rows.append(self.row(entry, session, final))
                changed = True
            elif gone and confirmed(start_of(session)) == session["rev"]:
                changed = True
                continue  # its last row is in MySQL: nothing can change it any more
            kept.append(session)
        entry["ss"] = kept
        markers = []
        for marker in entry["dead"]:
            if marker["sent"] and not resend and confirmed(marker["s"]) == -1:
                changed = True
                continue
            if not marker["sent"] or resend:
                marker["sent"] = True
                rows.append(self.marker_row(entry, marker))
                changed = True
            markers.append(marker)
        entry["dead"] = markers
        return rows, changed

    def due(self, entry: Entry) -> Due:
        """The next :class:`Due` of ``entry`` (after a flush visited it)."""
        close = gone = NEVER
        grace = self.spec.grace_ms
        for session in entry["ss"]:
            last = end_of(session)
            if not session["fin"]:
                close = min(close, last + self.gap + grace)
            gone = min(gone, last + self.gap)
        return Due(close, gone)

    @staticmethod
    def empty(entry: Entry) -> bool:
        return not entry["ss"] and not entry["dead"]
