"""Which names benchmarks/cleanup.py takes for a bench run's (and only those)."""

from __future__ import annotations

import pytest

from benchmarks.cleanup import DATABASE_TAG, TOPIC_TAG, tagged
from benchmarks.common import new_tag

TAG = "b0123abcd"

OURS = [
    f"{TAG}.raw.{TAG}m", f"{TAG}.enriched", f"{TAG}.deadletter", f"{TAG}.partials",
    f"{TAG}-collector-state-changelog", f"{TAG}-__assignor-__leader",
    f"repartition__quixdf104069--{TAG}.raw.{TAG}o--source_type",
    f"changelog__quixdf104069--{TAG}.raw.{TAG}w--tumbling_window_60000_count",
]
NOT_BENCH = [
    "__consumer_offsets", "t0cb0712b14.raw.zf9db358da", "collect.raw.mobile",
    "collect.enriched", "cb0123abcd.raw.x",  # a tag inside another name is not one
    "b0123abc.raw.x",  # 7 hex
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
