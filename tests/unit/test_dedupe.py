"""The event-id dedupe of user windows with many events: chunks, filter, pruning.

Traffic as it arrives at a busy user window: hundreds of events in one minute, out of
order, retried at random (same ids, new offsets), a restart in between, then the whole
stream replayed once more.  The oracle counts each distinct event once.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from collector.engine import dedupe
from collector.engine.aggregator import Specs
from collector.engine.dedupe import CHUNK_PREFIX, FILTER_WORDS, IDS_INLINE, id_chunk_keys
from collector.engine.state import DictState, State
from collector.engine.windows import WindowSpec
from tests.unit.test_event_time import HOUR_MS, Offsets, settle, values
from tests.unit.test_windows import T0, Clock, Loop, event, feed, oracle


@pytest.fixture
def specs() -> Specs:
    return Specs(WindowSpec.tumbling(60, 60, 3600), WindowSpec.hopping(300, 60, 60, 3600),
                 expires_ms=2 * HOUR_MS, dedupe_ms=900_000)


def chunks_in(state: State) -> list[str]:
    return [k for k, _ in state.items() if k.startswith(CHUNK_PREFIX)]


@pytest.mark.parametrize("filter_says_yes", [False, True], ids=["filter", "every-id-checked"])
@pytest.mark.parametrize("seed", range(4))
async def test_a_busy_window_counts_each_event_once(
    specs: Specs, seed: int, filter_says_yes: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """300 events of one user in one minute, 25% retried in random batches, a restart,
    then every event again: each counted once, and the window's value stays small."""
    if filter_says_yes:  # every lookup reads the chunks: the exact check alone
        monkeypatch.setattr(dedupe, "_may_hold", lambda words, eid: True)
    rng = random.Random(seed)
    clock = Clock(T0 / 1000 + 90)
    state = DictState()
    loop = Loop(specs, clock, state=state)
    offsets = Offsets()
    events = [event("u1", "click", T0 + i * 150, value=float(i)) for i in range(300)]
    events += [event(f"u{n}", "view", T0 + n * 1000) for n in range(2, 12)]
    stream = list(events)
    retries = rng.sample(events, len(events) // 4)
    stream += [{**e, "source": rng.choice(["web", "mobile"])} for e in retries]
    rng.shuffle(stream)
    half = len(stream) // 2
    for start in range(0, half, 37):
        feed(loop, [offsets.item(e) for e in stream[start:min(start + 37, half)]])
    await loop.tick()
    before = sum(loop.agg.duplicates.values())
    loop = Loop(specs, clock, state=state)  # a restart on the same tables
    for start in range(half, len(stream), 41):
        feed(loop, [offsets.item(e) for e in stream[start:start + 41]])
    feed(loop, [offsets.item({**e, "source": "mobile"}) for e in events])  # all again
    # every event fed after its first copy, across the restart, was recognised
    assert before + sum(loop.agg.duplicates.values()) == len(stream)
    entry = state.get(0, f"u|u1|{T0}")
    assert entry is not None and entry["agg"]["count"] == 300
    assert len(entry["ids"]) < IDS_INLINE and entry["ic"] == 300 // IDS_INLINE
    assert len(entry["if"]) > FILTER_WORDS  # it grew, rebuilt from the older chunks
    # 300 ids inline were 12 KB, rewritten at every event; now the filter's ~1.4 KB
    assert len(orjson.dumps(entry)) < 2_500
    await settle(loop, clock)
    first_copies: dict[str, dict[str, Any]] = {}  # a retry may come first, on another source
    for e in stream:
        first_copies.setdefault(e["event_id"], e)
    got = {k: v for k, v in values(loop).items() if v.get("merged_into") is None}
    assert got == oracle(list(first_copies.values()), specs)  # (a moved start's marker: out)


def test_the_filter_lets_few_unknown_ids_through() -> None:
    words = [0] * FILTER_WORDS
    dedupe._add(words, [f"e-{i}" for i in range(64)])
    assert all(dedupe._may_hold(words, f"e-{i}") for i in range(64))
    passed = sum(dedupe._may_hold(words, f"other-{i}") for i in range(10_000))
    assert passed < 400  # 1.5% expected at 64 ids


async def test_ids_are_pruned_past_the_dedupe_horizon(specs: Specs) -> None:
    clock = Clock(T0 / 1000 + 2 * 3600)  # (stream time never passes the worker's clock)
    loop = Loop(specs, clock)
    offsets = Offsets()
    feed(loop, [offsets.item(event("u1", "click", T0 + i)) for i in range(3 * IDS_INLINE)])
    await loop.tick()
    assert len(chunks_in(loop.agg.state)) == 3
    # stream time 16 min on: past end + dedupe (15 min), inside the lateness (1 h)
    feed(loop, [offsets.item(event("u2", "view", T0 + 16 * 60_000))])
    await loop.tick()
    assert chunks_in(loop.agg.state) == []
    entry = loop.agg.state.get(0, f"u|u1|{T0}")
    assert entry is not None and "ic" not in entry and "if" not in entry
    assert entry["agg"]["count"] == 3 * IDS_INLINE


async def test_a_window_expired_on_a_quiet_stream_takes_its_chunks(specs: Specs) -> None:
    """Stream time stays inside the dedupe horizon (nothing newer arrives), so the ids
    are never pruned; the window goes when the idle slot's close mark passes its expiry,
    and its chunks must go with it."""
    clock = Clock(T0 / 1000 + 90)
    loop = Loop(specs, clock)
    offsets = Offsets()
    feed(loop, [offsets.item(event("u1", "click", T0 + i)) for i in range(2 * IDS_INLINE + 1)])
    await loop.tick()
    assert len(chunks_in(loop.agg.state)) == 2
    clock.now += 3 * HOUR_MS / 1000
    await settle(loop, clock)
    await settle(loop, clock)
    assert loop.agg.state.get(0, f"u|u1|{T0}") is None
    assert chunks_in(loop.agg.state) == []


async def test_a_window_stored_with_every_id_inline_still_dedupes(
    specs: Specs, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """State written before chunks existed holds every id in the value: its ids still
    count, and the next new event seals them."""
    clock = Clock(T0 / 1000 + 90)
    state = DictState()
    loop = Loop(specs, clock, state=state)
    offsets = Offsets()
    first = [event("u1", "click", T0 + i) for i in range(IDS_INLINE + 22)]
    with monkeypatch.context() as m:
        m.setattr(dedupe, "IDS_INLINE", 10_000)
        feed(loop, [offsets.item(e) for e in first])
    legacy: dict[str, Any] | None = state.get(0, f"u|u1|{T0}")
    assert legacy is not None and len(legacy["ids"]) == len(first) and "ic" not in legacy
    loop = Loop(specs, clock, state=state)
    more = [event("u1", "click", T0 + 100 + i) for i in range(5)]
    feed(loop, [offsets.item(e) for e in [*first, *more, *first[:3]]])
    assert sum(loop.agg.duplicates.values()) == len(first) + 3
    entry = state.get(0, f"u|u1|{T0}")
    assert entry is not None and entry["ic"] == 1 and len(entry["ids"]) == 4
    assert len(state.get(0, id_chunk_keys(entry)[0])["ids"]) == len(first) + 1  # type: ignore[index]
    await settle(loop, clock)
    assert values(loop) == oracle(first + more, specs)
