"""Event-time windows: the arithmetic every aggregate shares, and the window kinds a
definition names (their sizes come from settings, so operators tune them, not code)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from collector.config import Settings

WindowKind = Literal["tumbling", "hopping", "session"]


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """A tumbling (step == size), hopping or session window, in milliseconds.

    A session window (``session``) is per key and data-driven: each event opens a
    proto-window ``[ts, ts + gap)`` (``size_ms`` is the gap, ``step_ms`` 1 ms) and
    overlapping ones merge, as in Beam's ``Sessions``.  So ``is_closed(last, mark)`` and
    ``is_late(ts, st)`` hold for sessions too, given the session's last event time or
    the event's own time as ``start`` (collector/engine/sessions.py).

    Two event-time horizons past a window's end (Beam's model): ``grace_ms`` until its
    row is first written as final (the close mark passed it), ``lateness_ms`` until it
    stops accepting events (the slot's stream time passed it).  In between, a late event
    updates the window and its row is written again as a new revision.
    """

    size_ms: int
    step_ms: int
    grace_ms: int
    lateness_ms: int = -1  # -1: the grace (no late updates)
    session: bool = False

    def __post_init__(self) -> None:
        if self.lateness_ms < self.grace_ms:
            object.__setattr__(self, "lateness_ms", self.grace_ms)

    @classmethod
    def tumbling(cls, size_s: int, grace_s: int, lateness_s: int = -1) -> WindowSpec:
        return cls(size_s * 1000, size_s * 1000, grace_s * 1000, lateness_s * 1000)

    @classmethod
    def hopping(cls, size_s: int, step_s: int, grace_s: int, lateness_s: int = -1) -> WindowSpec:
        return cls(size_s * 1000, step_s * 1000, grace_s * 1000, lateness_s * 1000)

    @classmethod
    def sessions(cls, gap_s: int, grace_s: int, lateness_s: int = -1) -> WindowSpec:
        return cls(gap_s * 1000, 1, grace_s * 1000, lateness_s * 1000, session=True)

    @property
    def seconds(self) -> int:
        return self.size_ms // 1000

    def starts(self, ts: int) -> range:
        """Starts of every window containing ``ts``, oldest first."""
        newest = ts - ts % self.step_ms
        oldest = newest - self.size_ms + self.step_ms
        return range(oldest, newest + 1, self.step_ms)

    def newest_start(self, ts: int) -> int:
        return ts - ts % self.step_ms

    def end(self, start: int) -> int:
        return start + self.size_ms

    def is_closed(self, start: int, closed_through: int) -> bool:
        """Closed (its row final) once the close mark passed window end + grace."""
        return start + self.size_ms + self.grace_ms <= closed_through

    def is_late(self, start: int, stream_time: int) -> bool:
        """Too late for any event once stream time passed window end + allowed lateness."""
        return start + self.size_ms + self.lateness_ms <= stream_time


def window_specs(settings: Settings) -> dict[WindowKind, WindowSpec]:
    """The spec of each window kind, from ``windows.*`` settings."""
    w = settings.windows
    late = w.allowed_lateness_seconds
    return {
        "tumbling": WindowSpec.tumbling(w.tumbling_seconds, w.grace_seconds, late),
        "hopping": WindowSpec.hopping(w.hopping_size_seconds, w.hopping_step_seconds,
                                      w.grace_seconds, late),
        "session": WindowSpec.sessions(w.session_gap_seconds, w.grace_seconds, late),
    }
