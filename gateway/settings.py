"""The one `Settings` object: every `GATEWAY_*` variable, its default and its check.

Values come from the environment, then from a `.env`-style file (`GATEWAY_ENV_FILE`, default
`.env` in the working directory) for names the environment does not set.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values


class SettingsError(ValueError):
    """A setting has a value the gateway cannot use; the message names the variable."""


def _integer(low: int, high: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a whole number, not {raw!r}") from None
        if not low <= value <= high:
            raise SettingsError(f"{name} must be between {low} and {high}, not {value}")
        return value

    return parse


def _choice(*allowed: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise SettingsError(f"{name} must be one of {', '.join(allowed)}, not {raw!r}")
        return value

    return parse


def _boolean(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, not {raw!r}")


def _number(low: float, high: float) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name} must be a number, not {raw!r}") from None
        if not low <= value <= high:
            raise SettingsError(f"{name} must be between {low:g} and {high:g}, not {value:g}")
        return value

    return parse


def _text(name: str, raw: str) -> str:
    return raw.strip()


def _database_url(name: str, raw: str) -> str:
    value = raw.strip()
    if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise SettingsError(f"{name} must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
    return value


def _identifier(name: str, raw: str) -> str:
    value = raw.strip()
    if value and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", value):
        raise SettingsError(f"{name} must be a plain SQL identifier (letters, digits, underscore)")
    return value


def _http_url(name: str, raw: str) -> str:
    value = raw.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.path or parts.query:
        raise SettingsError(f"{name} must be a base URL: scheme, host and optional port, like https://tenant.example")
    return value


def _endpoint_url(name: str, raw: str) -> str:
    value = raw.strip()
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname or parts.fragment:
        raise SettingsError(f"{name} must be an http(s) URL, like https://idcs.example/oauth2/v1/token")
    return value


def _file(name: str, raw: str) -> str:
    value = raw.strip()
    if value and not Path(value).is_file():
        raise SettingsError(f"{name} must name a readable file, not {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """The gateway's configuration. Field `x` is read from `GATEWAY_X`."""

    backend: str = "local"
    database_url: str = ""
    """Empty means a SQLite file `gateway.sqlite3` in `data_dir`."""
    database_schema: str = ""
    """PostgreSQL schema for the store's tables (empty: the connection's default)."""
    data_dir: str = "data"
    upstream_url: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    otp_ttl_seconds: int = 24 * 60 * 60
    kdf_cost: int = 14
    """log2 of scrypt's N for OTP hashes (14: 16 MiB and some tens of milliseconds per hash)."""
    demo_data: bool = True
    """`gateway serve` loads the demo registry into an empty local store."""
    log_level: str = "info"
    # Upstream mode (GATEWAY_BACKEND=upstream): gateway/upstream/.
    upstream_connect_timeout_seconds: float = 5.0
    upstream_read_timeout_seconds: float = 120.0
    """Oracle's best-practice page asks clients to expect up to a 2-minute network timeout."""
    upstream_write_timeout_seconds: float = 30.0
    upstream_pool_timeout_seconds: float = 5.0
    upstream_max_connections: int = 64
    upstream_max_keepalive_connections: int = 32
    upstream_max_concurrency: int = 32
    """Upstream calls in flight at once; the rest wait (up to the queue timeout) for a turn."""
    upstream_queue_timeout_seconds: float = 10.0
    upstream_breaker_failure_threshold: int = 5
    """Consecutive upstream failures (unreachable, timed out, 502/503/504, unreadable) that open the breaker."""
    upstream_breaker_reset_seconds: float = 30.0
    """How long an open breaker fails fast before it lets one trial call through."""
    upstream_connect_retries: int = 2
    """Extra attempts after a failure to connect (nothing was sent); nothing else is ever resent."""
    upstream_retry_backoff_seconds: float = 0.25
    upstream_ca_file: str = ""
    """PEM bundle to verify the upstream's TLS certificate (empty: certifi's bundle)."""
    upstream_auth: str = "forward"
    """`forward` (the caller's Authorization header) or `client-credentials` (a service account)."""
    upstream_token_url: str = ""
    upstream_client_id: str = ""
    upstream_client_secret: str = field(default="", repr=False)
    upstream_scope: str = ""

    @property
    def store_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{Path(self.data_dir).resolve() / 'gateway.sqlite3'}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and check every setting; raise `SettingsError` naming the first bad variable."""
        env = dict(os.environ if environ is None else environ)
        env_file = env.get("GATEWAY_ENV_FILE", ".env")
        if env_file and Path(env_file).is_file():
            for key, value in dotenv_values(env_file).items():
                if key.startswith("GATEWAY_") and value is not None:
                    env.setdefault(key, value)
        values: dict[str, object] = {}
        for f in fields(cls):
            name = f"GATEWAY_{f.name.upper()}"
            if name in env:
                values[f.name] = _PARSERS[f.name](name, env[name])
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        """Rules across settings."""
        if self.backend == "upstream" and not self.upstream_url:
            raise SettingsError("GATEWAY_UPSTREAM_URL is required when GATEWAY_BACKEND=upstream")
        if self.upstream_auth == "client-credentials":
            for name in ("upstream_token_url", "upstream_client_id", "upstream_client_secret"):
                if not getattr(self, name):
                    raise SettingsError(f"GATEWAY_{name.upper()} is required when GATEWAY_UPSTREAM_AUTH=client-credentials")
        if self.upstream_max_concurrency > self.upstream_max_connections:
            raise SettingsError("GATEWAY_UPSTREAM_MAX_CONCURRENCY must not exceed GATEWAY_UPSTREAM_MAX_CONNECTIONS")


_PARSERS: dict[str, Callable[[str, str], object]] = {
    "backend": _choice("local", "upstream"),
    "database_url": _database_url,
    "database_schema": _identifier,
    "data_dir": _text,
    "upstream_url": _http_url,
    "host": _text,
    "port": _integer(0, 65535),
    "otp_ttl_seconds": _integer(60, 30 * 24 * 60 * 60),
    "kdf_cost": _integer(4, 20),
    "demo_data": _boolean,
    "log_level": _choice("debug", "info", "warning", "error"),
    "upstream_connect_timeout_seconds": _number(0.01, 600),
    "upstream_read_timeout_seconds": _number(0.01, 3600),
    "upstream_write_timeout_seconds": _number(0.01, 600),
    "upstream_pool_timeout_seconds": _number(0.01, 600),
    "upstream_max_connections": _integer(1, 10_000),
    "upstream_max_keepalive_connections": _integer(0, 10_000),
    "upstream_max_concurrency": _integer(1, 10_000),
    "upstream_queue_timeout_seconds": _number(0, 600),
    "upstream_breaker_failure_threshold": _integer(1, 1000),
    "upstream_breaker_reset_seconds": _number(0.1, 3600),
    "upstream_connect_retries": _integer(0, 5),
    "upstream_retry_backoff_seconds": _number(0, 10),
    "upstream_ca_file": _file,
    "upstream_auth": _choice("forward", "client-credentials"),
    "upstream_token_url": _endpoint_url,
    "upstream_client_id": _text,
    "upstream_client_secret": _text,
    "upstream_scope": _text,
}
