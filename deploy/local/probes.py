"""Readiness probes of the local stack's services: each returns once the service is
usable by the app, or raises (the caller retries until its deadline)."""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import urllib.parse
import urllib.request
from pathlib import Path

from collector.config import Settings


def kafka(host: str, port: int) -> None:
    """A real metadata round trip (after a plain connect: aiokafka logs every refusal)."""
    from aiokafka import AIOKafkaProducer

    with socket.create_connection((host, port), timeout=0.5):
        pass

    async def metadata() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=f"{host}:{port}")
        try:
            await producer.start()  # bootstraps: a real metadata round trip
        finally:
            await producer.stop()

    asyncio.run(metadata())


def redis(settings: Settings) -> None:
    import redis as client_lib

    url = settings.redis.url.get_secret_value()
    with client_lib.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as client:
        client.ping()


def mariadb(admin_socket: Path, settings: Settings) -> None:
    """Log in as the app user; on a fresh server create its database and account first."""
    import pymysql

    kw = settings.mysql.connect_kwargs()
    app = {"host": kw["host"], "port": kw["port"], "user": kw["user"]}
    app |= {"password": kw["password"], "database": kw["db"], "connect_timeout": 2}
    try:
        pymysql.connect(**app).close()
        return
    except pymysql.err.OperationalError as exc:
        if exc.args[0] not in (1044, 1045, 1049, 1130):  # not: no such user or database
            raise
    # Root (as our OS user) authenticates only over the unix socket.
    me = pwd.getpwuid(os.geteuid()).pw_name
    admin = pymysql.connect(unix_socket=str(admin_socket), user=me, connect_timeout=2)
    db = "`" + kw["db"].replace("`", "``") + "`"
    with admin, admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {db}")
        password = admin.escape(kw["password"])
        for host in ("localhost", "127.0.0.1"):
            account = f"{admin.escape(kw['user'])}@{admin.escape(host)}"
            cur.execute(f"CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {password}")
            cur.execute(f"ALTER USER {account} IDENTIFIED BY {password}")  # DSN may change
            cur.execute(f"GRANT ALL PRIVILEGES ON {db}.* TO {account}")
    pymysql.connect(**app).close()


def influx(settings: Settings) -> None:
    influx = settings.influx
    with urllib.request.urlopen(f"{influx.url}/ping", timeout=2) as resp:
        if resp.status != 204:
            raise ConnectionError(f"/ping answered {resp.status}")
    # Our server runs without auth; an external one is never probed.
    body = urllib.parse.urlencode({"q": f'CREATE DATABASE "{influx.database}"'}).encode()
    with urllib.request.urlopen(f"{influx.url}/query", data=body, timeout=5) as resp:
        resp.read()
