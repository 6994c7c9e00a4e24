"""One more flush shortly after the last events, for the sessions they left waiting.

A flush brings a user's ``user_sessions`` entry up to date at most every
``windows.session_update_seconds`` while events keep coming, and at once when the
user's partition took no event since the previous flush (engine/session_flush.py).
Without a flush of its own, "since the previous flush" is a whole flush interval: after
the last event of a drained backlog or of a stream that stops, the other tables are
written by the flush right after it, and ``user_sessions`` only by the next tick (the
bench's flush tail, issue 17: up to an interval plus the write, 4.5-6.2 s at 5 s).

So a flush that leaves users waiting arms one check ``delay_s`` later: if one of their
partitions took no event since that flush started, it flushes again (which finds it
quiet and takes its users, so a partition that stopped costs one follow-up).  Under
load an event arrives within the delay and the check costs a set scan; the interval
still spaces the rewrites while events keep coming.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class QuietFollowUp:
    """At most one armed check at a time; ``delay_s`` 0 turns it off."""

    delay_s: float
    #: did a partition with waiting users take no event since this time (the arming
    #: flush's start, wall clock)?
    is_quiet: Callable[[float], bool]
    flush: Callable[[], Awaitable[Any]]
    armed: bool = False
    #: follow-up flushes run (the checks that found events are not counted)
    flushes: int = 0
    #: start of a flush that ran while a check was armed: checked next if that one fails
    _later: float | None = None

    def after_flush(self, waiting: bool, since: float,
                    spawn: Callable[[Awaitable[Any]], Any]) -> None:
        """Called after every flush: ``waiting`` says whether users wait for sessions,
        ``since`` is when that flush began.  The check asks about that whole span, not
        about the time since the latest flush: a timer tick during the delay left a
        window of a tenth of a second, which a busy worker's batches often miss (5
        spurious follow-ups a minute at 50% load).  A flush during the delay is checked
        after it, if the first check found events: its own span may be the quiet one."""
        if self.delay_s <= 0 or not waiting:
            return
        if self.armed:
            self._later = since
            return
        self.armed = True  # also while its own flush runs: that one does not re-arm
        spawn(self._check(since))

    async def _check(self, since: float) -> None:
        try:
            while True:
                await asyncio.sleep(self.delay_s)
                if self.is_quiet(since):
                    self.flushes += 1
                    await self.flush()
                    break
                if self._later is None:
                    break
                since, self._later = self._later, None
        except Exception:  # the timer's next tick writes them instead
            log.exception("quiet follow-up flush failed")
        finally:
            self.armed = False
            self._later = None
