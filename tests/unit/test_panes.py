"""Hopping windows folded by panes (collector.engine.panes) equal folding every window.

The reference is the aggregator with panes turned off: each event folded into each of
its windows, the path every other window kind takes.  The batches are what traffic
looks like, not what the code expects: out of order, older than the lateness cut in the
middle of a batch, two topics and partitions, replays after a crash.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest

from collector.aggregates.builtin import SEGMENT_STATS, USER_ACTIVITY
from collector.engine.aggregator import Aggregator, Late, slot_key
from collector.engine.panes import pane_merge
from collector.engine.processor import RawRecord
from collector.engine.specs import Specs
from collector.engine.state import DictState
from collector.engine.windows import WindowSpec
from tests.unit.test_windows import event

T0 = 1_700_000_040_000  # a minute boundary, in ms
NOW_S = T0 / 1000 + 3600  # the wall clock: no event is ahead of it


def specs(lateness_s: int = 60) -> Specs:
    return Specs(WindowSpec.tumbling(60, 60, lateness_s),
                 WindowSpec.hopping(300, 60, 60, lateness_s))


def aggregator(spec: Specs, state: DictState | None = None, *, panes: bool = True
               ) -> Aggregator:
    agg = Aggregator(DictState() if state is None else state, spec, clock=lambda: NOW_S)
    if not panes:
        agg._pane_plans.clear()  # the reference: every event into every window
    return agg


Batch = list[tuple[RawRecord, dict[str, Any]]]


def traffic(seed: int, batches: int = 12, size: int = 80) -> list[Batch]:
    """Events over 25 minutes, mostly in order with a tail of stragglers, on two topics
    with two partitions each; values integral so that sums do not depend on order."""
    rnd = random.Random(seed)
    offsets: dict[tuple[str, int], int] = {}
    out: list[Batch] = []
    clock = T0
    for _ in range(batches):
        batch: Batch = []
        for _ in range(size):
            clock += rnd.randrange(0, 2_500)
            late_by = rnd.choice([0, 0, 0, 0, 30_000, 200_000, 500_000, 900_000])
            ts = max(T0, clock - late_by)
            topic, part = rnd.choice(["raw.web", "raw.mobile"]), rnd.randrange(2)
            off = offsets[topic, part] = offsets.get((topic, part), -1) + 1
            e = event(f"u{rnd.randrange(30)}", rnd.choice(["click", "view"]), ts,
                      value=rnd.choice([None, float(rnd.randrange(100))]),
                      seg=rnd.choice(["pro", "free", "team"]),
                      country=rnd.choice(["DE", "FR"]))
            e["event_id"] = f"{topic}-{part}-{off}"
            batch.append((RawRecord(topic, part, off, None, None), e))
        out.append(batch)
    return out


def late_view(late: list[Late]) -> list[tuple[Any, ...]]:
    return [(x.record.topic, x.record.partition, x.record.offset, tuple(x.tables))
            for x in late]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("lateness_s", [0, 60, 600])
def test_panes_equal_folding_every_window(seed: int, lateness_s: int) -> None:
    spec = specs(lateness_s)
    by_panes, reference = aggregator(spec), aggregator(spec, panes=False)
    assert by_panes._pane_plans and not reference._pane_plans
    for batch in traffic(seed):
        assert late_view(by_panes.apply(batch)) == late_view(reference.apply(batch))
        assert by_panes.state.data == reference.state.data  # type: ignore[attr-defined]
        assert by_panes.dirty == reference.dirty
    segments = {k: v for k, v in by_panes.state.data.items()  # type: ignore[attr-defined]
                if v.get("table") == "segment_stats"}
    assert sum(v["agg"]["count"] for v in segments.values()) > 1000  # it did fold


def test_a_window_that_absorbed_part_of_a_pane_counts_only_the_rest() -> None:
    """After a crash the changelog may hold a window's partial newer than its slot (they
    are separate keys): the replayed batch then overlaps what the window absorbed."""
    spec = specs()
    batch = [(RawRecord("raw.web", 0, off, None, None),
              event("u1", "click", T0 + 250_000 + off, value=1.0)) for off in range(20)]
    ahead = aggregator(spec)
    ahead.apply(batch[:15])  # every partial absorbed offsets 0..14
    behind = aggregator(spec)
    behind.apply(batch[:10])  # the slot as it was at offset 9
    state = DictState()
    for key, value in ahead.state.data.items():  # type: ignore[attr-defined]
        state.set(0, key, copy.deepcopy(value))
    slot = slot_key("raw.web", 0)
    state.set(0, slot, copy.deepcopy(behind.state.data[slot]))  # type: ignore[attr-defined]

    restarted = aggregator(spec, state)
    restarted.apply(batch[10:])
    windows = {v["ws"]: v for v in state.data.values() if v.get("table") == "segment_stats"}
    assert sorted(windows) == [T0 + 60_000 * k for k in range(5)]
    for value in windows.values():
        assert value["agg"]["count"] == 20, value  # 0..14 before, 15..19 now: no double count
        assert value["agg"]["value_sum"] == 20.0
        assert value["off"] == 19


def test_a_batch_that_raises_half_way_keeps_the_panes_it_folded() -> None:
    """The slot's offset moves past every event folded before the bad one, so those
    events must be in the windows too, or a retry skips them as already absorbed."""
    spec = specs()
    batch = [(RawRecord("raw.web", 0, off, None, None),
              event("u1", "click", T0 + 1_000 * off, value=2.0)) for off in range(4)]
    del batch[2][1]["event_id"]
    agg = aggregator(spec)
    with pytest.raises(KeyError):
        agg.apply(batch)
    data = agg.state.data  # type: ignore[attr-defined]
    assert data[slot_key("raw.web", 0)]["off"] == 1
    windows = [v for v in data.values() if v.get("table") == "segment_stats"]
    assert len(windows) == 5
    assert {(v["agg"]["count"], v["agg"]["value_sum"], v["off"]) for v in windows} == {
        (2, 4.0, 1)}


def test_only_measures_whose_merge_equals_folding_take_panes() -> None:
    assert pane_merge(SEGMENT_STATS) is not None
    assert pane_merge(USER_ACTIVITY) is None  # a bounded distinct list keeps other values
