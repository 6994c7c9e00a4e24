"""The flush's session side: which users' sessions entries to bring up to date, and when.

A changed user window (a *pane*) reaches its user's sessions entry (engine/sessions.py)
at most every ``update_s`` seconds of wall-clock time: Beam's early firings.  Copying a
pane, re-chaining the user's sessions and writing the entry and its row cost about
40 µs per user, so doing it on every flush made ``user_sessions`` the costliest table
of the engine (docs/benchmarks.md); an open session's row is rewritten as often as a
dashboard of sessions needs, not once per flush.  Nothing waits longer than that:

- an entry that a close mark, a horizon or a confirmation makes due takes its user's
  waiting panes first, so a session never turns final without them;
- a user whose newest waiting pane could already close (the close mark is past its
  end + gap + grace: replayed or backfilled data, a quiet stream) is not kept waiting;
- a user window about to be deleted (gone, its last row in every sink) forces its
  user's update in the same flush, before the deletion;
- a partition that took no event since the previous flush has its users updated: the
  last events of a stream (or of a drained backlog) reach ``user_sessions`` within a
  flush interval or two, as they reach the other tables;
- after a start or a rebalance every user window is re-sent and copied at once, so the
  waiting list (memory only) is never needed to recover; a revoked partition's is
  dropped;
- the query API overlays the waiting panes (``live``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from collector.engine.aggregator import user_key
from collector.engine.sessions import SEP, Due, SessionPlan, session_key
from collector.engine.state import State
from collector.sinks import Row

#: (close mark, stream time, retired) of a partition, epoch ms
Marks = tuple[int, int, int]
#: (partition, user_id)
User = tuple[int, str]
Panes = dict[int, dict[str, Any]]


@dataclass
class SessionFlush:
    """Sessions entries of the owned partitions, their due times and waiting panes."""

    plans: dict[str, SessionPlan]
    state: State
    #: the aggregator's key -> partition index (sessions entries are ``g|`` keys in it)
    index: dict[str, int]
    #: seconds a changed pane may wait before its user's entry is updated (0: each flush)
    update_s: float = 0.0
    #: per sessions entry: start -> revision of the final row MySQL confirmed (-1: its
    #: marker), when it next needs a visit, and whether a confirmation asks for one now
    confirmed: dict[str, dict[int, int]] = field(default_factory=dict)
    due: dict[str, Due] = field(default_factory=dict)
    visit: set[str] = field(default_factory=set)
    #: sessions entries of owned partitions -> partition
    entries: dict[str, int] = field(default_factory=dict)
    #: users with panes not yet copied: since when, and the panes' starts
    pending: dict[User, tuple[float, set[int]]] = field(default_factory=dict)
    #: this flush: panes to copy at once (re-sent ones), users that must not wait
    _now: dict[User, Panes] = field(default_factory=dict)
    _forced: set[User] = field(default_factory=set)
    #: a pane starting this long before the close mark may be in a final session
    _closes_ms: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._closes_ms = min((p.pane.size_ms + p.gap + p.spec.grace_ms
                               for p in self.plans.values()), default=0)

    def reset(self) -> None:
        """Before a re-index: every user window is about to be re-sent (and copied)."""
        self.entries.clear()
        self.due.clear()
        self.pending.clear()
        self._now.clear()
        self._forced.clear()

    def track(self, key: str, partition: int) -> None:
        self.entries[key] = partition

    def forget(self, key: str) -> None:
        self.due.pop(key, None)
        self.confirmed.pop(key, None)
        self.entries.pop(key, None)

    def on_row_written(self, row: Row) -> None:
        """A final session row or marker MySQL confirmed: the entry may drop it."""
        key = session_key(row.table, row.key[0])
        marker = row.values.get("merged_into") is not None
        self.confirmed.setdefault(key, {})[row.window_start_ms] = (
            -1 if marker else row.revision)
        if marker:
            self.visit.add(key)

    def changed(self, partition: int, user_id: str, ws: int, agg: dict[str, Any],
                now: float, *, at_once: bool) -> None:
        """A user window changed (``at_once``: re-sent after a start or rebalance)."""
        user = (partition, user_id)
        if at_once or self.update_s <= 0:
            self._now.setdefault(user, {})[ws] = agg
            return
        waiting = self.pending.get(user)
        if waiting is None:
            self.pending[user] = (now, {ws})
        else:
            waiting[1].add(ws)

    def needed(self, partition: int, user_id: str) -> None:
        """One of the user's windows is about to be deleted: copy what waits now."""
        if (partition, user_id) in self.pending:
            self._forced.add((partition, user_id))

    def flush(self, owned: Collection[int], now: float, marks_of: Callable[[int], Marks],
              resend: Collection[str], rows: list[Row],
              to_delete: list[tuple[int, str]], quiet: Collection[int] = ()) -> None:
        """Update the entries of users whose panes are due, or whose entry is.

        ``quiet``: partitions that took no event since the previous flush.  Their waiting
        users are updated now: the interval saves rewrites while events keep coming, and
        once they stop there is nothing to save (issue 17: after the last event of a
        backlog, ``user_sessions`` rows came up to 60 s after every other table's).
        """
        users, self._now = self._now, {}
        for user, (since, starts) in list(self.pending.items()):
            if user[0] not in owned:
                del self.pending[user]
            elif (user in users or user in self._forced or now - since >= self.update_s
                    or user[0] in quiet
                    or marks_of(user[0])[0] >= max(starts) + self._closes_ms):
                self._take(user, users.setdefault(user, {}))
        self._forced.clear()
        for key, partition in list(self.entries.items()):
            if partition not in owned:
                continue
            user = (partition, key.split(SEP, 2)[2])
            if user in users:
                continue
            due = self.due.get(key)
            if (key not in resend and key not in self.visit and due is not None
                    and not due.reached(*marks_of(partition))):
                continue  # most users, most flushes: no store read
            users[user] = {}
            if user in self.pending:  # never final without the panes that wait
                self._take(user, users[user])
        for (partition, user_id), panes in users.items():
            for table, plan in self.plans.items():
                key = session_key(table, user_id)
                entry = self.state.get(partition, key)
                if entry is None:
                    if not any(plan.pane_of(agg) is not None for agg in panes.values()):
                        self.index.pop(key, None)
                        self.entries.pop(key, None)
                        self.due.pop(key, None)
                        continue
                    entry = plan.new_entry(user_id, partition)
                updated: dict[str, dict[str, Any] | None] = {}
                for ws, agg in panes.items():
                    pane = plan.pane_of(agg)
                    if pane is None:  # no event of this aggregate in that window
                        continue
                    updated[str(ws)] = entry["panes"].get(str(ws))
                    entry["panes"][str(ws)] = plan.copy(pane)
                self.index[key] = self.entries[key] = partition
                self._flush_entry(key, partition, plan, entry, marks_of(partition),
                                  key in resend, rows, to_delete, updated)

    def live(self, partition: int, table: str, user_id: str) -> dict[str, Any] | None:
        """The user's sessions entry with its waiting panes in (for queries; not kept)."""
        entry = self.state.get(partition, session_key(table, user_id))
        waiting = self.pending.get((partition, user_id))
        if waiting is None:
            return entry
        plan = self.plans[table]
        view = dict(entry) if entry is not None else plan.new_entry(user_id, partition)
        view["panes"] = dict(view["panes"])
        for ws in waiting[1]:
            held = self.state.get(partition, user_key(user_id, ws))
            pane = None if held is None else plan.pane_of(held["agg"])
            if pane is not None:
                view["panes"][str(ws)] = pane
        return view

    def _take(self, user: User, into: Panes) -> None:
        """Move the user's waiting panes into ``into``, at their current values."""
        _, starts = self.pending.pop(user)
        partition, user_id = user
        for ws in starts:
            if ws not in into:
                held = self.state.get(partition, user_key(user_id, ws))
                if held is not None:
                    into[ws] = held["agg"]

    def _flush_entry(self, key: str, partition: int, plan: SessionPlan,
                     entry: dict[str, Any], marks: Marks, resend: bool, rows: list[Row],
                     to_delete: list[tuple[int, str]],
                     updated: dict[str, dict[str, Any] | None]) -> None:
        self.visit.discard(key)
        mark, st, ret = marks
        confirmed = self.confirmed.get(key, {})
        out, due = plan.flush(entry, mark, st, ret, resend, confirmed.get, updated)
        for row in out:
            confirmed.pop(row.window_start_ms, None)  # a newer row supersedes it
        rows.extend(out)
        if plan.empty(entry):
            to_delete.append((partition, key))
            return
        self.state.set(partition, key, entry)
        if confirmed:
            live = {int(s) for s in entry["rows"]} | {m["s"] for m in entry["dead"]}
            for start in [s for s in confirmed if s not in live]:
                del confirmed[start]
        self.due[key] = due


__all__ = ["SessionFlush"]
