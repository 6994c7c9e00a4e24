"""Backpressure decisions: pause past the limit, resume well below it, follow rebalances."""

from __future__ import annotations

from collector.engine.backpressure import Backpressure

P = {("raw.web", 0), ("raw.web", 1), ("raw.app", 0)}


def test_pauses_past_the_limit_and_resumes_below_the_fraction() -> None:
    bp = Backpressure(1000, 0.5)
    assert bp.decide(1000, P) == (set(), set())  # at the limit: fine
    pause, resume = bp.decide(1001, P)
    assert pause == P and resume == set() and bp.engaged
    assert bp.decide(2000, P) == (set(), set())  # already paused: nothing to do
    assert bp.decide(600, P) == (set(), set())  # draining, not below half yet
    pause, resume = bp.decide(499, P)
    assert pause == set() and resume == P and not bp.engaged
    assert bp.decide(900, P) == (set(), set())  # no flapping between 500 and 1000


def test_partitions_assigned_while_paused_are_paused_too() -> None:
    bp = Backpressure(10)
    bp.decide(11, {("raw.web", 0)})
    pause, _ = bp.decide(11, {("raw.web", 0), ("raw.web", 1)})
    assert pause == {("raw.web", 1)}
    # revoked partitions are not resumed here (their new owner decides)
    _, resume = bp.decide(0, {("raw.web", 1)})
    assert resume == {("raw.web", 1)}


async def test_the_sink_loop_resumes_a_paused_worker_once_the_sinks_drain() -> None:
    """While paused no raw batch arrives to re-check, and the window flush may be an
    interval away: the hub's loop itself must check after every sink flush."""
    import asyncio
    from dataclasses import replace

    from collector.engine.sinkhub import SinkHub
    from tests.unit.test_sink_base import Scripted, row

    sink = Scripted(fail=10**9)  # down until the third flush
    # no timer tick: only the rows' wake-up; a flush gives up on the dead sink in 20 ms
    hub = SinkHub([sink], interval=3600.0, flush_timeout=0.02)
    bp = Backpressure(10)
    resumed: list[set[tuple[str, int]]] = []
    checked: list[int] = []

    def after_flush() -> None:
        checked.append(sink.pending)
        if len(checked) == 2:
            sink.fail = 0  # the sink is back
        if bp.engaged:
            _, resume = bp.decide(sink.pending, P)
            if resume:
                resumed.append(resume)

    # a table without a definition goes to every sink (user_activity would go to mysql only)
    hub.add([replace(row(f"u{i}"), table="t") for i in range(20)])
    assert bp.decide(sink.pending, P)[0] == P  # 20 pending > 10: paused
    task = asyncio.create_task(hub.run(after_flush=after_flush))
    try:
        for _ in range(200):
            if resumed:
                break
            hub._wake.set()  # the retries' own wake-ups, sped up
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert resumed == [P] and not bp.engaged
    assert checked[0] == 20 and checked[-1] == 0  # checked while down, resumed once empty
    assert len(sink.stored) == 20
