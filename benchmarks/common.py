"""Shared plumbing for the benchmarks: isolated settings, subprocesses, /proc readings."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from collector.config import Settings
from collector.config.loader import settings_for_env

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COLLECTOR = BIN / "collector"
FAUST = BIN / "faust"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def new_tag(prefix: str = "b") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def isolated_env(tag: str, workdir: Path, **extra: str) -> dict[str, str]:
    """COLLECTOR_* settings giving one benchmark run its own app id, topics, sources, state.

    Sources are tagged too, so the run's rows in the shared MySQL tables and its Influx
    database are its own and can be counted without touching anyone else's.
    """
    sources = ",".join(f"{tag}{s}" for s in ("m", "w", "o"))
    env = {
        "COLLECTOR_APP__ID": tag,
        "COLLECTOR_APP__STORE": "rocksdb",
        "COLLECTOR_APP__DATADIR": str(workdir / "faust"),
        "COLLECTOR_APP__LOG_LEVEL": "info",
        "COLLECTOR_KAFKA__SOURCES": sources,
        "COLLECTOR_KAFKA__RAW_TOPIC_PREFIX": f"{tag}.raw.",
        "COLLECTOR_KAFKA__ENRICHED_TOPIC": f"{tag}.enriched",
        "COLLECTOR_KAFKA__DEADLETTER_TOPIC": f"{tag}.deadletter",
        "COLLECTOR_KAFKA__USERS_TOPIC": f"{tag}.users",
        "COLLECTOR_KAFKA__PARTIALS_TOPIC": f"{tag}.partials",
        "COLLECTOR_REDIS__KEY_PREFIX": f"{tag}:user:",
        "COLLECTOR_INFLUX__DATABASE": f"{tag}db",
        "COLLECTOR_WEB__PORT": str(free_port()),
    }
    env.update(extra)
    return env


def settings_for(env: dict[str, str]) -> Settings:
    """The settings a process started with ``env`` sees."""
    return settings_for_env(env)


def run_cli(args: list[str], env: dict[str, str] | None = None) -> str:
    """Run ``collector <args>``; return stdout, raise with stderr on failure."""
    full = {**os.environ, **(env or {})}
    done = subprocess.run([str(COLLECTOR), *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"collector {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def one_window_event_time(now_ms: int, minute_ms: int = 60_000) -> int:
    """An event time whose 2 s of spread (the generator's) stay inside one minute.

    Events stamped as they were generated spanned the whole production: 13 s for
    500,000, 1 s for 50,000.  A run that crossed a minute boundary (about one in four
    at 500k) held two windows per user and wrote twice the rows: peak RSS 321-322 MB
    against 269-272 MB in a run that did not, on the same code.  Scaling runs compare
    the per-event cost, so every run's events fall in one window.
    """
    if (now_ms - 2_000) // minute_ms != now_ms // minute_ms:
        return now_ms // minute_ms * minute_ms - 1  # the last ms of the minute before
    return now_ms


def produce(env: dict[str, str], n: int, batch: int, users: int, seed: int = 42,
            malformed: float = 0.01, rate: float = 0.0,
            event_time_ms: int | None = None) -> dict[str, Any]:
    """``collector produce`` into the run's raw topics; returns its JSON summary."""
    stamp = [] if event_time_ms is None else ["--event-time-ms", str(event_time_ms)]
    out = run_cli(["produce", "--events", str(n), "--users", str(users), "--type-count", "6",
                   "--malformed", str(malformed), "--batch", str(batch), "--seed", str(seed),
                   "--rate", str(rate), *stamp, "--json"], env)
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return summary


@dataclass(frozen=True)
class ProcSample:
    cpu_s: float
    hwm_kb: int
    rss_kb: int


def proc_sample(pid: int) -> ProcSample:
    """utime+stime of all threads (seconds) and VmHWM/VmRSS (kB) of ``pid``."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)
    hwm = rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
        elif line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return ProcSample(cpu, hwm, rss)


@dataclass
class Subprocess:
    """A worker subprocess with combined output in ``log``."""

    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = field(default=0.0)

    def start(self) -> Subprocess:
        full = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(ROOT)}
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=full, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def check_alive(self) -> None:
        if not self.alive():
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"{self.argv[0]} exited {code}; log {self.log}:\n{self.tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def faust_worker(app: str, env: dict[str, str], log: Path) -> Subprocess:
    return Subprocess([str(FAUST), "-A", app, "worker", "-l", "info"], env, log)


def code_version() -> dict[str, Any]:
    """The commit measured, and which files under collector/ differed from it."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False)
        return done.stdout

    # porcelain lines are "XY path": strip only the newline, the leading space is X
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "collector").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip(),
            "uncommitted_collector_files": dirty}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def kafka_version() -> str:
    """The local broker's Kafka version, as pinned in deploy/local/kafka/pom.xml."""
    import re

    pom = Path(__file__).resolve().parents[1] / "deploy" / "local" / "kafka" / "pom.xml"
    found = re.search(r"<kafka\.version>([^<]+)<", pom.read_text()) if pom.exists() else None
    return found.group(1) if found else "?"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    versions = {}
    for dist in ("faust-streaming", "mode-streaming", "aiokafka", "orjson", "rocksdict",
                 "aiomysql", "redis"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "-"
    return {
        "cpu_model": model or platform.processor(),
        "cores": os.cpu_count(),
        "ram_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "broker": f"Apache Kafka {kafka_version()} (KRaft), local stack, 1 node",
        "versions": versions,
        "load_at_start": load_average(),
    }
