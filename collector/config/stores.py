"""Settings of the stores collector reads and writes: Redis, MySQL, InfluxDB (their own
module so that settings.py stays small)."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator

from collector.config.section import Section as _Section


class RedisSettings(_Section):
    """Enrichment cache (cache-aside in front of MySQL ``users``)."""

    url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:16379/0"), description="redis:// URL of the cache."
    )
    user_ttl: int = Field(default=600, ge=1, description="TTL (s) of a cached user profile.")
    negative_ttl: int = Field(default=60, ge=1, description="TTL (s) of an unknown-user marker.")
    timeout: float = Field(default=0.25, gt=0, description="Per-call Redis timeout (s).")
    key_prefix: str = Field(default="collector:user:", description="Cache key prefix.")
    local_ttl: float = Field(default=5.0, ge=0, description="Seconds a worker keeps a profile Redis gave it, in process (0: off). An update on the users topic drops it at once; a change made elsewhere (the CLI, an update consumed by another worker) is seen within this long.")  # noqa: E501
    local_max: int = Field(default=100_000, ge=1, description="Profiles a worker keeps in process (oldest go first).")  # noqa: E501


class MySQLSettings(_Section):
    """Source of truth for users, and the aggregate sink."""

    dsn: SecretStr = Field(
        default=SecretStr("mysql://collector:collector@127.0.0.1:13306/collector"),
        description="mysql://user:password@host:port/database",
    )
    timeout: float = Field(default=2.0, gt=0, description="Connect/query timeout (s).")
    pool_size: int = Field(default=4, ge=1, le=64, description="Connection pool size.")

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, value: SecretStr) -> SecretStr:
        parsed = urlsplit(value.get_secret_value())
        if parsed.scheme not in ("mysql", "mariadb") or not parsed.hostname:
            raise ValueError("must look like mysql://user:password@host:port/database")
        if not parsed.path.strip("/"):
            raise ValueError("must name a database (mysql://…/database)")
        return value

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiomysql, parsed from the DSN."""
        parsed = urlsplit(self.dsn.get_secret_value())
        return {
            "host": parsed.hostname or "127.0.0.1",
            "port": parsed.port or 3306,
            "user": unquote(parsed.username or ""),
            "password": unquote(parsed.password or ""),
            "db": parsed.path.strip("/"),
        }


class InfluxSettings(_Section):
    """Aggregate sink. ``v1`` writes to ``/write`` (1.x, also 2.x/3.x); ``v2`` to /api/v2."""

    url: str = Field(default="http://127.0.0.1:18086", description="InfluxDB base URL.")
    api: Literal["v1", "v2"] = Field(default="v1", description="Write API to use.")
    database: str = Field(default="collector", description="v1 database.")
    retention_policy: str = Field(default="", description="v1 retention policy (empty: default).")
    username: str = Field(default="", description="v1 user.")
    password: SecretStr = Field(default=SecretStr(""), description="v1 password.")
    org: str = Field(default="collector", description="v2 organisation.")
    bucket: str = Field(default="collector", description="v2 bucket.")
    token: SecretStr = Field(default=SecretStr(""), description="v2 API token.")
    timeout: float = Field(default=5.0, gt=0, description="HTTP timeout (s).")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


__all__ = ["InfluxSettings", "MySQLSettings", "RedisSettings"]
