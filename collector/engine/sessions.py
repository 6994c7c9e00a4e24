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

from collector.aggregates import Aggregate, WindowSpec
from collector.engine.specs import Specs
from collector.sinks import Row

KIND = "g"
SEP = "|"
NEVER = 2**62

Entry = dict[str, Any]
State = dict[str, Any]


def session_key(table: str, user_id: str) -> str:
    return f"{KIND}{SEP}{table}{SEP}{user_id}"


def copy_pane(agg: Mapping[str, Any]) -> State:
    """An independent copy of a user window's state (its lists are mutated in place)."""
    return {k: list(v) if isinstance(v, list) else v for k, v in agg.items()}


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

    @classmethod
    def of(cls, specs: Specs, defn: Aggregate) -> SessionPlan:
        return cls(defn.name, defn.bound(specs.max_user_types), specs.for_table(defn.name),
                   specs.user, specs.expires_ms)

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
                out.append(copy_pane(part))
        return out

    def compact(self, entry: Entry, st: int, ret: int) -> bool:
        """Fold panes no event can reach into ``pieces`` (oldest first); True if any."""
        panes: dict[str, State] = entry["panes"]
        done = sorted(int(ws) for ws in panes if self._pane_gone(int(ws), st, ret))
        if not done:
            return False
        entry["pieces"] = self.chain([*entry["pieces"], *(panes.pop(str(ws)) for ws in done)])
        return True

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
              confirmed: Callable[[int], int | None]) -> list[Row]:
        """Rows to write for ``entry``: changed or newly final sessions (all of them on
        ``resend``), markers for starts that stopped being sessions.  Drops sessions
        whose last row MySQL confirmed (``confirmed(start)``: its revision, -1 for a
        marker) and that nothing can change.  Updates ``entry`` in place."""
        self.compact(entry, st, ret)
        out: list[Row] = []
        rows: dict[str, dict[str, Any]] = entry["rows"]  # start -> what was written there
        sessions = self.sessions(entry)
        starts = {str(s["first_ts"]) for s in sessions}
        for was in [w for w in rows if w not in starts]:  # absorbed, or its start moved
            into = next((s["first_ts"] for s in sessions
                         if s["first_ts"] <= int(was) <= s["last_ts"]), None)
            old = rows.pop(was)
            if into is not None:
                # its revision and finality carry over to the session now holding it
                holder = rows.setdefault(str(into), {"fin": False, "rev": 0, "n": -1,
                                                     "last": -1})
                holder["fin"] = holder["fin"] or old["fin"]
                holder["rev"] = max(holder["rev"], old["rev"])
                entry["dead"].append({"s": int(was), "into": into, "sent": False,
                                      "rev": old["rev"] + 1 if old["fin"] else 0})
        dropped, prefix = -1, True
        for agg in sessions:
            start, last = agg["first_ts"], agg["last_ts"]
            written = rows.get(str(start))
            gone = self._pane_gone(self._reach(last), st, ret)
            final = gone or self.spec.is_closed(last, mark) or bool(written and written["fin"])
            changed = written is None or (written["n"], written["last"]) != (agg["count"], last)
            if changed or resend or (final and not written["fin"]):  # type: ignore[index]
                prev: dict[str, Any] = written or {"fin": False, "rev": 0}
                rev = prev["rev"] + 1 if (prev["fin"] and final and changed) else prev["rev"]
                rows[str(start)] = {"fin": prev["fin"] or final, "rev": rev, "n": agg["count"],
                                    "last": last}
                out.append(self.row(entry, agg, final, rev))
                prefix = False
            elif prefix and gone and confirmed(start) == written["rev"]:  # type: ignore[index]
                dropped = last  # its last row is in MySQL: nothing can change it
                del rows[str(start)]
                continue
            prefix = False
        if dropped >= 0:  # the oldest sessions, gone: made of pieces only
            entry["pieces"] = [p for p in entry["pieces"] if p["first_ts"] > dropped]
        kept = []
        for marker in entry["dead"]:
            if marker["s"] in (int(s) for s in starts):
                continue  # a session starts there again: its row replaces the marker
            if marker["sent"] and not resend and confirmed(marker["s"]) == -1:
                continue
            if not marker["sent"] or resend:
                marker["sent"] = True
                out.append(self.marker_row(entry, marker))
            kept.append(marker)
        entry["dead"] = kept
        return out

    def due(self, entry: Entry) -> Due:
        """The next :class:`Due` of ``entry`` (after a flush visited it)."""
        close = st = ret = NEVER
        lateness = self.pane.size_ms + self.pane.lateness_ms
        for ws in entry["panes"]:
            st = min(st, int(ws) + lateness)
            ret = min(ret, int(ws) + self.expires_ms)
        for agg in self.sessions(entry):
            last = agg["last_ts"]
            written = entry["rows"].get(str(agg["first_ts"]))
            if not (written and written["fin"]):
                close = min(close, last + self.gap + self.spec.grace_ms)
            reach = self._reach(last)
            st, ret = min(st, reach + lateness), min(ret, reach + self.expires_ms)
        return Due(close, st, ret)

    @staticmethod
    def empty(entry: Entry) -> bool:
        return not entry["panes"] and not entry["pieces"] and not entry["dead"]
