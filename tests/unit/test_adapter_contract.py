"""The private Faust/aiokafka names collector relies on still exist in the installed
versions (collector/adapters/pins.py), and no module outside collector/adapters reaches
for one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import collector
from collector.adapters.pins import PINS, Pin

ROOT = Path(collector.__file__).resolve().parent


@pytest.mark.parametrize("pin", PINS, ids=[p.name for p in PINS])
def test_pinned_internal_exists(pin: Pin) -> None:
    try:
        pin.check()
    except Exception as exc:  # the message names the pin and where it is used
        pytest.fail(f"pinned internal {pin.name!r} (used by collector/{pin.used_by}) "
                    f"is gone or changed: {exc}", pytrace=False)


def test_a_broken_pin_fails_naming_itself() -> None:
    def gone() -> None:
        raise AttributeError("no _set")

    with pytest.raises(pytest.fail.Exception, match=r"pinned internal 'x\._set'"):
        test_pinned_internal_exists(Pin("x._set", "adapters/state.py", gone))


#: private names of Faust/aiokafka objects (attribute access or import)
PRIVATE = re.compile(
    r"\.(_current_event|_committed_offset|_read_offset|_drain_messages|_unacked_messages|"
    r"_message_accumulator|_wait_on_metadata|_partitioner|_producer_flush|_new_transport|"
    r"_new_web|_clear_partition_related_metrics|_on_message_in|_commit_every|_n_acked|"
    r"_fetch_max_wait_ms|_create_worker_consumer|_new_consumer_thread)\b"
    r"|\bstore\._(set|del)\b|producer\._producer\b|import _current_event")


def test_private_internals_are_reached_only_from_the_adapters() -> None:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] == "adapters":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE.search(line) and not line.lstrip().startswith("#"):
                found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
