"""Fetch again the changelog records that Faust dropped while a table recovered.

Faust's ``Consumer.getmany`` drops the records it has already taken from the fetcher
when flow stopped meanwhile (a rebalance), then seeks the stream partitions back to
their committed offsets (``perform_seek``).  Changelog partitions have no committed
offset: their position stayed past the dropped records, so recovery waited for them
forever ("No event received for active tp ... since recovery start") and the worker
never served again.  Seen in CI and here, in about 1 failover test in 11: the survivor
took over partitions it had been the standby of, 79 records were fetched in the flow
gap, and it answered 503 for the test's 120 s.

After every ``perform_seek`` each changelog partition that recovery reads (active or
standby) whose fetch position is past the offset after the last one recovery has seen
goes back there.  Records fetched again that were only
waiting in the changelog queue are skipped by recovery (it ignores offsets it has seen).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from faust.types import TP

log = logging.getLogger(__name__)
#: seconds to wait for the fetch positions (each waits for an offset reset if pending)
POSITION_TIMEOUT = 10.0


def changelog_rewinds(recovery: Any, assigned: Collection[TP],
                      positions: Mapping[TP, int | None]) -> dict[TP, int]:
    """``{tp: offset}`` to seek to: changelog partitions fetched past what recovery has."""
    rewinds: dict[TP, int] = {}
    for tps, offsets in ((recovery.active_tps, recovery.active_offsets),
                         (recovery.standby_tps, recovery.standby_offsets)):
        for tp in tps:
            if tp not in assigned:
                continue
            seen = offsets.get(tp)
            resume_at = 0 if seen is None or seen < 0 else seen + 1
            position = positions.get(tp)
            if position is not None and position > resume_at:
                rewinds[tp] = resume_at
    return rewinds


async def rewind_changelogs(consumer: Any) -> dict[TP, int]:
    """Seek ``consumer``'s changelog partitions back to where recovery is (see above)."""
    app = consumer.app
    if not app.tables.changelog_topics:
        return {}
    recovery = app.tables.recovery
    assigned = set(consumer.assignment())
    reading = [tp for tp in (*recovery.active_tps, *recovery.standby_tps) if tp in assigned]
    if not reading:
        return {}
    position: Callable[[TP], Awaitable[int | None]] = consumer.position
    try:
        found = await asyncio.wait_for(
            asyncio.gather(*(position(tp) for tp in reading)), POSITION_TIMEOUT)
    except TimeoutError:
        log.warning("changelog positions unknown after %.0fs: not checked for records "
                    "dropped during recovery", POSITION_TIMEOUT)
        return {}
    rewinds = changelog_rewinds(recovery, assigned, dict(zip(reading, found, strict=True)))
    if rewinds:
        log.info("fetching %d changelog partitions again from where recovery is (their "
                 "fetch position was past it: records dropped, or still queued): %s",
                 len(rewinds),
                 ", ".join(f"{tp.topic}[{tp.partition}]@{off}"
                           for tp, off in sorted(rewinds.items())))
        await consumer.seek_wait(rewinds)
    return rewinds
