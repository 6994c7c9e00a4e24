"""Throwaway Apache Kafka brokers for tests that kill or restart one.

The shared broker must stay up for every other test, so a test that kills the broker
runs its own: the same jars and settings as ``collector stack up``
(``deploy/local/kafka_broker.py``), a small heap, free loopback ports, data in the test's
temporary directory.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / ".local" / "kafka" / "lib"  # resolved by ``collector stack up``
READY_S = 60.0


def broker_module() -> ModuleType:
    """``deploy/local/kafka_broker.py`` (a script directory, so loaded by path)."""
    name = "collector_local_kafka_broker"
    if name not in sys.modules:
        path = ROOT / "deploy" / "local" / "kafka_broker.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _free_port_pair() -> int:
    """A port p with p and p + 1 free (broker and controller listeners)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        with socket.socket() as other:
            try:
                other.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free loopback ports")


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def private_broker(root: Path, heap: str = "256m") -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A new single-node KRaft broker under ``root``; yields (host:port, process)."""
    kb = broker_module()
    log = root / "kafka.log"
    root.mkdir(parents=True, exist_ok=True)
    kb.ensure_jars(LIB, log)
    port = _free_port_pair()
    conf = kb.write_config(root / "server.properties", "127.0.0.1", port, "127.0.0.1",
                           root / "data")
    kb.format_storage(LIB, conf, root / "data", log)
    with log.open("ab") as out:
        proc = subprocess.Popen(kb.command(LIB, conf, heap), stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + READY_S
        while not _answers(port):
            if proc.poll() is not None:
                raise RuntimeError(f"private Kafka exited with {proc.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"private Kafka not listening after {READY_S}s; see {log}")
            time.sleep(0.1)
        yield f"127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
