"""The one `Settings` object: every `GATEWAY_*` variable, its default and its check.

Values come from the environment, then from a `.env`-style file (`GATEWAY_ENV_FILE`, default
`.env` in the working directory) for names the environment does not set.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
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
}
