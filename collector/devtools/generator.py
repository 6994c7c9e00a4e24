"""Seeded synthetic raw messages for demos, tests and benchmarks.

Each *slot* becomes exactly one consumed unit downstream (one valid event, or one
dead-letter record), so the generator can say how many of each to expect without
running the validator: malformed slots are built to break one rule each.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

DEFAULT_TYPES = ("page_view", "click", "purchase", "sensor", "search", "add_to_cart")

# kind -> the dead-letter reason it must produce
MALFORMED_KINDS: dict[str, str] = {
    "truncated_json": "malformed_json",
    "bad_utf8": "malformed_json",
    "empty": "malformed_json",
    "too_large": "too_large",
    "missing_event_id": "schema_violation",
    "bad_type": "schema_violation",
    "string_value": "schema_violation",
    "future_ts": "schema_violation",
    "source_mismatch": "schema_violation",
    "unknown_field": "schema_violation",
}
# kinds that can be an element inside an envelope (the rest break the whole message)
ELEMENT_KINDS = tuple(k for k, reason in MALFORMED_KINDS.items() if reason == "schema_violation")


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    """What to generate; the same config and seed always give the same messages."""

    events: int = 1000
    users: int = 1000
    types: tuple[str, ...] = DEFAULT_TYPES
    sources: tuple[str, ...] = ("mobile", "web", "openapi")
    malformed_share: float = 0.0
    batch: int = 1
    seed: int = 42
    max_message_bytes: int = 64 * 1024
    user_prefix: str = "u"


@dataclass(slots=True)
class RawMessage:
    """A message for a raw topic: source, key and value bytes, and how many slots it holds."""

    source: str
    key: bytes | None
    value: bytes
    slots: int = 1


@dataclass(slots=True)
class Expectation:
    """What the pipeline should report once every generated message is consumed."""

    messages: int = 0
    events: int = 0
    valid: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    valid_by_source: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "events": self.events,
            "valid": self.valid,
            "dead_lettered": dict(sorted(self.dead_letters.items())),
            "valid_by_source": dict(sorted(self.valid_by_source.items())),
        }


def user_id(config: GeneratorConfig, index: int) -> str:
    """The demo user ids ``u00000``…, the same ones ``collector db seed`` creates."""
    return f"{config.user_prefix}{index:05d}"


class Generator:
    """Yields raw messages and records what they should turn into."""

    def __init__(self, config: GeneratorConfig, clock: Callable[[], float] = time.time) -> None:
        if not 0.0 <= config.malformed_share <= 1.0:
            raise ValueError("malformed_share must be within [0, 1]")
        if config.batch < 1:
            raise ValueError("batch must be >= 1")
        self.config = config
        self.expected = Expectation()
        self._rng = random.Random(config.seed)
        self._clock = clock
        self._seq = 0

    def _event(self, source: str, uid: str) -> dict[str, Any]:
        rng = self._rng
        self._seq += 1
        etype = rng.choice(self.config.types)
        event: dict[str, Any] = {
            "event_id": f"e{self.config.seed}-{self._seq}",
            "user_id": uid,
            "type": etype,
            "ts": int(self._clock() * 1000) - rng.randrange(0, 2000),
        }
        if etype in ("purchase", "sensor") or rng.random() < 0.3:
            event["value"] = round(rng.uniform(0, 100), 2)
        if rng.random() < 0.5:
            event["device_id"] = f"d{rng.randrange(10_000)}"
        if rng.random() < 0.5:
            event["properties"] = {"page": f"/p/{rng.randrange(50)}", "ab": rng.random() < 0.5}
        return event

    def _break(self, kind: str, event: dict[str, Any], source: str) -> Any:
        """Return ``event`` (or bytes) broken so that it violates exactly one rule."""
        if kind == "missing_event_id":
            event.pop("event_id")
        elif kind == "bad_type":
            event["type"] = "Not A Type"
        elif kind == "string_value":
            event["value"] = "12.5"
        elif kind == "future_ts":
            event["ts"] = int(self._clock() * 1000) + 86_400_000
        elif kind == "source_mismatch":
            event["source"] = "x" + source
        elif kind == "unknown_field":
            event["surprise"] = 1
        elif kind == "truncated_json":
            return orjson.dumps(event)[:-7]
        elif kind == "bad_utf8":
            return b'{"event_id": "\xff\xfe", "user_id": "' + event["user_id"].encode() + b'"}'
        elif kind == "empty":
            return b""
        elif kind == "too_large":
            event["properties"] = {"blob": "x" * 200}
            pad = self.config.max_message_bytes
            return orjson.dumps(event)[:-1] + b', "pad": "' + b"p" * pad + b'"}'
        return event

    def _expect(self, source: str, reason: str | None) -> None:
        exp = self.expected
        exp.events += 1
        if reason is None:
            exp.valid += 1
            exp.valid_by_source[source] += 1
        else:
            exp.dead_letters[reason] += 1

    def __iter__(self) -> Iterator[RawMessage]:
        cfg, rng = self.config, self._rng
        slot = 0
        while slot < cfg.events:
            source = cfg.sources[slot % len(cfg.sources)]
            uid = user_id(cfg, rng.randrange(cfg.users))
            key = uid.encode()
            size = min(cfg.batch, cfg.events - slot)
            if cfg.batch == 1 or rng.random() < cfg.malformed_share / 4:
                # one event per message; in envelope mode this carries whole-message breakage
                kinds = (
                    tuple(MALFORMED_KINDS)
                    if cfg.batch == 1
                    else tuple(k for k, r in MALFORMED_KINDS.items() if r != "schema_violation")
                )
                broken = cfg.batch > 1 or rng.random() < cfg.malformed_share
                kind = rng.choice(kinds) if broken else None
                event = self._event(source, uid)
                item = self._break(kind, event, source) if kind else event
                value = item if isinstance(item, bytes) else orjson.dumps(item)
                self._expect(source, MALFORMED_KINDS[kind] if kind else None)
                self.expected.messages += 1
                slot += 1
                yield RawMessage(source, key, value, 1)
                continue
            elements = []
            for _ in range(size):
                event = self._event(source, uid)
                kind = rng.choice(ELEMENT_KINDS) if rng.random() < cfg.malformed_share else None
                elements.append(self._break(kind, event, source) if kind else event)
                self._expect(source, MALFORMED_KINDS[kind] if kind else None)
            self.expected.messages += 1
            slot += size
            yield RawMessage(source, key, orjson.dumps(elements), size)
