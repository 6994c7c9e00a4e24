"""``deadline``: a reply already in the socket is not a timeout because the loop was busy.

The peer is a plain thread answering on a real socket (a stand-in for Redis's speed,
not for its protocol): the question is only what the timer does while the loop is
blocked, which needs a peer that answers outside this loop.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest

from collector.drivers.deadline import deadline


@contextmanager
def peer(*, answer: bool) -> Iterator[tuple[str, int]]:
    """A socket peer that echoes at once (``answer``) or never answers (a hung service)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while not stop.is_set():
                data = conn.recv(64)
                if not data:
                    return
                if answer:
                    # a little later than at once: the reply lands while the loop is
                    # blocked, not in the poll that runs just before the blocking step
                    time.sleep(0.02)
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()
    finally:
        stop.set()
        server.close()


@asynccontextmanager
async def connection(address: tuple[str, int]
                     ) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection(*address)
    try:
        yield reader, writer
    finally:
        writer.close()
        await writer.wait_closed()


async def ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(b"ping")
    await writer.drain()
    return await reader.readexactly(4)


async def block_loop(seconds: float) -> None:
    """Hold the loop like a long synchronous flush does, right after the request went out.

    No await before the sleep: the task's first step runs as soon as the caller waits
    for its reply, before the loop polls the socket.
    """
    time.sleep(seconds)  # noqa: ASYNC251 -- blocking the loop is the point


async def test_plain_asyncio_timeout_blames_the_service_for_a_blocked_loop() -> None:
    """The defect this module exists for, pinned so the premise stays true."""
    with peer(answer=True) as address:
        async with connection(address) as (reader, writer):
            blocker = asyncio.create_task(block_loop(0.4))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await ping(reader, writer)
            await blocker


async def test_a_reply_waiting_behind_a_blocked_loop_is_read() -> None:
    with peer(answer=True) as address:
        async with connection(address) as (reader, writer):
            blocker = asyncio.create_task(block_loop(0.4))
            async with deadline(0.1):
                assert await ping(reader, writer) == b"ping"
            await blocker


async def test_a_hung_service_on_an_idle_loop_times_out_on_time() -> None:
    with peer(answer=False) as address:
        async with connection(address) as (reader, writer):
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                async with deadline(0.1):
                    await ping(reader, writer)
            # bounded by the extensions even on a slow machine; on time it is ~0.1 s
            assert time.monotonic() - started < 0.1 * 4 + 0.5


async def test_a_hung_service_behind_a_starved_loop_still_times_out() -> None:
    """Every extension is spent on a loop that keeps blocking; then it gives up."""
    with peer(answer=False) as address:
        async with connection(address) as (reader, writer):

            async def keep_blocking() -> None:
                for _ in range(6):
                    await asyncio.sleep(0)
                    time.sleep(0.15)  # noqa: ASYNC251 -- the starved loop under test

            blocker = asyncio.create_task(keep_blocking())
            with pytest.raises(TimeoutError):
                async with deadline(0.1, extensions=2):
                    await ping(reader, writer)
            await blocker


async def test_no_timer_survives_the_block() -> None:
    """A finished call leaves no pending callback that could cancel the task later."""
    loop = asyncio.get_running_loop()
    async with deadline(0.05):
        await asyncio.sleep(0)
    await asyncio.sleep(0.15)  # a leftover timer would cancel this sleep
    assert not [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()
                and getattr(h, "_callback", None) is not None
                and "fire" in getattr(h._callback, "__qualname__", "")]


def test_seconds_must_be_positive() -> None:
    async def enter() -> None:
        async with deadline(0):
            pass

    with pytest.raises(ValueError, match="positive"):
        asyncio.run(enter())
