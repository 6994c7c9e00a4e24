"""Start real ``faust -A collector worker`` processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAUST = Path(sys.executable).with_name("faust")


APP_IDS: list[str] = []  # every isolated app id of this run, whose topics go at its end


def isolated_env(tmp: Path, **extra: str) -> dict[str, str]:
    """Settings that give a test its own app id, topics and state dir on the shared stack."""
    tag = uuid.uuid4().hex[:10]
    APP_IDS.append(f"t{tag}")
    env = {
        "COLLECTOR_APP__ID": f"t{tag}",
        "COLLECTOR_APP__STORE": "memory",
        "COLLECTOR_APP__DATADIR": str(tmp / "faust"),
        "COLLECTOR_KAFKA__RAW_TOPIC_PREFIX": f"t{tag}.raw.",
        "COLLECTOR_KAFKA__ENRICHED_TOPIC": f"t{tag}.enriched",
        "COLLECTOR_KAFKA__DEADLETTER_TOPIC": f"t{tag}.deadletter",
        "COLLECTOR_KAFKA__USERS_TOPIC": f"t{tag}.users",
        "COLLECTOR_KAFKA__PARTIALS_TOPIC": f"t{tag}.partials",
        "COLLECTOR_REDIS__KEY_PREFIX": f"t{tag}:user:",
        "COLLECTOR_WEB__PORT": str(free_port()),
        # A crashed worker's partitions move after the session timeout: 45 s by default,
        # 8 s here so that the kill -9 scenarios stay quick (the broker's floor is 6 s).
        "COLLECTOR_KAFKA__SESSION_TIMEOUT": "8",
        "COLLECTOR_KAFKA__HEARTBEAT_INTERVAL": "1",
    }
    env.update(extra)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Worker:
    """A worker subprocess whose combined output goes to ``log``."""

    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = field(default=0.0)

    @property
    def port(self) -> int:
        return int(self.env["COLLECTOR_WEB__PORT"])

    def start(self) -> Worker:
        full_env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        level = os.environ.get("TEST_WORKER_LOGLEVEL", "info")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(FAUST), "-A", "collector", "worker", "-l", level],
                cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started_at = time.monotonic()
        return self

    def peak_rss_mb(self) -> float:
        """The process's resident peak (VmHWM), in MB."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc/<pid>/status")

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Wait for Faust's ready line; return seconds since start."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Ready" in self.text():
                return time.monotonic() - self.started_at
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"worker exited {code}:\n{self.text()[-4000:]}")
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)


def running(worker: Worker) -> Iterator[Worker]:
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()
