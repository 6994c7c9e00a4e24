"""Helpers for the query API e2e tests: known input, expected windows, HTTP calls."""

from __future__ import annotations

import random
from typing import Any

import aiohttp
import orjson

from collector.config import Settings
from collector.enrichment import UserProfile, UserRepository
from tests.e2e.kafka_io import produce
from tests.oracle import oracle

KEY_NAMES = {"event_stats": ("source", "type"), "segment_stats": ("segment", "country"),
             "user_activity": ("user_id",)}


def make_events(tag: str, users: list[str], sources: list[str], start_ms: int, count: int,
                spread_ms: int, seed: int = 5) -> list[dict[str, Any]]:
    """``count`` events over ``[start, start + spread)``, with ``_source`` to produce to."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        event: dict[str, Any] = {
            "event_id": f"{tag}-{start_ms}-{i}", "user_id": rng.choice(users),
            "type": rng.choice(["click", "view", "buy"]),
            "ts": start_ms + rng.randrange(spread_ms), "_source": sources[i % len(sources)]}
        if rng.random() < 0.6:
            event["value"] = rng.choice([1.5, 2.0, 7.25, 10.0])
        out.append(event)
    return out


async def produce_events(settings: Settings, events: list[dict[str, Any]]) -> None:
    for source in settings.kafka.sources:
        batch = [(e["user_id"].encode(),
                  orjson.dumps({k: v for k, v in e.items() if k[0] != "_"}))
                 for e in events if e["_source"] == source]
        if batch:
            await produce(settings, settings.kafka.raw_topic(source), batch)


def profiles(tag: str, users: list[str]) -> dict[str, tuple[str, str]]:
    """Test-unique segments, so sink rows of other tests never match a query."""
    return {u: (f"{tag}s{i % 2}", ["DE", "FR"][i % 3 % 2]) for i, u in enumerate(users)}


async def seed_profiles(settings: Settings, users: dict[str, tuple[str, str]]) -> None:
    repo = UserRepository(settings.mysql)
    try:
        for uid, (segment, country) in users.items():
            await repo.upsert(UserProfile(uid, segment, country, "pro"))
    finally:
        await repo.close()


def expected(events: list[dict[str, Any]], table: str, lo: int, hi: int,
             users: dict[str, tuple[str, str]], **key: str) -> list[dict[str, Any]]:
    """Oracle windows of ``table`` starting in [lo, hi), in the API's shape (no final)."""
    enriched = [{**e, "source": e["_source"], "segment": users[e["user_id"]][0],
                 "country": users[e["user_id"]][1]} for e in events]
    out = []
    for (name, ws, _, values_key), values in oracle(enriched).items():
        named = dict(zip(KEY_NAMES[name], values_key, strict=True))
        if name != table or not lo <= ws < hi:
            continue
        if any(named[k] != v for k, v in key.items() if v is not None):
            continue
        out.append({"window_start_ms": ws, "key": named, "values": values})
    return sorted(out, key=lambda w: (w["window_start_ms"], tuple(w["key"].values())))


def strip(windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """API windows without the fields the oracle does not know."""
    return [{"window_start_ms": w["window_start_ms"], "key": w["key"], "values": w["values"]}
            for w in windows]


async def get(port: int, path: str, params: dict[str, Any] | None = None,
              token: str | None = None,
              limit_s: float = 10.0) -> tuple[int, dict[str, str], Any]:
    """GET ``path`` from the worker on ``port``: status, headers, JSON body (or None)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    query = {k: str(v) for k, v in (params or {}).items()}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=limit_s)) as session:
        async with session.get(f"http://127.0.0.1:{port}{path}", params=query,
                               headers=headers) as resp:
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                body = None
            return resp.status, dict(resp.headers), body
