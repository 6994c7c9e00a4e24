"""Local service stack: Apache Kafka (KRaft), Redis, MariaDB, InfluxDB as plain daemons, no systemd.

Daemons started here live in ``<project>/.local/<service>/`` (data, conf, log, pid) and outlive
the command so ``make run`` and pytest reuse them; ``down`` stops only those.  A non-loopback
host, or a loopback port someone else serves, is "external": used, never started or stopped.
"""

import argparse
import contextlib
import fcntl
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from collector.config import Settings, load_settings_or_exit

sys.path.insert(0, str(Path(__file__).resolve().parent))  # a script dir, not a package
import kafka_broker
import probes

LOCAL = Path(__file__).resolve().parents[2] / ".local"  # <project>/.local
READY_TIMEOUT = 30.0  # without a sign of progress
READY_CAP = 600.0  # with one: a broker loading thousands of partitions is slow, not stuck
STOP_GRACE = 20.0
_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])


class StackError(Exception):
    """A service could not be made usable; the message names it and its log."""


@dataclass(frozen=True)
class Service:
    """One backing service: where the settings say it is, and how we would run it."""

    name: str
    host: str
    port: int
    binary: str  # executable name, also how we recognise our process in /proc/PID/cmdline
    package: str  # Debian package providing ``binary`` ("" when not from apt)
    needs: tuple[tuple[str, str], ...] = ()  # other (executable, Debian package) it runs with

    @property
    def dir(self) -> Path:
        return LOCAL / self.name

    def file(self, ext: str) -> Path:  # .local/<name>/<name>.{conf,log,pid}
        return self.dir / f"{self.name}.{ext}"

    @property
    def bind(self) -> str:
        """Listen on the configured loopback literal, else 127.0.0.1: never on all interfaces."""
        with contextlib.suppress(ValueError):
            if ipaddress.ip_address(self.host).is_loopback:
                return self.host
        return "127.0.0.1"

    @property
    def loopback(self) -> bool:
        return self.host.lower() == "localhost" or self.bind == self.host


def services(settings: Settings) -> list[Service]:
    """The four services, at the hosts and ports the settings point to."""
    kafka_host, _, kafka_port = settings.kafka.bootstrap_servers[0].rpartition(":")
    redis = urllib.parse.urlsplit(settings.redis.url.get_secret_value())
    mysql = settings.mysql.connect_kwargs()
    influx = urllib.parse.urlsplit(settings.influx.url)
    return [
        Service("kafka", kafka_host.strip("[]"), int(kafka_port), kafka_broker.MAIN_CLASS, "",
                (("java", "default-jre-headless"), ("mvn", "maven"))),
        Service("redis", redis.hostname or "", redis.port or 6379, "redis-server", "redis-server"),
        Service("mariadb", mysql["host"], mysql["port"], "mariadbd", "mariadb-server"),
        Service("influxdb", influx.hostname or "", influx.port or 8086, "influxd", "influxdb"),
    ]


def classify(svc: Service, pid: int | None, answering: bool) -> str:
    """``managed`` (ours, running), ``external`` (not ours to run) or ``down`` (ours to start)."""
    if not svc.loopback:
        return "external"  # even if an old pid file of ours is around: not what we point at
    if pid is not None:
        return "managed"
    return "external" if answering else "down"


def mariadb_socket(svc: Service) -> Path:
    """Unix socket paths are limited to ~108 bytes; fall back to /tmp for deep checkouts."""
    sock = svc.dir / "mysqld.sock"
    return sock if len(str(sock)) < 100 else Path(f"/tmp/collector-mariadb-{svc.port}.sock")


def config_text(svc: Service, settings: Settings) -> str:
    """Config for ``svc``: loopback, our port, .local paths."""
    data, log, pid = svc.dir / "data", svc.file("log"), svc.file("pid")
    if svc.name == "redis":
        password = urllib.parse.urlsplit(settings.redis.url.get_secret_value()).password
        lines = [f"bind {svc.bind}", f"port {svc.port}", "daemonize no", f"pidfile {pid}"]
        lines += [f"dir {data}", f"logfile {log}", 'save ""', "appendonly no"]
        lines += [f"requirepass {urllib.parse.unquote(password)}"] if password else []
    elif svc.name == "mariadb":
        sock = mariadb_socket(svc)
        lines = ["[mysqld]", f"datadir={data}", f"socket={sock}", f"port={svc.port}"]
        lines += [f"pid-file={pid}", f"bind-address={svc.bind}", "skip-log-bin"]
        lines += ["skip-name-resolve", f"log-error={log}", f"tmpdir={svc.dir}"]  # not /tmp
        lines += ["user=root"] if os.geteuid() == 0 else []  # else mariadbd refuses root
        lines += ["", "[client]", f"socket={sock}"]
    elif svc.name == "influxdb":
        # RPC (backup) defaults to :8088 and ifql to :8082 on all interfaces: pin one, disable
        # the other.  ``reporting-enabled`` is Debian's spelling of ``reporting-disabled``.
        lines = ["reporting-disabled = true", "reporting-enabled = false"]
        lines += [f'bind-address = "{svc.bind}:{svc.port + 1}"', "[meta]", f'dir = "{data}/meta"']
        lines += ["[data]", f'dir = "{data}/data"', f'wal-dir = "{data}/wal"']
        lines += ["query-log-enabled = false", "[http]", f'bind-address = "{svc.bind}:{svc.port}"']
        lines += ["log-enabled = false", "[ifql]", "enabled = false", "[monitor]"]
        lines += ["store-enabled = false", "[logging]", "suppress-logo = true"]
    else:
        return kafka_broker.server_properties(svc.bind, svc.port, svc.host, data)
    return "\n".join(lines) + "\n"


def command(svc: Service) -> list[str]:
    """The foreground command line that runs ``svc`` with its config file."""
    conf = str(svc.file("conf"))
    if svc.name == "kafka":
        return kafka_broker.command(svc.dir / "lib", svc.file("conf"))
    exe = shutil.which(svc.binary, path=_PATH) or svc.binary
    if svc.name == "mariadb":
        return [exe, f"--defaults-file={conf}"]  # must be the first argument
    return [exe, "-config", conf] if svc.name == "influxdb" else [exe, conf]


def _alive(pid: int) -> bool:
    """Running and not a zombie; reaps it first in case it is our own child."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def owned_pid(svc: Service) -> int | None:
    """The pid from our pid file if that process is alive and still runs ``svc.binary``."""
    try:
        pid = int(svc.file("pid").read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    # Checking the command line keeps a reused pid from getting a stranger killed.
    return pid if _alive(pid) and svc.binary.encode() in cmdline else None


def answering(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def stop(pid: int) -> bool:
    """SIGTERM, wait, then SIGKILL; True once the process is gone (a zombie counts)."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        for _ in range(int(wait * 10)):
            if not _alive(pid):
                return True
            time.sleep(0.1)
    return False


def missing_packages(svc: Service) -> list[str]:
    """Debian packages ``svc`` needs whose executables are not installed."""
    needs = ((svc.binary, svc.package), *svc.needs) if svc.package else svc.needs
    return [package for exe, package in needs if not shutil.which(exe, path=_PATH)]


def install(packages: list[str]) -> bool:
    """Install the Debian packages of missing daemons (CI images may lack them)."""
    log = LOCAL / "apt.log"
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {' '.join(packages)} (log: {log})", flush=True)
    with log.open("ab") as out:
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *packages]):
            if subprocess.run([*sudo, *cmd], stdout=out, stderr=out, env=env).returncode:
                print(f"stack: {' '.join(packages)}: apt-get failed, see {log}", file=sys.stderr)
                return False
    return True


CHECKS: dict[str, Callable[[Service, Settings], None]] = {
    "kafka": lambda svc, settings: probes.kafka(svc.host, svc.port),
    "redis": lambda svc, settings: probes.redis(settings),
    "mariadb": lambda svc, settings: probes.mariadb(mariadb_socket(svc), settings),
    "influxdb": lambda svc, settings: probes.influx(settings),
}


class Patience:
    """How long to wait for a starting daemon: READY_TIMEOUT past its last sign of progress
    (its log growing), at most READY_CAP in all.  A Kafka data dir with thousands of
    partitions loads for more than 30 s while logging every one of them."""

    def __init__(self, log: Path, now: float) -> None:
        self.log, self.cap = log, now + READY_CAP
        self.size = self._size()
        self.deadline = now + READY_TIMEOUT

    def _size(self) -> int:
        try:
            return self.log.stat().st_size
        except OSError:
            return -1

    def expired(self, now: float) -> bool:
        size = self._size()
        if size != self.size:
            self.size, self.deadline = size, min(now + READY_TIMEOUT, self.cap)
        return now > self.deadline


def wait_ready(svc: Service, settings: Settings, proc: subprocess.Popen[bytes] | None) -> None:
    """Probe until usable; give up early if the daemon we just started has died."""
    log = svc.file("log")
    patience = Patience(log, time.monotonic())
    while True:
        try:
            return CHECKS[svc.name](svc, settings)
        except Exception as exc:
            if proc is not None and proc.poll() is not None:
                raise StackError(f"{svc.name}: exited with {proc.returncode}, see {log}") from None
            if patience.expired(time.monotonic()):
                msg = f"{svc.name}: not ready, no progress in its log for {READY_TIMEOUT:.0f}s"
                raise StackError(f"{msg} ({exc}), see {log}") from None
            time.sleep(0.1)


@dataclass
class Row:
    service: str
    action: str
    detail: str
    seconds: float = 0.0
    error: str = ""


def _forget_table_state(settings: Settings) -> None:
    """A newly formatted broker has no changelogs: local table state would not match them."""
    root = LOCAL.parent
    datadir = (root / settings.app.datadir).resolve()
    if datadir.is_dir() and root in datadir.parents:
        shutil.rmtree(datadir)
        print(f"kafka: new cluster, so removed stale table state {datadir}", flush=True)


def _prepare_kafka(svc: Service, settings: Settings) -> None:
    """Jars (Maven, once), log4j2 config, and storage formatted on first start."""
    log, data = svc.file("log"), svc.dir / "data"
    try:
        kafka_broker.ensure_jars(svc.dir / "lib", log)
        kafka_broker.write_config(svc.file("conf"), svc.bind, svc.port, svc.host, data)
        if not kafka_broker.formatted(data):
            shutil.rmtree(data, ignore_errors=True)  # half-written or from an older layout
            _forget_table_state(settings)
            kafka_broker.format_storage(svc.dir / "lib", svc.file("conf"), data, log)
    except kafka_broker.BrokerSetupError as exc:
        raise StackError(str(exc)) from None


def _start(svc: Service, settings: Settings) -> int:
    (svc.dir / "data").mkdir(parents=True, exist_ok=True)
    log = svc.file("log")
    if svc.name == "kafka":
        _prepare_kafka(svc, settings)
    svc.file("conf").write_text(config_text(svc, settings))
    with log.open("ab") as out, open(os.devnull, "rb") as null:
        if svc.name == "mariadb" and not (svc.dir / "data" / "mysql").is_dir():
            tool = shutil.which("mariadb-install-db", path=_PATH) or "mariadb-install-db"
            init = [tool, f"--defaults-file={svc.file('conf')}", "--skip-test-db"]
            if subprocess.run(init, stdout=out, stderr=out, timeout=120).returncode:
                shutil.rmtree(svc.dir / "data")  # half initialised, it would never work
                raise StackError(f"mariadb: mariadb-install-db failed, see {log}")
        proc = subprocess.Popen(
            command(svc), stdin=null, stdout=out, stderr=out, cwd=svc.dir, start_new_session=True
        )
    svc.file("pid").write_text(f"{proc.pid}\n")
    wait_ready(svc, settings, proc)
    return proc.pid


def ensure(svc: Service, state: str, settings: Settings) -> Row:
    """Make one service usable: start ours if needed, reuse whatever already runs."""
    began = time.monotonic()
    where, log = f"{svc.host}:{svc.port}", svc.file("log")
    try:
        if state == "external":
            if not answering(svc.host, svc.port, timeout=READY_TIMEOUT / 10):
                raise StackError(f"{svc.name}: external {where} is not reachable")
            return Row(svc.name, "external", f"{where} reachable", time.monotonic() - began)
        if state == "managed":
            pid, action = owned_pid(svc) or 0, "running"
            if svc.file("conf").read_text() != config_text(svc, settings):
                raise StackError(f"{svc.name}: pid {pid} runs with other settings: `down` first")
            wait_ready(svc, settings, None)
        else:
            pid, action = _start(svc, settings), "started"
        return Row(svc.name, action, f"pid {pid}, port {svc.port}", time.monotonic() - began)
    except Exception as exc:
        error = str(exc) if isinstance(exc, StackError) else f"{svc.name}: {exc!r}, see {log}"
        return Row(svc.name, "failed", where, time.monotonic() - began, error)


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Serialise up/down, e.g. between parallel pytest workers."""
    LOCAL.mkdir(parents=True, exist_ok=True)
    with (LOCAL / "stack.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _report(rows: list[Row]) -> int:
    for row in rows:
        print(f"{row.service:<9} {row.action:<9} {row.detail:<28} {row.seconds:5.1f}s")
    for error in filter(None, (row.error for row in rows)):
        print(f"stack: {error}", file=sys.stderr)
    return 1 if any(row.error for row in rows) else 0


def up(settings: Settings) -> int:
    """Start what is missing and wait until every service answers; a no-op when all run."""
    with _lock():
        svcs = services(settings)
        states = {s.name: classify(s, owned_pid(s), answering(s.host, s.port)) for s in svcs}
        absent = [s for s in svcs if states[s.name] == "down"]
        missing = sorted({pkg for s in absent for pkg in missing_packages(s)})
        if missing and not install(missing):
            return 1
        with ThreadPoolExecutor(len(svcs)) as pool:
            return _report(list(pool.map(lambda s: ensure(s, states[s.name], settings), svcs)))


def _down_one(svc: Service) -> Row:
    began, pid = time.monotonic(), owned_pid(svc)
    if pid is not None and not stop(pid):
        return Row(svc.name, "failed", f"pid {pid}", 0.0, f"{svc.name}: pid {pid} survived KILL")
    svc.file("pid").unlink(missing_ok=True)  # ours and now stopped, or stale
    action, detail = ("stopped", f"pid {pid}") if pid else ("-", "not started by us")
    return Row(svc.name, action, detail, time.monotonic() - began)


def down(settings: Settings) -> int:
    """Stop the daemons ``up`` started (data stays); leave external ones alone."""
    with _lock(), ThreadPoolExecutor(4) as pool:
        return _report(list(pool.map(_down_one, services(settings))))


def status(settings: Settings) -> int:
    """One line per service: managed (ours), external (someone else's) or down."""
    usable = True
    for svc in services(settings):
        pid, reachable = owned_pid(svc), answering(svc.host, svc.port)
        text = state = classify(svc, pid, reachable)
        if state == "managed":
            text = f"managed (pid {pid}, port {svc.port})"
        elif state == "external":
            text = f"external ({svc.host}:{svc.port} {'' if reachable else 'un'}reachable)"
        usable &= reachable
        print(f"{svc.name:<9} {text}")
    return 0 if usable else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stack", description="Run the local service stack.")
    parser.add_argument("action", choices=["up", "down", "status"])
    action = parser.parse_args(argv).action
    return {"up": up, "down": down, "status": status}[action](load_settings_or_exit())


if __name__ == "__main__":
    sys.exit(main())
