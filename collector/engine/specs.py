"""The aggregator's view of the aggregates: each one's window (by kind, from settings)
and the per-aggregate plan its hot path unpacks, chosen once at start-up."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from collector.aggregates import DEFINITIONS, Aggregate, WindowSpec, window_specs
from collector.aggregates.configured import configured_aggregates
from collector.aggregates.definition import Fold
from collector.aggregates.measures import DistinctValues
from collector.config import Settings


@dataclass(slots=True)
class Specs:
    """The window of each kind, from settings, the state horizons, and the aggregates
    (their definitions say which window kind each uses)."""

    tumbling: WindowSpec
    hopping: WindowSpec
    #: the session window (gap): the default is windows.session_gap_seconds' default
    session: WindowSpec = field(default_factory=lambda: WindowSpec.sessions(1800, 60, 3600))
    #: age of a window start, by its slot's close mark, after which its state is gone
    expires_ms: int = 7_200_000
    #: event time past a window's end during which repeated event ids are recognised
    dedupe_ms: int = 900_000
    #: distinct types a user window keeps
    max_user_types: int = 30
    aggregates: tuple[Aggregate, ...] = DEFINITIONS
    #: the per-user aggregate: final in the raw worker, and the event-id dedupe
    anchor: Aggregate = field(init=False, repr=False)
    #: the session-window aggregates (per user, folded by collector.engine.sessions)
    sessioned: tuple[Aggregate, ...] = field(init=False, repr=False)
    #: the session aggregates whose measures are not the anchor's (configured ones):
    #: each per-user window also folds their state, under ``agg[EXTRA][name]``; empty
    #: (and the per-user state unchanged) when none is configured
    extra: tuple[Aggregate, ...] = field(init=False, repr=False)
    _by_table: dict[str, WindowSpec] = field(init=False, repr=False)
    _defs: dict[str, Aggregate] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        kinds = {"tumbling": self.tumbling, "hopping": self.hopping, "session": self.session}
        self._defs = {a.name: a for a in self.aggregates}
        self._by_table = {a.name: kinds[a.window] if a.sizes is None else _own(a, kinds)
                          for a in self.aggregates}
        self.sessioned = tuple(a for a in self.aggregates if a.window == "session")
        self.extra = tuple(a for a in self.sessioned if a.configured)
        users = [a.name for a in self.aggregates if a.per_user and a.window != "session"]
        if len(users) != 1:
            raise ValueError(f"exactly one per-user aggregate is supported, got {users}")
        self.anchor = next(a for a in self.aggregates if a.name == users[0])
        for a in self.sessioned:  # built from the anchor's windows (engine/sessions.py)
            # the panes carry the anchor's measures, and a configured one's own (extra)
            if not a.per_user or (a.measures != self.anchor.measures and not a.configured):
                raise ValueError(f"{a.name}: a session window is per user, with the measures "
                                 f"of {self.anchor.name} (its sessions are chains of its "
                                 "windows) or, configured, measures its windows also fold")
            if a.configured and {"first_ts", "last_ts"} - set(a.new()):
                raise ValueError(f"{a.name}: a session's state needs first_ts and last_ts")
            if self._by_table[a.name].size_ms < self.user.size_ms:
                raise ValueError(f"{a.name}: the session gap must be at least the "
                                 f"{self.anchor.name} window ({self.user.seconds} s)")

    @classmethod
    def from_settings(cls, settings: Settings) -> Specs:
        """The built-in aggregates and, after them, those declared in ``aggregates.*``."""
        w = settings.windows
        kinds = window_specs(settings)
        return cls(
            kinds["tumbling"],
            kinds["hopping"],
            kinds["session"],
            expires_ms=w.expires_seconds * 1000,
            dedupe_ms=min(w.dedupe_seconds, w.allowed_lateness_seconds) * 1000,
            max_user_types=w.max_user_types,
            aggregates=(*DEFINITIONS, *configured_aggregates(settings)),
        )

    @property
    def by_name(self) -> dict[str, Aggregate]:
        return self._defs

    def definition(self, table: str) -> Aggregate:
        return self._defs[table]

    def for_table(self, table: str) -> WindowSpec:
        return self._by_table[table]

    @property
    def user(self) -> WindowSpec:
        """The window of the per-user aggregate."""
        return self._by_table[self.anchor.name]

    def is_gone(self, table: str, start: int, stream_time: int, retired: int) -> bool:
        """No event can update this window any more: too late for the slot's stream time,
        or its state expired (``retired``: the highest close mark the slot ever sent)."""
        return (self._by_table[table].is_late(start, stream_time)
                or start + self.expires_ms <= retired)


def _own(a: Aggregate, kinds: dict[str, WindowSpec]) -> WindowSpec:
    """The window of an aggregate with sizes of its own (a configured one), with its
    kind's grace and lateness."""
    assert a.sizes is not None
    kind = kinds[a.window]
    grace, late = kind.grace_ms // 1000, kind.lateness_ms // 1000
    if a.window == "session":
        return WindowSpec.sessions(a.sizes[0], grace, late)
    return WindowSpec.hopping(*a.sizes, grace, late)


#: the per-user window state key holding the configured session aggregates' states
EXTRA = "sessions"


def user_fold(specs: Specs, fold: Fold) -> Fold:
    """The per-user window's fold: the anchor's ``fold``, and when session aggregates
    are configured, each one's own fold into ``agg[EXTRA][name]`` (created on its first
    event: a window from before the aggregate was configured has none)."""
    extra = tuple((a.name, a.new, a.bound(specs.max_user_types).compile())
                  for a in specs.extra)
    if not extra:
        return fold

    def both(agg: dict[str, Any], event: Mapping[str, Any], ts: int) -> None:
        fold(agg, event, ts)
        states = agg.get(EXTRA)
        if states is None:
            states = agg[EXTRA] = {}
        for name, new, own in extra:
            state = states.get(name)
            if state is None:
                state = states[name] = new()
            own(state, event, ts)

    return both


#: what ``Aggregator._fold`` needs of one partial aggregate, unpacked once per event:
#: (name, hopping, size_ms + lateness_ms, step_ms, spec, key getter, fold)
Plan = tuple[str, bool, int, int, WindowSpec, Callable[[dict[str, Any]], Any], Fold]


def _key_getter(defn: Aggregate) -> Callable[[dict[str, Any]], Any]:
    """The key of an event: the value itself for a per-user aggregate (its one field),
    a tuple otherwise; C-level ``itemgetter`` where every field is required."""
    keys = defn.keys
    if any(k.get is not None for k in keys):  # a configured aggregate's fields
        getters = tuple(k.get or k.of for k in keys)
        if len(getters) == 1:
            (one,) = getters
            return lambda e: (one(e),)
        if len(getters) == 2:
            one, two = getters
            return lambda e: (one(e), two(e))
        return lambda e: tuple([get(e) for get in getters])
    if defn.per_user:
        if len(keys) != 1 or keys[0].default is not None:
            raise ValueError(f"{defn.name}: a per-user aggregate has one required key")
        return itemgetter(keys[0].name)
    if len(keys) > 1 and all(k.default is None for k in keys):
        return itemgetter(*(k.name for k in keys))
    if len(keys) == 2:
        (a, da), (b, db) = ((k.name, k.default) for k in keys)
        return lambda e: (e.get(a, da), e.get(b, db))
    return defn.key_of


def required_fields(aggregates: tuple[Aggregate, ...]) -> tuple[str, ...]:
    """Fields every event must have: ts, event_id, the per-user key, the other keys
    without a default, the fields of distinct-value measures."""
    names = ["ts", "event_id"]
    ordered = sorted(aggregates, key=lambda a: not a.per_user)
    names += [k.name for a in ordered for k in a.keys if k.default is None]
    names += [m.field for a in ordered for m in a.measures if isinstance(m, DistinctValues)]
    return tuple(dict.fromkeys(names))


def plan(specs: Specs, defn: Aggregate) -> Plan:
    spec = specs.for_table(defn.name)
    return (defn.name, spec.step_ms != spec.size_ms, spec.size_ms + spec.lateness_ms,
            spec.step_ms, spec, _key_getter(defn), defn.bound(specs.max_user_types).compile())
