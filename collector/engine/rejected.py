"""Rows a sink refused for good (``sink_rejected``): dead-lettered once, then released.

A refused row is never retried against the sink.  Its dead letter is awaited until the
broker acknowledged it (the output retries a failing produce by itself); only then is
the row accounted for, so a user window's state may be deleted.  Until then the state
stays, and a worker that dies first writes (and dead-letters) the row again after
recovery.  The same refused row (same table, key, window, revision and values) is
dead-lettered once per worker, however often it is written again.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from collector.models import DEADLETTER_REASON_HEADER, Reason, dead_letter_for_event
from collector.sinks import Row

log = logging.getLogger(__name__)

#: send(payload, headers) -> ack future; spawn(coroutine) runs it in the background
SendDeadLetter = Callable[[bytes, list[tuple[str, bytes]]], Awaitable[Awaitable[Any]]]

#: refused rows remembered for the "once" rule (oldest forgotten first)
REMEMBERED = 10_000


@dataclass
class RejectedRows:
    """The sinks' ``on_rejected`` callback."""

    send: SendDeadLetter
    #: rows now accounted for (their dead letter is acked): their state may go
    release: Callable[[list[Row]], None]
    spawn: Callable[[Awaitable[None]], Any]
    #: called once per acked dead letter (the metric)
    on_dead_lettered: Callable[[], None] = lambda: None
    clock: Callable[[], float] = time.time
    seen: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    #: dead letters handed to the producer and not acknowledged yet
    in_flight: int = 0

    def __call__(self, row: Row, reason: str) -> None:
        event = {"table": row.table, "window_start_ms": row.window_start_ms,
                 "window_seconds": row.window_seconds, "key": list(row.key),
                 "values": dict(row.values), "final": row.final, "revision": row.revision}
        ident = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
        if ident in self.seen:
            return  # dead-lettered (or on its way) already
        self.seen[ident] = None
        while len(self.seen) > REMEMBERED:
            self.seen.popitem(last=False)
        payload = dead_letter_for_event(
            Reason.SINK_REJECTED, event, [{"loc": row.table, "msg": reason}],
            source="sink", topic=row.table, partition=-1, offset=-1,
            received_at_ms=int(self.clock() * 1000),
        )
        self.in_flight += 1
        self.spawn(self._deliver(ident, row, payload))

    async def _deliver(self, ident: bytes, row: Row, payload: bytes) -> None:
        headers = [(DEADLETTER_REASON_HEADER, Reason.SINK_REJECTED.value.encode())]
        try:
            await (await self.send(payload, headers))
        except BaseException:
            # not acked (shutdown, or a produce error the output gave up on): keep the
            # state, and let a later write of the row dead-letter it again
            self.seen.pop(ident, None)
            log.warning("dead letter of a sink-rejected %s row not acknowledged; its "
                        "state is kept", row.table)
            raise
        finally:
            self.in_flight -= 1
        self.on_dead_lettered()
        self.release([row])
