"""Offset commits that wait for the coalesced window state (FaustState ``coalesce``).

A commit says "everything before these offsets is done", and with coalescing the state
those records changed may still wait in memory.  So the commit stores and sends that
state first and waits for the changelog to have it.  The offsets to commit are chosen
*before* that wait: batches acked during it changed state the checkpoint may not hold,
and committing their offsets would skip them after a crash.

``CheckpointCommit._commit_tps`` is Faust's (faust-streaming 0.15:
``transport/consumer.py``) with the checkpoint between choosing the offsets and
committing them; the pin (``COMMIT_TPS_SHA`` in :mod:`collector.adapters.pins`) fails
CI when Faust's changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from faust.exceptions import ProducerSendError

log = logging.getLogger(__name__)

Checkpoint = Callable[[], Awaitable[None]]


async def checkpoint_all(app: Any) -> None:
    """Run every checkpoint the app has (``CollectorApp.state_checkpoints``), in order."""
    for checkpoint in getattr(app, "state_checkpoints", ()):
        await checkpoint()


async def checkpoint_before_handover(app: Any, limit_s: float) -> bool:
    """Checkpoint while partitions are being revoked, before the group moves them: the
    new owner's recovery then finds every value this worker computed.  Faust commits
    nothing when it revokes an assignment it already gave up, so without this the values
    waited for a commit that never came; written after the rebalance instead, they
    landed behind the new owner's recovery and rows came out short; dropped, a batch
    that finished after the drop acked events whose state was gone (both measured in
    tests/e2e/test_rebalance.py, stream mode).  Bounded by ``limit_s`` (an unreachable
    broker): False then, and the values are written without waiting."""
    try:
        await asyncio.wait_for(checkpoint_all(app), limit_s)
    except TimeoutError:
        log.warning("window state checkpoint before a rebalance not done after %.0fs: "
                    "going on (the broker slow or unreachable?)", limit_s)
        return False
    except Exception:
        log.exception("window state checkpoint before a rebalance failed")
        return False
    return True


class CheckpointCommit:
    """A mixin over Faust's consumer: every commit checkpoints the state first."""

    if TYPE_CHECKING:
        app: Any
        log: Any

        def _filter_committable_offsets(self, tps: Iterable[Any]) -> dict[Any, int]: ...
        async def _handle_attached(self, commit_offsets: Any) -> None: ...
        async def _commit_offsets(self, offsets: Any,
                                  start_new_transaction: bool = True) -> bool: ...
        async def crash(self, reason: BaseException) -> None: ...

    async def _commit_tps(self, tps: Iterable[Any], start_new_transaction: bool) -> bool:
        fenced = getattr(self, "fenced", None)
        if fenced is not None and fenced():  # frozen past its session: it owns nothing
            return False
        commit_offsets = self._filter_committable_offsets(tps)
        if commit_offsets:
            try:
                # send all messages attached to the new offset
                await self._handle_attached(commit_offsets)
                await checkpoint_all(self.app)
            except ProducerSendError as exc:
                await self.crash(exc)
            except Exception as exc:  # a changelog record refused: never commit past it
                self.log.error("window state checkpoint failed; not committing %d "
                               "partitions, the worker stops", len(commit_offsets),
                               exc_info=exc)
                await self.crash(exc)
            else:
                return await self._commit_offsets(
                    commit_offsets, start_new_transaction=start_new_transaction
                )
        return False


__all__ = ["Checkpoint", "CheckpointCommit", "checkpoint_all", "checkpoint_before_handover"]
