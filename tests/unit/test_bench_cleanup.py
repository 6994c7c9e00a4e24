"""Which names benchmarks/cleanup.py takes for a bench run's (and only those)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.cleanup import DATABASE_TAG, TOPIC_TAG, tagged
from benchmarks.common import new_tag

TAG = "b0123abcd"

OURS = [
    f"{TAG}.raw.{TAG}m", f"{TAG}.enriched", f"{TAG}.deadletter", f"{TAG}.partials",
    f"{TAG}-collector-state-changelog", f"{TAG}-__assignor-__leader",
    f"repartition__quixdf104069--{TAG}.raw.{TAG}o--source_type",
    f"changelog__quixdf104069--{TAG}.raw.{TAG}w--tumbling_window_60000_count",
    # the Quix peer's window changelog with its default group_by (a repartition topic)
    f"changelog__quix1e461bf7--repartition.{TAG}.raw.{TAG}m.source_type"
    "--tumbling_window_60000_count",
    # the reference peer (benchmarks/pipeline.py run_reference: app id <tag>-ref)
    f"{TAG}-ref-counts-changelog", f"{TAG}-ref-__assignor-__leader",
]
NOT_BENCH = [
    "__consumer_offsets", "t0cb0712b14.raw.zf9db358da", "collect.raw.mobile",
    "collect.enriched", "cb0123abcd.raw.x",  # a tag inside another name is not one
    "b0123abc.raw.x",  # 7 hex
    f"changelog__quix1--repartitions.{TAG}.raw.x",  # not Quix's repartition prefix
]


@pytest.mark.parametrize("name", OURS)
def test_every_topic_of_a_run_is_taken_for_its_tag_only(name: str) -> None:
    assert tagged(name, TOPIC_TAG, {TAG})
    assert tagged(name, TOPIC_TAG, None)
    assert not tagged(name, TOPIC_TAG, {"b99999999"})


@pytest.mark.parametrize("name", NOT_BENCH)
def test_other_topics_are_never_taken(name: str) -> None:
    assert not tagged(name, TOPIC_TAG, None)


def test_influx_databases() -> None:
    assert tagged(f"{TAG}db", DATABASE_TAG, {TAG})
    assert tagged(f"{TAG}db", DATABASE_TAG, None)
    assert not tagged(f"{TAG}db", DATABASE_TAG, {"b99999999"})
    for name in ("collector", "t0cb0712b1db", f"x{TAG}db", f"{TAG}db2"):
        assert not tagged(name, DATABASE_TAG, None)


def test_new_tags_match_the_patterns() -> None:
    tag = new_tag()
    assert tagged(f"{tag}.raw.{tag}m", TOPIC_TAG, {tag})
    assert tagged(f"{tag}db", DATABASE_TAG, {tag})


async def test_a_run_is_dropped_however_it_ends(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    """benchmarks.run.run_mode drops its tag after a run that raised, and keeps it with
    --keep-runs."""
    from benchmarks import run

    dropped: list[str | None] = []

    async def broken(*args: object) -> dict[str, object]:
        raise RuntimeError("the producer failed")

    async def drop(settings: object, tag: str | None) -> None:
        dropped.append(tag)

    monkeypatch.setattr(run, "_run_mode", broken)
    monkeypatch.setattr(run, "drop_run", drop)
    with pytest.raises(RuntimeError, match="producer failed"):
        await run.run_mode(run.parse_args([]), "single", 10, tmp_path)
    assert len(dropped) == 1 and dropped[0] is not None and tagged(
        f"{dropped[0]}.raw.x", TOPIC_TAG, None)
    with pytest.raises(RuntimeError):
        await run.run_mode(run.parse_args(["--keep-runs"]), "single", 10, tmp_path)
    assert len(dropped) == 1
