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
from typing import TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values

N = TypeVar("N", int, float)


class SettingsError(ValueError):
    """A setting has a value the gateway cannot use; the message names the variable."""


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


def _plain(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounded(convert: Callable[[str], N], noun: str, low: N, high: N) -> Callable[[str, str], N]:
    def parse(name: str, raw: str) -> N:
        try:
            value = convert(raw)
        except ValueError:
            raise SettingsError(f"{name} must be {noun}, not {raw!r}") from None
        if not low <= value <= high:
            raise SettingsError(f"{name} must be between {_plain(low)} and {_plain(high)}, not {_plain(value)}")
        return value

    return parse


def _integer(low: int, high: int) -> Callable[[str, str], int]:
    return _bounded(int, "a whole number", low, high)


def _number(low: float, high: float) -> Callable[[str, str], float]:
    return _bounded(float, "a number", low, high)


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


def _secret(name: str, raw: str) -> str:
    value = raw.strip()
    if value and len(value) < 32:
        raise SettingsError(f"{name} must be at least 32 characters long")
    return value


def _usable_cpus(most: int) -> int:
    """The CPUs this process may run on (its affinity, not the machine's count), within 1..`most`."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(most, usable))


_ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
_TOKEN_ALGORITHMS = {name.lower(): name for name in (*_ASYMMETRIC, "HS256", "HS384", "HS512")}


def _algorithms(name: str, raw: str) -> tuple[str, ...]:
    chosen: list[str] = []
    for item in raw.split(","):
        key = item.strip().lower()
        if not key:
            continue
        if key == "none":
            raise SettingsError(f"{name} must not allow 'none': unsigned tokens are never accepted")
        if key not in _TOKEN_ALGORITHMS:
            raise SettingsError(f"{name}: {item.strip()!r} is not one of {', '.join(_TOKEN_ALGORITHMS.values())}")
        chosen.append(_TOKEN_ALGORITHMS[key])
    return tuple(dict.fromkeys(chosen))


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
    kdf_workers: int = field(default_factory=lambda: _usable_cpus(64))
    """Worker threads for OTP hashing (gateway/engine/otp.py `KdfPool`): hashes at once, the rest wait."""
    demo_data: bool = True
    """`gateway serve` loads the demo registry into an empty local store."""
    log_level: str = "info"
    # Abuse limits (gateway/rate_limits.py, gateway/engine/engine.py); kept in the store, so shared by replicas.
    rate_limit_device: int = 5
    """Regenerations of one device per window (0: no limit)."""
    rate_limit_caller: int = 60
    """Regenerations by one caller (token subject) per window (0: no limit)."""
    rate_limit_window_seconds: int = 900
    bootstrap_lockout_attempts: int = 10
    bootstrap_rate_limit_client: int = 30
    """Device bootstrap attempts from one client address per window (0: no limit)."""
    bootstrap_rate_limit_access_id: int = 20
    """Device bootstrap attempts with one access ID per window (0: no limit)."""
    bootstrap_rate_limit_window_seconds: int = 60
    """Consecutive wrong OTPs that lock a pair until it is regenerated."""
    # Upstream mode (GATEWAY_BACKEND=upstream): gateway/upstream/.
    upstream_connect_timeout_seconds: float = 5.0
    upstream_read_timeout_seconds: float = 120.0
    """Oracle's best-practice page asks clients to expect up to a 2-minute network timeout."""
    upstream_total_timeout_seconds: float = 150.0
    """The whole call, connect retries and a slowly dripping body included (the read timeout is per read)."""
    upstream_write_timeout_seconds: float = 30.0
    upstream_pool_timeout_seconds: float = 5.0
    upstream_max_connections: int = 64
    upstream_max_keepalive_connections: int = 32
    upstream_keepalive_expiry_seconds: float = 4.0
    """Drop idle pooled connections before the upstream does: a request sent on a connection the
    server is closing may have arrived, so it could not be resent."""
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
    # Authentication (gateway/auth.py) and GraphQL limits (gateway/api/guards.py, gateway/http.py).
    auth_jwks_url: str = ""
    """The identity provider's JWKS: tokens are checked against its keys, chosen by `kid`."""
    auth_hs256_secret: str = field(default="", repr=False)
    """A shared HS256 secret instead of a JWKS. With neither (and not in production): a development
    secret kept in `data_dir`, the one `gateway token` signs with."""
    auth_issuer: str = "clinical-one-gateway-dev"
    auth_audience: str = "clinical-one-gateway"
    auth_algorithms: tuple[str, ...] = ()
    """Allow-list of token algorithms; empty: RS256 and ES256 with a JWKS, HS256 with a secret. Never `none`."""
    auth_leeway_seconds: int = 30
    auth_jwks_cache_seconds: int = 300
    """Keys older than this are refetched; an unknown `kid` refetches at most once a minute."""
    auth_jwks_timeout_seconds: float = 5.0
    insecure_disable_auth: bool = False
    """Let every caller in, unauthenticated (development only; refused with GATEWAY_PRODUCTION)."""
    production: bool = False
    """Introspection and GraphiQL off; refuses GATEWAY_INSECURE_DISABLE_AUTH and the development secret."""
    graphql_max_depth: int = 10
    graphql_max_aliases: int = 15
    """Aliases in one document, those inside fragments included."""
    graphql_max_tokens: int = 1000
    graphql_max_selections: int = 1000
    """Field selections a document expands to, each fragment counted every time it is spread."""
    graphql_document_cache_size: int = 256
    """Distinct documents whose parse and validation are kept (least recently used dropped; 0: none).
    Only documents of at most 256 tokens and 4 KiB are kept: at worst about 40 MiB at 256."""
    max_body_bytes: int = 64 * 1024
    """Largest request body on any route; larger ones get 413."""
    max_header_bytes: int = 32 * 1024
    """Largest total of request header lines on any route; larger ones get 431."""
    trusted_documents: str = ""
    audit_key_file: str = ""
    """File holding the audit trail's MAC key (hex, ≥ 32 bytes). Empty: a key made once in
    `data_dir` (refused in production, where the key must live outside the data folder)."""
    """JSON file of sha256 -> GraphQL document: when set, only those documents are executed."""

    @property
    def allowed_auth_algorithms(self) -> tuple[str, ...]:
        if self.auth_algorithms:
            return self.auth_algorithms
        return ("RS256", "ES256") if self.auth_jwks_url else ("HS256",)

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
                    variable = f"GATEWAY_{name.upper()}"
                    raise SettingsError(f"{variable} is required when GATEWAY_UPSTREAM_AUTH=client-credentials")
        if self.upstream_max_concurrency > self.upstream_max_connections:
            raise SettingsError("GATEWAY_UPSTREAM_MAX_CONCURRENCY must not exceed GATEWAY_UPSTREAM_MAX_CONNECTIONS")
        self._check_auth()

    def _check_auth(self) -> None:
        if not self.auth_issuer or not self.auth_audience:
            raise SettingsError("GATEWAY_AUTH_ISSUER and GATEWAY_AUTH_AUDIENCE must not be empty")
        if self.auth_jwks_url and self.auth_hs256_secret:
            raise SettingsError("set GATEWAY_AUTH_JWKS_URL or GATEWAY_AUTH_HS256_SECRET, not both")
        symmetric = {name for name in self.allowed_auth_algorithms if name.startswith("HS")}
        if self.auth_jwks_url and symmetric:
            raise SettingsError("GATEWAY_AUTH_ALGORITHMS must not list HS* algorithms with GATEWAY_AUTH_JWKS_URL")
        if not self.auth_jwks_url and symmetric != set(self.allowed_auth_algorithms):
            raise SettingsError("GATEWAY_AUTH_ALGORITHMS may list only HS* algorithms without GATEWAY_AUTH_JWKS_URL")
        if self.production:
            if self.insecure_disable_auth:
                raise SettingsError("GATEWAY_INSECURE_DISABLE_AUTH=true is refused when GATEWAY_PRODUCTION=true")
            if not (self.auth_jwks_url or self.auth_hs256_secret):
                raise SettingsError(
                    "GATEWAY_PRODUCTION=true needs GATEWAY_AUTH_JWKS_URL (or GATEWAY_AUTH_HS256_SECRET): "
                    "the development secret file is refused in production"
                )
            jwks = urlsplit(self.auth_jwks_url)
            if jwks.scheme == "http" and jwks.hostname not in {"127.0.0.1", "localhost", "::1"}:
                raise SettingsError("GATEWAY_AUTH_JWKS_URL must use https when GATEWAY_PRODUCTION=true")


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
    "kdf_workers": _integer(1, 64),
    "demo_data": _boolean,
    "log_level": _choice("debug", "info", "warning", "error"),
    "rate_limit_device": _integer(0, 1_000_000),
    "rate_limit_caller": _integer(0, 1_000_000),
    "rate_limit_window_seconds": _integer(1, 7 * 24 * 60 * 60),
    "bootstrap_lockout_attempts": _integer(1, 1000),
    "bootstrap_rate_limit_client": _integer(0, 1_000_000),
    "bootstrap_rate_limit_access_id": _integer(0, 1_000_000),
    "bootstrap_rate_limit_window_seconds": _integer(1, 24 * 60 * 60),
    "upstream_connect_timeout_seconds": _number(0.01, 600),
    "upstream_read_timeout_seconds": _number(0.01, 3600),
    "upstream_total_timeout_seconds": _number(0.01, 3600),
    "upstream_write_timeout_seconds": _number(0.01, 600),
    "upstream_pool_timeout_seconds": _number(0.01, 600),
    "upstream_max_connections": _integer(1, 10_000),
    "upstream_max_keepalive_connections": _integer(0, 10_000),
    "upstream_keepalive_expiry_seconds": _number(0, 600),
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
    "auth_jwks_url": _endpoint_url,
    "auth_hs256_secret": _secret,
    "auth_issuer": _text,
    "auth_audience": _text,
    "auth_algorithms": _algorithms,
    "auth_leeway_seconds": _integer(0, 300),
    "auth_jwks_cache_seconds": _integer(60, 24 * 60 * 60),
    "auth_jwks_timeout_seconds": _number(0.1, 60),
    "insecure_disable_auth": _boolean,
    "production": _boolean,
    "graphql_max_depth": _integer(2, 100),
    "graphql_max_aliases": _integer(0, 1000),
    "graphql_max_tokens": _integer(100, 100_000),
    "graphql_max_selections": _integer(10, 1_000_000),
    "graphql_document_cache_size": _integer(0, 10_000),
    "max_body_bytes": _integer(1024, 100 * 1024 * 1024),
    "max_header_bytes": _integer(4096, 1024 * 1024),
    "trusted_documents": _file,
    "audit_key_file": _file,
}
