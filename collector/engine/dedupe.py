"""The event ids a user window keeps, so a retried (user_id, event_id) counts once.

A window holds fewer than ``IDS_INLINE`` ids in its own value and seals each full set
into a chunk under a key of its own, written once.  The value is encoded, stored and
sent to the changelog at every touch: with every id inline a window of n events wrote
O(n^2) bytes, and the state cache held every id of every hot window (issue 17: 70 of
the 103 MB that peak RSS grew by from 50k to 500k events of one minute).

Chunks are not kept in memory: a Bloom filter of the sealed ids in the window's value
(``if``, 32-bit words; a few hundred bytes) says which ids may be in a chunk, and only
those read the chunks (an exact check).  The filter doubles, rebuilt from the chunks,
whenever the sealed ids outgrow it, so false positives stay near 1.5%.  The value's
``ic`` counts the chunks: they are found, pruned and deleted with their window.
"""

from __future__ import annotations

import zlib
from typing import Any

from collector.engine.state import State

SEP = "|"
IDS_INLINE = 8
#: the ``kind`` of a chunk, and its key prefix (never cached: see the module docstring)
CHUNK = "i"
CHUNK_PREFIX = CHUNK + SEP
#: filter words (of 32 bits) per FILTER_IDS sealed ids: 512 bits and 3 probes (_bits)
#: for 64 ids is about 1.5% false positives when full
FILTER_WORDS = 16
FILTER_IDS = 64


def ids_key(user_id: str, ws: int, chunk: int) -> str:
    return f"{CHUNK_PREFIX}{user_id}{SEP}{ws}{SEP}{chunk}"


def id_chunk_keys(entry: dict[str, Any]) -> list[str]:
    """The keys of a user window's sealed id chunks."""
    user_id, ws = entry["key"][0], entry["ws"]
    return [ids_key(user_id, ws, n) for n in range(entry.get("ic", 0))]


def _bits(eid: str, m: int) -> tuple[int, int, int]:
    """The filter bits of ``eid`` in ``m`` bits (double hashing; stable across runs,
    unlike ``hash()``, since the filter is stored)."""
    b = eid.encode()
    h1, h2 = zlib.crc32(b), zlib.adler32(b) | 1
    return h1 % m, (h1 + h2) % m, (h1 + 2 * h2) % m


def _may_hold(words: list[int], eid: str) -> bool:
    """Per event on a busy window: written out, no generator, and most answers come at
    the first bit (a comprehension and ``all()`` made it 5% of the worker's CPU)."""
    b = eid.encode()
    m = len(words) << 5
    h1, h2 = zlib.crc32(b), zlib.adler32(b) | 1
    p = h1 % m
    if not words[p >> 5] >> (p & 31) & 1:
        return False
    p = (h1 + h2) % m
    if not words[p >> 5] >> (p & 31) & 1:
        return False
    p = (h1 + 2 * h2) % m
    return bool(words[p >> 5] >> (p & 31) & 1)


def _add(words: list[int], ids: Any) -> None:
    m = len(words) * 32
    for eid in ids:
        for p in _bits(eid, m):
            words[p >> 5] |= 1 << (p & 31)


def counted(state: State, partition: int, entry: dict[str, Any], eid: str) -> bool:
    """Whether the window ``entry`` counted ``eid`` before (inline or in a chunk)."""
    if eid in entry["ids"]:
        return True
    if "ic" in entry and _may_hold(entry["if"], eid):
        for key in id_chunk_keys(entry):
            chunk = state.get(partition, key)
            if chunk is not None and eid in chunk["ids"]:
                return True
    return False


def remember(state: State, partition: int, entry: dict[str, Any], eid: str) -> None:
    """Keep ``eid``; seal the inline ids into a chunk once there are ``IDS_INLINE``.
    The chunk is written now; the window's value, which counts it, by the caller."""
    ids = entry["ids"]
    ids[eid] = 1
    if len(ids) < IDS_INLINE:
        return
    n = entry.get("ic", 0)
    state.set(partition, ids_key(entry["key"][0], entry["ws"], n),
              {"kind": CHUNK, "partition": partition, "ids": ids})
    entry["ids"] = {}
    entry["ic"] = n + 1
    words: list[int] | None = entry.get("if")
    size = FILTER_WORDS
    while size * FILTER_IDS < (n + 1) * IDS_INLINE * FILTER_WORDS:
        size *= 2
    if words is None or len(words) < size:  # (re)build it from every chunk
        words = entry["if"] = [0] * size
        for key in id_chunk_keys(entry)[:-1]:
            chunk = state.get(partition, key)
            if chunk is not None:
                _add(words, chunk["ids"])
    _add(words, ids)


def forget(state: State, partition: int, entry: dict[str, Any]) -> bool:
    """Drop every id of a window (past its dedupe horizon); whether it held any."""
    if not entry.get("ids") and not entry.get("ic"):
        return False
    for key in id_chunk_keys(entry):
        state.delete(partition, key)
    entry["ids"] = {}
    entry.pop("ic", None)
    entry.pop("if", None)
    return True
