"""Every `GATEWAY_*` variable, written down once: its field, type, bounds, default and meaning.

`Settings` holds the settings of the whole process and one group per part of the gateway, which
receives only its group: `auth` (the authenticator), `upstream` (the upstream client), `graphql`
(the schema's limits and the view), `rate_limits` (the regeneration policy and the device
endpoint), `http` (where `gateway serve` listens and the request-size middlewares).

Each group is a pydantic-settings `BaseSettings` with its own `env_prefix`, so the variables stay
flat: `GATEWAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS` is `upstream.connect_timeout_seconds`. The few
names outside their group's prefix are validation aliases (`GATEWAY_INSECURE_DISABLE_AUTH` is
`auth.insecure_disable_auth`). `VARIABLES` lists them all, by name.

`Settings()` is the defaults. `Settings.from_env()` reads the environment, then a `.env`-style file
(`GATEWAY_ENV_FILE`, default `.env`) for the names the environment does not set; a value it cannot
use is a `SettingsError`, one line naming the variable. The README's settings tables are rendered
from these fields: `python -m gateway.settings [--check]` (`scripts/settings-table`).
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import annotated_types
from dotenv import dotenv_values
from jwt.algorithms import get_default_algorithms
from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

PREFIX = "GATEWAY_"
ENV_FILE = "GATEWAY_ENV_FILE"
"""The `.env`-style file `Settings.from_env` reads: not a field, it says where the fields come from."""


_MIN_SECRET_BITS = 128
"""What a production HS256 secret must carry, estimated from its characters."""


def _entropy_bits(secret: str) -> float:
    """An upper bound of the secret's entropy: its length times the Shannon entropy of its characters
    (40 times `k` carries none; `secrets.token_urlsafe(48)` about 340 bits)."""
    counts = [secret.count(char) for char in set(secret)]
    per_char = -sum(count / len(secret) * math.log2(count / len(secret)) for count in counts)
    return per_char * len(secret)


class SettingsError(ValueError):
    """A setting has a value the gateway cannot use; the message names the variable."""


# ---------------------------------------------------------------------------------------------
# Where values come from: the variables `Settings.from_env` gathered, never `os.environ` itself.

_given: ContextVar[Mapping[str, str] | None] = ContextVar("gateway_settings_variables", default=None)


class _GivenVariables(EnvSettingsSource):
    """pydantic-settings' environment source (prefixes, aliases, case) over the variables
    `Settings.from_env` gathered: outside it there are none, so `Settings()` is the defaults."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name.lower(): value for name, value in (_given.get() or {}).items()}

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        return value  # a variable is text, never JSON: the field's validators read it (a comma list too)


class _Group(BaseSettings):
    """What every settings class shares: frozen, whitespace ignored, each field's docstring its description
    (the README's meaning), read from `_GivenVariables`."""

    model_config = SettingsConfigDict(
        frozen=True, populate_by_name=True, str_strip_whitespace=True, use_attribute_docstrings=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _GivenVariables(settings_cls)


# ---------------------------------------------------------------------------------------------
# Value checks that a type and its bounds cannot say. Their messages follow the variable's name.


def _lowered(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _database_url(value: str) -> str:
    if value and not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
    return value


def _identifier(value: str) -> str:
    if value and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", value):
        raise ValueError("must be a plain SQL identifier (letters, digits, underscore)")
    return value


def _base_url(value: str) -> str:
    value = value.rstrip("/")
    parts = urlsplit(value)
    if value and (parts.scheme not in {"http", "https"} or not parts.hostname or parts.path or parts.query):
        raise ValueError("must be a base URL: scheme, host and optional port, like https://tenant.example")
    return value


def _endpoint_url(value: str) -> str:
    parts = urlsplit(value)
    if value and (parts.scheme not in {"http", "https"} or not parts.hostname or parts.fragment):
        raise ValueError("must be an http(s) URL, like https://idcs.example/oauth2/v1/token")
    return value


def _readable_file(value: str) -> str:
    if value and not Path(value).is_file():
        raise ValueError(f"must name a readable file, not {value!r}")
    return value


def _long_secret(value: SecretStr) -> SecretStr:
    if 0 < len(value.get_secret_value()) < 32:
        raise ValueError("must be at least 32 characters long")
    return value


_TOKEN_ALGORITHMS = {name.lower(): name for name in get_default_algorithms() if name != "none"}
"""PyJWT's names (it verifies the signatures); which of them fits which key is `gateway.auth.keys`'s table."""


def _algorithm_list(value: object) -> object:
    """`RS256, es256` → ("RS256", "ES256"): PyJWT's spelling, each once, `none` refused."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        return value
    chosen: list[str] = []
    for item in (str(item).strip() for item in items):
        if item.lower() == "none":
            raise ValueError("must not allow 'none': unsigned tokens are never accepted")
        if item and item.lower() not in _TOKEN_ALGORITHMS:
            known = ", ".join(_TOKEN_ALGORITHMS.values())
            raise ValueError(f"may list only algorithms PyJWT verifies: {item!r} is not one of {known}")
        if item:
            chosen.append(_TOKEN_ALGORITHMS[item.lower()])
    return tuple(dict.fromkeys(chosen))


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(item: str) -> str | None:
    """`HTTPS://App.example:443` → `https://app.example`: the origin as a browser sends it in `Origin`
    (scheme and host lowercase, the scheme's default port left out), or None when `item` is not one."""
    parts = urlsplit(item)
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        return None
    if (
        parts.scheme not in _DEFAULT_PORTS
        or not parts.hostname
        or parts.username is not None
        or parts.password is not None
        or item.lower() != f"{parts.scheme}://{parts.netloc}".lower()  # a path, query or fragment
    ):
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + ("" if port in (None, _DEFAULT_PORTS[parts.scheme]) else f":{port}")


def _origin_list(value: object) -> object:
    """`https://a.example, http://127.0.0.1:3000` → ("https://a.example", "http://127.0.0.1:3000"): each an
    origin (scheme, host, optional port; no path), or `*`. Each is normalised as browsers send it, since
    Starlette compares the `Origin` header with the list as written: `https://App.example:443` would
    otherwise never match."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple):
        return value
    origins: list[str] = []
    for item in (str(item).strip() for item in items):
        origin = "*" if item == "*" else _origin(item) if item else None
        if origin is not None:
            origins.append(origin)
        elif item:
            raise ValueError(
                f"must list origins such as https://app.example or http://127.0.0.1:3000 (or *), not {item!r}"
            )
    return tuple(dict.fromkeys(origins))


def _usable_cpus(most: int = 64) -> int:
    """The CPUs this process may run on (its affinity, not the machine's count), within 1..`most`."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(most, usable))


Choice = BeforeValidator(_lowered)
DatabaseUrl = Annotated[str, AfterValidator(_database_url)]
Identifier = Annotated[str, AfterValidator(_identifier)]
BaseUrl = Annotated[str, AfterValidator(_base_url)]
EndpointUrl = Annotated[str, AfterValidator(_endpoint_url)]
ReadableFile = Annotated[str, AfterValidator(_readable_file)]
Secret = Annotated[SecretStr, AfterValidator(_long_secret)]
Algorithms = Annotated[tuple[str, ...], BeforeValidator(_algorithm_list)]
Origins = Annotated[tuple[str, ...], BeforeValidator(_origin_list)]

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_MINUTE, _DAY = 60, 24 * 60 * 60


# ---------------------------------------------------------------------------------------------
# The groups. A field's docstring is its description: its meaning in the README's tables.


class HttpSettings(_Group):
    """Where `gateway serve` listens and what any request may carry (`gateway.http`'s middlewares)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX)

    host: str = "127.0.0.1"
    """the interface `gateway serve` listens on"""
    port: int = Field(8000, ge=0, le=65535)
    """the port `gateway serve` listens on"""
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=100 * 1024 * 1024)
    """largest request body on any route; a larger one gets 413, whether it declares its length or streams it"""
    max_header_bytes: int = Field(32 * 1024, ge=4096, le=1024 * 1024)
    """largest total of request header lines on any route; a larger one gets 431"""
    cors_origins: Origins = ()
    """comma-separated origins whose pages may call the gateway from a browser (CORS: `Authorization` and
    `Content-Type` allowed, `X-Request-ID` exposed); `*` any origin (refused with `GATEWAY_PRODUCTION=true`);
    empty: no CORS headers, so browsers let only the gateway's own pages read its answers"""


class AuthSettings(_Group):
    """How bearer tokens are checked (`gateway.auth`)."""

    model_config = SettingsConfigDict(env_prefix=f"{PREFIX}AUTH_")

    jwks_url: EndpointUrl = ""
    """the identity provider's JWKS: tokens are checked against its keys, chosen by `kid`"""
    hs256_secret: Secret = SecretStr("")
    """a shared HS256 secret (at least 32 characters) instead of a JWKS, never with one. With neither (and not
    in production): a development secret kept in `GATEWAY_DATA_DIR`, the one `gateway token` signs with"""
    issuer: str = "clinical-one-gateway-dev"
    """the required `iss`"""
    audience: str = "clinical-one-gateway"
    """the required `aud`"""
    algorithms: Algorithms = ()
    """comma-separated allow-list of token algorithms; `none` is refused; HS* only with a secret, never with
    a JWKS. Empty: `RS256,ES256` with a JWKS, `HS256` otherwise"""
    leeway_seconds: int = Field(30, ge=0, le=300)
    """allowed clock skew for `exp`, `nbf` and `iat`"""
    max_token_lifetime_seconds: int = Field(_DAY, ge=_MINUTE, le=30 * _DAY)
    """longest lifetime a token may claim (`exp` - `iat`, or what is left of it); longer ones are refused"""
    jwks_cache_seconds: int = Field(300, ge=_MINUTE, le=_DAY)
    """age at which cached JWKS keys are fetched again; a token naming an unknown `kid` makes the gateway
    fetch them at most once a minute"""
    jwks_timeout_seconds: float = Field(5.0, ge=0.1, le=60)
    """timeout of a JWKS fetch"""
    insecure_disable_auth: bool = Field(False, validation_alias=f"{PREFIX}INSECURE_DISABLE_AUTH")
    """`true` lets every caller in without a token (development only; refused with `GATEWAY_PRODUCTION=true`)"""

    @property
    def allowed_algorithms(self) -> tuple[str, ...]:
        if self.algorithms:
            return self.algorithms
        return ("RS256", "ES256") if self.jwks_url else ("HS256",)

    @model_validator(mode="after")
    def _consistent(self) -> AuthSettings:
        if not self.issuer or not self.audience:
            raise ValueError("GATEWAY_AUTH_ISSUER and GATEWAY_AUTH_AUDIENCE must not be empty")
        if self.jwks_url and self.hs256_secret.get_secret_value():
            raise ValueError("set GATEWAY_AUTH_JWKS_URL or GATEWAY_AUTH_HS256_SECRET, not both")
        symmetric = {name for name in self.allowed_algorithms if name.startswith("HS")}
        if self.jwks_url and symmetric:
            raise ValueError("GATEWAY_AUTH_ALGORITHMS must not list HS* algorithms with GATEWAY_AUTH_JWKS_URL")
        if not self.jwks_url and symmetric != set(self.allowed_algorithms):
            raise ValueError("GATEWAY_AUTH_ALGORITHMS may list only HS* algorithms without GATEWAY_AUTH_JWKS_URL")
        return self


class RateLimitSettings(_Group):
    """Abuse limits, kept in the store and so shared by replicas (`gateway.rate_limits`): regenerations
    (`gateway.regeneration`), and device bootstraps and their lockout (`gateway.device`, the engine)."""

    model_config = SettingsConfigDict(env_prefix=f"{PREFIX}RATE_LIMIT_")

    device: int = Field(5, ge=0, le=1_000_000)
    """regenerations of one device per window (0: no limit)"""
    caller: int = Field(60, ge=0, le=1_000_000)
    """regenerations by one caller (token subject) per window (0: no limit)"""
    window_seconds: int = Field(900, ge=1, le=7 * _DAY)
    """the window of the two limits above"""
    bootstrap_client: int = Field(30, ge=0, le=1_000_000, validation_alias=f"{PREFIX}BOOTSTRAP_RATE_LIMIT_CLIENT")
    """device bootstrap attempts from one client address per window (0: no limit)"""
    bootstrap_access_id: int = Field(20, ge=0, le=1_000_000, validation_alias=f"{PREFIX}BOOTSTRAP_RATE_LIMIT_ACCESS_ID")
    """device bootstrap attempts with one access ID per window (0: no limit)"""
    bootstrap_window_seconds: int = Field(
        60, ge=1, le=_DAY, validation_alias=f"{PREFIX}BOOTSTRAP_RATE_LIMIT_WINDOW_SECONDS"
    )
    """the window of the two device bootstrap limits above"""
    bootstrap_lockout_attempts: int = Field(10, ge=1, le=1000, validation_alias=f"{PREFIX}BOOTSTRAP_LOCKOUT_ATTEMPTS")
    """consecutive wrong OTPs that lock a pair until it is regenerated"""


class GraphQLSettings(_Group):
    """Limits on GraphQL documents (`gateway.api`), checked before anything executes."""

    model_config = SettingsConfigDict(env_prefix=f"{PREFIX}GRAPHQL_")

    max_depth: int = Field(10, ge=2, le=100)
    """deepest selection (introspection fields excepted; graphql-core limits those itself)"""
    max_aliases: int = Field(15, ge=0, le=1000)
    """aliases per document, those inside fragments included"""
    max_tokens: int = Field(1000, ge=100, le=100_000)
    """lexical tokens per document (GraphiQL's introspection query uses about 200)"""
    max_selections: int = Field(1000, ge=10, le=1_000_000)
    """field selections per document once every fragment spread is replaced by its fragment (GraphiQL's
    introspection query expands to about 230)"""
    document_cache_size: int = Field(256, ge=0, le=10_000)
    """distinct documents kept parsed and validated (least recently used dropped first; `0`: none). Only
    documents of at most 256 tokens and 4 KiB are kept: at worst about 40 MiB at 256"""
    trusted_documents: ReadableFile = Field("", validation_alias=f"{PREFIX}TRUSTED_DOCUMENTS")
    """JSON file of trusted documents (sha256 → document); when set, only those run, and APQ registers nothing"""
    apq: bool = Field(True, validation_alias=f"{PREFIX}APQ")
    """Apollo's automatic persisted queries: a query sent by its `sha256Hash` alone runs once its text has been
    registered (`false`: `PERSISTED_QUERY_NOT_SUPPORTED`, and clients send the text)"""
    apq_cache_size: int = Field(1000, ge=1, le=100_000, validation_alias=f"{PREFIX}APQ_CACHE_SIZE")
    """documents APQ keeps per process (least recently used dropped first); together at most 8 MiB of text,
    each at most 32 KiB"""


class UpstreamSettings(_Group):
    """Upstream mode (`GATEWAY_BACKEND=upstream`): the client of the Clinical One tenant (`gateway.upstream`)."""

    model_config = SettingsConfigDict(env_prefix=f"{PREFIX}UPSTREAM_")

    url: BaseUrl = ""
    """base URL of the Clinical One tenant (scheme, host, optional port); required when
    `GATEWAY_BACKEND=upstream`"""
    connect_timeout_seconds: float = Field(5.0, ge=0.01, le=600)
    """TCP connect and TLS handshake timeout"""
    read_timeout_seconds: float = Field(120.0, ge=0.01, le=3600)
    """longest wait for each read of the response; Oracle asks clients to expect up to 2 minutes"""
    total_timeout_seconds: float = Field(150.0, ge=0.01, le=3600)
    """longest the whole call may take, connect retries and a slowly dripping answer included"""
    write_timeout_seconds: float = Field(30.0, ge=0.01, le=600)
    """longest wait for each write of the request"""
    pool_timeout_seconds: float = Field(5.0, ge=0.01, le=600)
    """longest wait for a free pooled connection"""
    max_connections: int = Field(64, ge=1, le=10_000)
    """connection pool size"""
    max_keepalive_connections: int = Field(32, ge=0, le=10_000)
    """idle connections kept open (`0`: no keep-alive)"""
    keepalive_expiry_seconds: float = Field(4.0, ge=0, le=600)
    """when an idle connection is dropped: keep it below the upstream's idle timeout (a request sent on a
    connection the server is closing may have arrived, so it could not be resent)"""
    max_concurrency: int = Field(32, ge=1, le=10_000)
    """upstream calls in flight at once, the rest waiting their turn; at most `GATEWAY_UPSTREAM_MAX_CONNECTIONS`"""
    queue_timeout_seconds: float = Field(10.0, ge=0, le=600)
    """longest wait for a turn, then `UpstreamUnavailableError`"""
    breaker_failure_threshold: int = Field(5, ge=1, le=1000)
    """consecutive upstream failures (unreachable, timed out, 502/503/504, unreadable) that open the breaker"""
    breaker_reset_seconds: float = Field(30.0, ge=0.1, le=3600)
    """how long an open breaker fails fast before it lets one trial call through"""
    connect_retries: int = Field(2, ge=0, le=5)
    """extra attempts after a failed connection (nothing was sent); nothing else is ever resent"""
    retry_backoff_seconds: float = Field(0.25, ge=0, le=10)
    """base of the jittered exponential backoff between those attempts"""
    ca_file: ReadableFile = ""
    """PEM bundle for checking the upstream's TLS certificate; empty: certifi's bundle"""
    auth: Annotated[Literal["forward", "client-credentials"], Choice] = "forward"
    """`forward` (the caller's Authorization header) or `client-credentials` (a service account)"""
    token_url: EndpointUrl = ""
    """the service account's OAuth2 token endpoint"""
    client_id: str = ""
    """the service account's client id"""
    client_secret: SecretStr = SecretStr("")
    """the service account's client secret (never logged or shown in a repr)"""
    scope: str = ""
    """scope to request, such as `<tenant>.ec-ors-svc.all`; empty: none sent"""
    token_timeout_seconds: float = Field(10.0, ge=0.01, le=600)
    """longest a token fetch may take, connect retries and a slowly dripping answer included; calls waiting
    for that fetch wait no longer (each call's `GATEWAY_UPSTREAM_TOTAL_TIMEOUT_SECONDS` bounds it too)"""

    @model_validator(mode="after")
    def _consistent(self) -> UpstreamSettings:
        if self.auth == "client-credentials":
            needed = {"token_url": self.token_url, "client_id": self.client_id}
            needed["client_secret"] = self.client_secret.get_secret_value()
            for name, value in needed.items():
                if not value:
                    variable = variable_of(UpstreamSettings, name)
                    raise ValueError(f"{variable} is required when GATEWAY_UPSTREAM_AUTH=client-credentials")
        if self.max_concurrency > self.max_connections:
            raise ValueError("GATEWAY_UPSTREAM_MAX_CONCURRENCY must not exceed GATEWAY_UPSTREAM_MAX_CONNECTIONS")
        return self


class Settings(_Group):
    """The gateway's configuration: the process's own settings, then one group per part."""

    model_config = SettingsConfigDict(env_prefix=PREFIX)

    backend: Annotated[Literal["local", "upstream"], Choice] = "local"
    """`local` (the credential engine) or `upstream` (the Clinical One REST endpoint)"""
    database_url: DatabaseUrl = ""
    """SQLAlchemy URL of the local store: `sqlite+aiosqlite:///path` or `postgresql+asyncpg://user@host:5432/db`;
    empty: the SQLite file `gateway.sqlite3` in `GATEWAY_DATA_DIR`"""
    database_schema: Identifier = ""
    """PostgreSQL schema for the gateway's tables; empty: the connection's default"""
    data_dir: str = "data"
    """folder of the default SQLite file, and of the development secret and audit key"""
    otp_ttl_seconds: int = Field(_DAY, ge=_MINUTE, le=30 * _DAY)
    """how long a new OTP works, in seconds"""
    kdf_cost: int = Field(14, ge=4, le=20)
    """log2 of scrypt's N for OTP hashes (14: 16 MiB and some tens of milliseconds per hash)"""
    kdf_workers: int = Field(
        default_factory=_usable_cpus,
        ge=1,
        le=64,
        json_schema_extra={"default_text": "the number of CPUs the process may use"},
    )
    """OTP hashes run at once, each on a worker thread of the KDF's own pool; more wait their turn without
    blocking the event loop"""
    otp_reserve: int = Field(64, ge=0, le=4096)
    """new OTPs the local engine keeps hashed ahead of need, in memory, so that a regeneration need not wait for
    the KDF (refilled in the background on the KDF's threads once a regeneration has hashed an OTP of its own);
    0: each regeneration hashes its own"""
    demo_data: bool = True
    """`gateway serve` loads the demo registry into an empty local store"""
    log_level: Annotated[Literal["debug", "info", "warning", "error"], Choice] = "info"
    """the level of the gateway's own loggers (libraries log from `info` up)"""
    log_format: Annotated[Literal["auto", "json", "text"], Choice] = "auto"
    """`json`: one JSON object a line, the request id on each, one access line a request; `text`: one line
    of text a record; `auto`: text when stderr is a terminal, JSON otherwise"""
    production: bool = False
    """introspection and GraphiQL off; no demo data; refuses `GATEWAY_INSECURE_DISABLE_AUTH`, the development
    secret, a predictable HS256 secret, plain-http upstream, token and JWKS URLs, an audit key in the data
    folder, `GATEWAY_CORS_ORIGINS=*` and `gateway token`"""
    allow_plaintext_loopback: bool = False
    """in production, allow plain `http://` upstream, token and JWKS URLs on a loopback address (a sidecar
    proxy that adds TLS); every other plain URL is refused there"""
    audit_key_file: ReadableFile = ""
    """file holding the audit trail's MAC key (hex, at least 32 bytes); empty: a key made once in
    `GATEWAY_DATA_DIR` (refused in production, where the key must live outside the data folder)"""
    metrics: bool = True
    """`GET /metrics` answers in Prometheus' text format, with no token (`false`: 404)"""
    otel: bool = False
    """OpenTelemetry traces (needs `pip install '.[otel]'`): a span per request, GraphQL operation, store
    transaction and upstream call, the caller's `traceparent` continued and sent upstream; the exporter, service
    name and sampler come from the standard `OTEL_*` variables"""
    shutdown_timeout_seconds: int = Field(25, ge=1, le=3600)
    """on SIGTERM, how long in-flight requests may run before they are cut, in seconds; `/readyz` answers
    503 from the signal on, then the pools close and the process exits 0 (keep it under the orchestrator's
    grace period: Kubernetes' default is 30 s)"""
    http: HttpSettings = Field(default_factory=HttpSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    graphql: GraphQLSettings = Field(default_factory=GraphQLSettings)
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)

    @property
    def store_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{Path(self.data_dir).resolve() / 'gateway.sqlite3'}"

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.backend == "upstream" and not self.upstream.url:
            raise ValueError("GATEWAY_UPSTREAM_URL is required when GATEWAY_BACKEND=upstream")
        if self.production:
            if self.auth.insecure_disable_auth:
                raise ValueError("GATEWAY_INSECURE_DISABLE_AUTH=true is refused when GATEWAY_PRODUCTION=true")
            if "*" in self.http.cors_origins:
                raise ValueError(
                    "GATEWAY_CORS_ORIGINS=* is refused when GATEWAY_PRODUCTION=true: list the origins of the front ends"
                )
            if not (self.auth.jwks_url or self.auth.hs256_secret.get_secret_value()):
                raise ValueError(
                    "GATEWAY_PRODUCTION=true needs GATEWAY_AUTH_JWKS_URL (or GATEWAY_AUTH_HS256_SECRET): "
                    "the development secret file is refused in production"
                )
            for variable, url in (
                ("GATEWAY_UPSTREAM_URL", self.upstream.url),
                ("GATEWAY_UPSTREAM_TOKEN_URL", self.upstream.token_url),
                ("GATEWAY_AUTH_JWKS_URL", self.auth.jwks_url),
            ):
                self._refuse_plaintext(variable, url)
            secret = self.auth.hs256_secret.get_secret_value()
            if secret and _entropy_bits(secret) < _MIN_SECRET_BITS:
                raise ValueError(
                    "GATEWAY_AUTH_HS256_SECRET is too predictable for GATEWAY_PRODUCTION=true (make one with: "
                    "python -c 'import secrets; print(secrets.token_urlsafe(48))')"
                )
        return self

    def _refuse_plaintext(self, variable: str, url: str) -> None:
        """In production every URL is https: plain http carries callers' tokens and the client
        secret in clear. Loopback only with `GATEWAY_ALLOW_PLAINTEXT_LOOPBACK=true` (a sidecar)."""
        parts = urlsplit(url)
        if not url or parts.scheme == "https":
            return
        if parts.hostname in _LOOPBACK and self.allow_plaintext_loopback:
            return
        hint = " (or, on loopback, GATEWAY_ALLOW_PLAINTEXT_LOOPBACK=true)" if parts.hostname in _LOOPBACK else ""
        raise ValueError(f"{variable} must use https when GATEWAY_PRODUCTION=true{hint}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and check every setting from `environ` (default: the process's environment) and the
        file `GATEWAY_ENV_FILE` names; raise `SettingsError` naming the first bad variable."""
        given = {name: value for name, (value, _) in gathered(environ).items()}
        token = _given.set(given)
        try:
            return _checked(cls)
        finally:
            _given.reset(token)

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes`, named as the variables without `GATEWAY_` (`upstream_connect_retries=0`
        for `GATEWAY_UPSTREAM_CONNECT_RETRIES`) and checked like them: `SettingsError` names the variable."""
        values = self.model_dump()
        for name, value in changes.items():
            variable = VARIABLES.get(f"{PREFIX}{name.upper()}")
            if variable is None:
                raise TypeError(f"no setting is named {name!r} (no variable {PREFIX}{name.upper()})")
            (values[variable.group] if variable.group else values)[variable.field] = value
        return _checked(lambda: Settings.model_validate(values))


ENVIRONMENT, DEFAULT = "environment", "default"


def gathered(environ: Mapping[str, str] | None = None) -> dict[str, tuple[str, str]]:
    """The variables `Settings.from_env` reads, each with where it came from: `environment`, or the path
    of the `.env`-style file `GATEWAY_ENV_FILE` names (default `.env`) for those the environment does not
    set. A variable in neither is absent: its field's default applies (`gateway settings` says `default`)."""
    env = os.environ if environ is None else environ
    given = {name: (value.strip(), ENVIRONMENT) for name, value in env.items() if name in VARIABLES}
    env_file = env.get(ENV_FILE, ".env")
    if env_file and Path(env_file).is_file():
        for name, value in dotenv_values(env_file).items():
            if name in VARIABLES and value is not None:
                given.setdefault(name, (value.strip(), env_file))
    return given


NOT_SETTINGS = frozenset({ENV_FILE, "GATEWAY_TEST_POSTGRES_URL"})
"""`GATEWAY_*` names that are known but are not settings: the env file's name, the tests' PostgreSQL."""


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """The `GATEWAY_*` names in `environ` or the env file that no setting has (a typo such as
    `GATEWAY_PROT`), each with where it was found and the nearest known name, if one is close."""
    env = os.environ if environ is None else environ
    found = {name: ENVIRONMENT for name in env if name.startswith(PREFIX)}
    env_file = env.get(ENV_FILE, ".env")
    if env_file and Path(env_file).is_file():
        for name in dotenv_values(env_file):
            if name.startswith(PREFIX):
                found.setdefault(name, f"env file {env_file}")
    lines = []
    for name, source in sorted(found.items()):
        if name in VARIABLES or name in NOT_SETTINGS:
            continue
        near = difflib.get_close_matches(name, VARIABLES, n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        lines.append(f"{name} (in the {source}) is not a setting and is ignored{hint}")
    return lines


# ---------------------------------------------------------------------------------------------
# The variables: their names, and a pydantic error as one line naming one of them.

GROUPS: dict[str, type[_Group]] = {
    name: info.annotation
    for name, info in Settings.model_fields.items()
    if isinstance(info.annotation, type) and issubclass(info.annotation, _Group)
}
"""The groups by their attribute in `Settings`."""


def variable_of(group: type[_Group], field: str) -> str:
    """The variable that sets `field` of `group`: its alias, else the group's prefix and its name."""
    alias = group.model_fields[field].validation_alias
    if isinstance(alias, str):
        return alias
    return f"{group.model_config.get('env_prefix', '')}{field}".upper()


@dataclass(frozen=True)
class Variable:
    name: str
    group: str | None
    """The attribute of `Settings` holding the field's group; None for `Settings`'s own fields."""
    field: str
    info: FieldInfo


def _variables() -> Iterator[Variable]:
    for field, info in Settings.model_fields.items():
        if field not in GROUPS:
            yield Variable(variable_of(Settings, field), None, field, info)
    for group, cls in GROUPS.items():
        for field, info in cls.model_fields.items():
            yield Variable(variable_of(cls, field), group, field, info)


VARIABLES: dict[str, Variable] = {variable.name: variable for variable in _variables()}
"""Every `GATEWAY_*` variable a setting reads, by name, in the order of the fields."""

_NOUNS = {
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "int_type": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
}


def _plain(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _range(info: FieldInfo) -> str | None:
    """`low and high` of a field bounded both ways."""
    low = next((m.ge for m in info.metadata if isinstance(m, annotated_types.Ge)), None)
    high = next((m.le for m in info.metadata if isinstance(m, annotated_types.Le)), None)
    return None if low is None or high is None else f"{_plain(low)} and {_plain(high)}"


def _one_line(error: ValidationError) -> str:
    """`error`'s first problem as one line naming its variable (a rule across settings names its own)."""
    problem = error.errors()[0]
    where: type[_Group] = {cls.__name__: cls for cls in GROUPS.values()}.get(error.title, Settings)
    loc = [str(part) for part in problem["loc"]]
    if loc and where is Settings and loc[0] in GROUPS:
        where, loc = GROUPS[loc[0]], loc[1:]
    cause = problem.get("ctx", {}).get("error")
    if not loc:
        return str(cause) if cause is not None else problem["msg"]
    field = next((name for name, info in where.model_fields.items() if loc[0] in {name, info.validation_alias}), None)
    if field is None:
        return f"{'.'.join(loc)}: {problem['msg']}"
    name, info, kind, raw = variable_of(where, field), where.model_fields[field], problem["type"], problem["input"]
    if kind in _NOUNS:
        return f"{name} must be {_NOUNS[kind]}, not {raw!r}"
    if kind in {"greater_than_equal", "less_than_equal"}:
        return f"{name} must be between {_range(info)}, not {_plain(raw)}"
    if kind == "literal_error":
        return f"{name} must be one of {', '.join(get_args(info.annotation))}, not {raw!r}"
    if cause is not None:
        return f"{name} {cause}"
    return f"{name}: {problem['msg']}"


def _checked(build: Callable[[], Settings]) -> Settings:
    try:
        return build()
    except ValidationError as error:
        raise SettingsError(_one_line(error)) from None


# ---------------------------------------------------------------------------------------------
# The README's settings tables, rendered from the fields (checked for drift like schema.graphql).

_TABLE = re.compile(r"(<!-- settings-table: (?P<groups>[a-z_ ]+?) -->\n).*?(?=<!-- /settings-table -->)", re.DOTALL)
CORE = "core"
"""The table name of `Settings`'s own fields (and `GATEWAY_ENV_FILE`); the groups go by their attribute."""


def _default(variable: Variable) -> str:
    info = variable.info
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if info.default_factory is not None:
        return str(extra["default_text"])  # computed where it runs: described, not shown
    value = info.default
    if isinstance(value, SecretStr):
        assert not value.get_secret_value(), f"{variable.name}: a secret's default is empty"
        value = ""
    if isinstance(value, tuple):
        value = ",".join(value)
    if value == "":
        return "empty"
    return f"`{str(value).lower() if isinstance(value, bool) else _plain(value)}`"


def _meaning(info: FieldInfo) -> str:
    """The description, and the values allowed when it does not name them: bounds, or choices."""
    meaning, bounds = " ".join(str(info.description).split()), _range(info)
    choices = [f"`{choice}`" for choice in get_args(info.annotation)] if get_origin(info.annotation) is Literal else []
    if bounds:
        return f"{meaning} (between {bounds})"
    if choices and not all(choice in meaning for choice in choices):
        return f"{meaning}: {', '.join(choices[:-1])} or {choices[-1]}"
    return meaning


def settings_table(names: Sequence[str]) -> str:
    """The Markdown table of the variables of the groups `names` (`core`, `auth`, …), in that order."""
    rows = ["| Variable | Meaning | Default |", "|---|---|---|"]
    for name in names:
        if name != CORE and name not in GROUPS:
            raise ValueError(f"no settings group {name!r}: one of {CORE}, {', '.join(GROUPS)}")
        for variable in VARIABLES.values():
            if (variable.group or CORE) == name:
                rows.append(f"| `{variable.name}` | {_meaning(variable.info)} | {_default(variable)} |")
    if CORE in names:
        rows.append(
            f"| `{ENV_FILE}` | the `.env`-style file read for the variables the environment does not set "
            "(empty: none) | `.env` |"
        )
    return "\n".join(rows) + "\n"


def with_settings_tables(readme: str) -> str:
    """`readme` with each table between `<!-- settings-table: GROUP … -->` and `<!-- /settings-table -->`
    rendered anew."""
    return _TABLE.sub(lambda found: found[1] + settings_table(found["groups"].split()), readme)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.settings", description="Render the README's settings tables from gateway/settings.py."
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when the file's tables differ from the code")
    parser.add_argument("--path", type=Path, default=Path("README.md"), help="file to rewrite (default: README.md)")
    args = parser.parse_args(argv)
    current = args.path.read_text(encoding="utf-8")
    rendered = with_settings_tables(current)
    if not args.check:
        args.path.write_text(rendered, encoding="utf-8")
        print(f"wrote the settings tables of {args.path}")
    elif rendered != current:
        print(
            f"{args.path}'s settings tables differ from gateway/settings.py: run scripts/settings-table",
            file=sys.stderr,
        )
        return 1
    else:
        print(f"{args.path}'s settings tables are up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
