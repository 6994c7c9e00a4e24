"""Throwaway redis-server and mariadbd processes for outage tests.

The shared stack must stay up for everybody else, so tests that kill, pause or restart
a dependency run their own daemons on free loopback ports in a temporary directory.
The helpers are synchronous (fixtures call them directly; async tests via
``asyncio.to_thread``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pymysql
import redis

READY_TIMEOUT = 30.0


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def binary(name: str) -> str | None:
    """``name`` on PATH or in the sbin directories (mariadbd lives in /usr/sbin)."""
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def _wait(check: Callable[[], None], what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log}")
        try:
            check()
            return
        except Exception as exc:
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"{what} not ready after {READY_TIMEOUT}s: {last!r}; see {log}")


@dataclass
class _Daemon:
    """A daemon we own: start, hard-kill, pause (SIGSTOP) and resume (SIGCONT)."""

    root: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.root / "daemon.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        self.root.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        return self.proc

    def kill(self) -> None:
        """SIGKILL: connections are reset at once (clients see "refused"/"lost")."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the port still accepts TCP, but nothing answers (clients time out)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)


@dataclass
class RedisServer(_Daemon):
    """redis-server without persistence (a restart comes back empty, like a lost cache)."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = binary("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        argv = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.root), "--daemonize", "no"]
        proc = self._spawn(argv)

        def ping() -> None:
            with redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1) as r:
                r.ping()

        _wait(ping, "redis-server", proc, self.log)


@dataclass
class MariaDBServer(_Daemon):
    """mariadbd with its own datadir; ``init`` once, then kill/start/pause freely."""

    user: str = "u"
    password: str = "p"
    database: str = "collector"

    @property
    def conf(self) -> Path:
        return self.root / "my.cnf"

    @property
    def socket(self) -> Path:
        return self.root / "mysqld.sock"

    @property
    def dsn(self) -> str:
        return f"mysql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def init(self) -> None:
        """Create the datadir, start the server and the app account (a few seconds)."""
        exes = [binary("mariadb-install-db"), binary("mariadbd")]
        if None in exes:
            raise RuntimeError("mariadb-server is not installed")
        self.root.mkdir(parents=True, exist_ok=True)
        lines = ["[mysqld]", f"datadir={self.root / 'data'}", f"socket={self.socket}"]
        lines += [f"pid-file={self.root / 'mysqld.pid'}", f"port={self.port}"]
        lines += ["bind-address=127.0.0.1", "skip-log-bin", "skip-name-resolve"]
        lines += [f"log-error={self.log}", "innodb_buffer_pool_size=32M"]
        if os.geteuid() == 0:
            lines.append("user=root")
        self.conf.write_text("\n".join([*lines, ""]))
        install = [str(exes[0]), f"--defaults-file={self.conf}", "--skip-test-db"]
        with self.log.open("ab") as out:
            subprocess.run(install, stdout=out, stderr=out, check=True, timeout=120)
        self.start(app_user=False)
        # Root authenticates only over the unix socket: create the app account there.
        admin = pymysql.connect(unix_socket=str(self.socket), user="root", connect_timeout=5)
        with admin, admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
            for host in ("localhost", "127.0.0.1"):
                account = f"'{self.user}'@'{host}'"
                cur.execute(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY '{self.password}'")
                cur.execute(f"GRANT ALL PRIVILEGES ON *.* TO {account}")
        self._login()

    def start(self, *, app_user: bool = True) -> None:
        exe = binary("mariadbd")
        assert exe is not None
        proc = self._spawn([exe, f"--defaults-file={self.conf}"])  # defaults-file FIRST

        def ready() -> None:
            if app_user:
                self._login()
            else:
                pymysql.connect(
                    unix_socket=str(self.socket), user="root", connect_timeout=1
                ).close()

        _wait(ready, "mariadbd", proc, self.log)

    def _login(self) -> None:
        pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            database=self.database,
            connect_timeout=1,
        ).close()

    def execute(self, sql: str) -> None:
        """Run one admin statement as the app user (e.g. CREATE DATABASE for a test)."""
        conn = pymysql.connect(
            host="127.0.0.1", port=self.port, user=self.user, password=self.password
        )
        with conn, conn.cursor() as cur:
            cur.execute(sql)


def _http_ok(url: str, data: bytes | None = None) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, data=data, timeout=2) as resp:
        body: bytes = resp.read()
        return body


@dataclass
class InfluxDBServer(_Daemon):
    """influxd 1.x with its own data dirs, RPC on another free port, no usage reporting."""

    rpc_port: int = field(default_factory=free_port)
    database: str = "collector"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = binary("influxd")
        if exe is None:
            raise RuntimeError("influxd is not installed")
        data = self.root / "data"
        conf = self.root / "influxdb.conf"
        # ``reporting-enabled`` is Debian's spelling of ``reporting-disabled``.
        lines = ["reporting-disabled = true", "reporting-enabled = false"]
        lines += [f'bind-address = "127.0.0.1:{self.rpc_port}"', "[meta]", f'dir = "{data}/meta"']
        lines += ["[data]", f'dir = "{data}/data"', f'wal-dir = "{data}/wal"']
        lines += ["query-log-enabled = false", "[http]", f'bind-address = "127.0.0.1:{self.port}"']
        lines += ["log-enabled = false", "[ifql]", "enabled = false", "[monitor]"]
        lines += ["store-enabled = false", "[logging]", "suppress-logo = true"]
        self.root.mkdir(parents=True, exist_ok=True)
        conf.write_text("\n".join([*lines, ""]))
        proc = self._spawn([exe, "-config", str(conf)])
        _wait(self._ping, "influxd", proc, self.log)
        self.query(f'CREATE DATABASE "{self.database}"')

    def _ping(self) -> None:
        _http_ok(f"{self.url}/ping")

    def query(self, q: str) -> bytes:
        """POST one InfluxQL statement to /query (CREATE/DROP DATABASE and friends)."""
        import urllib.parse

        return _http_ok(f"{self.url}/query", urllib.parse.urlencode({"q": q}).encode())


@dataclass
class VictoriaMetricsServer(_Daemon):
    """victoria-metrics single node; accepts InfluxDB line protocol on /write and /api/v2/write."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = binary("victoria-metrics")
        if exe is None:
            raise RuntimeError("victoria-metrics is not installed")
        argv = [exe, f"-httpListenAddr=127.0.0.1:{self.port}"]
        argv += [f"-storageDataPath={self.root / 'data'}", "-search.latencyOffset=0s"]
        proc = self._spawn(argv)
        _wait(self._ping, "victoria-metrics", proc, self.log)

    def _ping(self) -> None:
        _http_ok(f"{self.url}/health")
