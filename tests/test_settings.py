"""Settings: every GATEWAY_* variable checked, the bad one named; `.env` files read."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from gateway.settings import VARIABLES, Settings, SettingsError, settings_table, with_settings_tables


def test_defaults() -> None:
    settings = Settings.from_env({"GATEWAY_ENV_FILE": ""})
    assert settings == Settings()
    assert settings.store_url.startswith("sqlite+aiosqlite:///")
    assert settings.store_url.endswith("/data/gateway.sqlite3")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GATEWAY_BACKEND", "remote", "GATEWAY_BACKEND must be one of local, upstream"),
        ("GATEWAY_PORT", "80000", "GATEWAY_PORT must be between 0 and 65535"),
        ("GATEWAY_OTP_TTL_SECONDS", "soon", "GATEWAY_OTP_TTL_SECONDS must be a whole number"),
        ("GATEWAY_DATABASE_URL", "mysql://x", "GATEWAY_DATABASE_URL must start with"),
        ("GATEWAY_DATABASE_SCHEMA", "a;drop", "GATEWAY_DATABASE_SCHEMA must be a plain SQL identifier"),
        ("GATEWAY_UPSTREAM_URL", "ftp://x", "GATEWAY_UPSTREAM_URL must be a base URL"),
        ("GATEWAY_DEMO_DATA", "maybe", "GATEWAY_DEMO_DATA must be true or false"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({"GATEWAY_ENV_FILE": "", name: value})


def test_upstream_needs_a_url() -> None:
    with pytest.raises(SettingsError, match="GATEWAY_UPSTREAM_URL is required"):
        Settings.from_env({"GATEWAY_ENV_FILE": "", "GATEWAY_BACKEND": "upstream"})


def test_env_file_fills_what_the_environment_does_not_set(tmp_path: Path) -> None:
    env_file = tmp_path / "gateway.env"
    env_file.write_text("GATEWAY_PORT=9001\nGATEWAY_OTP_TTL_SECONDS=600\nOTHER=ignored\n")
    settings = Settings.from_env({"GATEWAY_ENV_FILE": str(env_file), "GATEWAY_PORT": "9002"})
    assert settings.http.port == 9002
    assert settings.otp_ttl_seconds == 600


# Every variable the gateway has read since before the settings had groups, with a value that is
# not its default: (the attribute path it sets, the raw value, the value read).
OLD_NAMES: dict[str, tuple[str, str, object]] = {
    "GATEWAY_BACKEND": ("backend", "upstream", "upstream"),
    "GATEWAY_DATABASE_URL": ("database_url", "postgresql+asyncpg://db/x", "postgresql+asyncpg://db/x"),
    "GATEWAY_DATABASE_SCHEMA": ("database_schema", "gw", "gw"),
    "GATEWAY_DATA_DIR": ("data_dir", "/srv/gw", "/srv/gw"),
    "GATEWAY_UPSTREAM_URL": ("upstream.url", "https://tenant.example/", "https://tenant.example"),
    "GATEWAY_HOST": ("http.host", "0.0.0.0", "0.0.0.0"),
    "GATEWAY_PORT": ("http.port", "9000", 9000),
    "GATEWAY_OTP_TTL_SECONDS": ("otp_ttl_seconds", "600", 600),
    "GATEWAY_KDF_COST": ("kdf_cost", "10", 10),
    "GATEWAY_KDF_WORKERS": ("kdf_workers", "65", None),  # out of bounds: only the message is checked
    "GATEWAY_OTP_RESERVE": ("otp_reserve", "0", 0),
    "GATEWAY_DEMO_DATA": ("demo_data", "off", False),
    "GATEWAY_LOG_LEVEL": ("log_level", "DEBUG", "debug"),
    "GATEWAY_METRICS": ("metrics", "false", False),
    "GATEWAY_OTEL": ("otel", "true", True),
    "GATEWAY_LOG_FORMAT": ("log_format", "json", "json"),
    "GATEWAY_SHUTDOWN_TIMEOUT_SECONDS": ("shutdown_timeout_seconds", "3", 3),
    "GATEWAY_RATE_LIMIT_DEVICE": ("rate_limits.device", "7", 7),
    "GATEWAY_RATE_LIMIT_CALLER": ("rate_limits.caller", "70", 70),
    "GATEWAY_RATE_LIMIT_WINDOW_SECONDS": ("rate_limits.window_seconds", "120", 120),
    "GATEWAY_BOOTSTRAP_LOCKOUT_ATTEMPTS": ("rate_limits.bootstrap_lockout_attempts", "3", 3),
    "GATEWAY_BOOTSTRAP_RATE_LIMIT_CLIENT": ("rate_limits.bootstrap_client", "4", 4),
    "GATEWAY_BOOTSTRAP_RATE_LIMIT_ACCESS_ID": ("rate_limits.bootstrap_access_id", "5", 5),
    "GATEWAY_BOOTSTRAP_RATE_LIMIT_WINDOW_SECONDS": ("rate_limits.bootstrap_window_seconds", "6", 6),
    "GATEWAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS": ("upstream.connect_timeout_seconds", "1.5", 1.5),
    "GATEWAY_UPSTREAM_READ_TIMEOUT_SECONDS": ("upstream.read_timeout_seconds", "61", 61),
    "GATEWAY_UPSTREAM_TOTAL_TIMEOUT_SECONDS": ("upstream.total_timeout_seconds", "99", 99),
    "GATEWAY_UPSTREAM_WRITE_TIMEOUT_SECONDS": ("upstream.write_timeout_seconds", "11", 11),
    "GATEWAY_UPSTREAM_POOL_TIMEOUT_SECONDS": ("upstream.pool_timeout_seconds", "2", 2),
    "GATEWAY_UPSTREAM_MAX_CONNECTIONS": ("upstream.max_connections", "100", 100),
    "GATEWAY_UPSTREAM_MAX_KEEPALIVE_CONNECTIONS": ("upstream.max_keepalive_connections", "0", 0),
    "GATEWAY_UPSTREAM_KEEPALIVE_EXPIRY_SECONDS": ("upstream.keepalive_expiry_seconds", "1", 1),
    "GATEWAY_UPSTREAM_MAX_CONCURRENCY": ("upstream.max_concurrency", "3", 3),
    "GATEWAY_UPSTREAM_QUEUE_TIMEOUT_SECONDS": ("upstream.queue_timeout_seconds", "0.5", 0.5),
    "GATEWAY_UPSTREAM_BREAKER_FAILURE_THRESHOLD": ("upstream.breaker_failure_threshold", "9", 9),
    "GATEWAY_UPSTREAM_BREAKER_RESET_SECONDS": ("upstream.breaker_reset_seconds", "8", 8),
    "GATEWAY_UPSTREAM_CONNECT_RETRIES": ("upstream.connect_retries", "0", 0),
    "GATEWAY_UPSTREAM_RETRY_BACKOFF_SECONDS": ("upstream.retry_backoff_seconds", "1", 1),
    "GATEWAY_UPSTREAM_CA_FILE": ("upstream.ca_file", __file__, __file__),
    "GATEWAY_UPSTREAM_AUTH": ("upstream.auth", "Client-Credentials", None),  # needs its three settings
    "GATEWAY_UPSTREAM_TOKEN_URL": ("upstream.token_url", "https://idp.example/t", "https://idp.example/t"),
    "GATEWAY_UPSTREAM_CLIENT_ID": ("upstream.client_id", "svc", "svc"),
    "GATEWAY_UPSTREAM_CLIENT_SECRET": ("upstream.client_secret", "shh", SecretStr("shh")),
    "GATEWAY_UPSTREAM_SCOPE": ("upstream.scope", "t.all", "t.all"),
    "GATEWAY_UPSTREAM_TOKEN_TIMEOUT_SECONDS": ("upstream.token_timeout_seconds", "2.5", 2.5),
    "GATEWAY_AUTH_JWKS_URL": ("auth.jwks_url", "https://idp.example/jwks", "https://idp.example/jwks"),
    "GATEWAY_AUTH_HS256_SECRET": ("auth.hs256_secret", "k" * 32, SecretStr("k" * 32)),
    "GATEWAY_AUTH_ISSUER": ("auth.issuer", "iss", "iss"),
    "GATEWAY_AUTH_AUDIENCE": ("auth.audience", "aud", "aud"),
    "GATEWAY_AUTH_ALGORITHMS": ("auth.algorithms", "hs512, HS256", ("HS512", "HS256")),
    "GATEWAY_AUTH_LEEWAY_SECONDS": ("auth.leeway_seconds", "0", 0),
    "GATEWAY_AUTH_JWKS_CACHE_SECONDS": ("auth.jwks_cache_seconds", "600", 600),
    "GATEWAY_AUTH_JWKS_TIMEOUT_SECONDS": ("auth.jwks_timeout_seconds", "1", 1),
    "GATEWAY_INSECURE_DISABLE_AUTH": ("auth.insecure_disable_auth", "true", True),
    "GATEWAY_PRODUCTION": ("production", "true", None),  # needs auth settings: only the message is checked
    "GATEWAY_GRAPHQL_MAX_DEPTH": ("graphql.max_depth", "5", 5),
    "GATEWAY_GRAPHQL_MAX_ALIASES": ("graphql.max_aliases", "1", 1),
    "GATEWAY_GRAPHQL_MAX_TOKENS": ("graphql.max_tokens", "500", 500),
    "GATEWAY_GRAPHQL_MAX_SELECTIONS": ("graphql.max_selections", "50", 50),
    "GATEWAY_GRAPHQL_DOCUMENT_CACHE_SIZE": ("graphql.document_cache_size", "0", 0),
    "GATEWAY_MAX_BODY_BYTES": ("http.max_body_bytes", "2048", 2048),
    "GATEWAY_MAX_HEADER_BYTES": ("http.max_header_bytes", "8192", 8192),
    "GATEWAY_CORS_ORIGINS": (
        "http.cors_origins",
        "https://a.example, http://127.0.0.1:3000",
        ("https://a.example", "http://127.0.0.1:3000"),
    ),
    "GATEWAY_TRUSTED_DOCUMENTS": ("graphql.trusted_documents", __file__, __file__),
    "GATEWAY_APQ": ("graphql.apq", "false", False),
    "GATEWAY_APQ_CACHE_SIZE": ("graphql.apq_cache_size", "10", 10),
    "GATEWAY_AUDIT_KEY_FILE": ("audit_key_file", __file__, __file__),
    "GATEWAY_ALLOW_PLAINTEXT_LOOPBACK": ("allow_plaintext_loopback", "true", True),
    "GATEWAY_AUTH_MAX_TOKEN_LIFETIME_SECONDS": ("auth.max_token_lifetime_seconds", "3600", 3600),
}


def attribute(settings: object, path: str) -> object:
    for part in path.split("."):
        settings = getattr(settings, part)
    return settings


def test_every_variable_is_an_old_name_and_every_old_name_is_a_variable() -> None:
    assert set(VARIABLES) == set(OLD_NAMES)
    for name, (path, _, _) in OLD_NAMES.items():
        variable = VARIABLES[name]
        assert ".".join(part for part in (variable.group, variable.field) if part) == path


@pytest.mark.parametrize("name", list(OLD_NAMES))
def test_every_old_name_still_sets_its_field(name: str) -> None:
    path, raw, expected = OLD_NAMES[name]
    env = {"GATEWAY_ENV_FILE": "", name: raw}
    if expected is None:  # a value a rule refuses: the message names the variable, so it was read
        with pytest.raises(SettingsError, match=name):
            Settings.from_env(env)
        return
    if name == "GATEWAY_BACKEND":
        env["GATEWAY_UPSTREAM_URL"] = "https://tenant.example"
    if name == "GATEWAY_AUTH_JWKS_URL":
        env["GATEWAY_AUTH_ALGORITHMS"] = "RS256"
    assert attribute(Settings(), path) != expected
    assert attribute(Settings.from_env(env), path) == expected
    assert attribute(Settings().replace(**flat(env)), path) == expected


def flat(env: dict[str, str]) -> dict[str, str]:
    """`env` as `Settings.replace` takes it: `GATEWAY_UPSTREAM_URL` is `upstream_url`."""
    return {name.removeprefix("GATEWAY_").lower(): value for name, value in env.items() if name != "GATEWAY_ENV_FILE"}


def test_settings_are_the_defaults_until_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "9003")
    monkeypatch.setenv("GATEWAY_UPSTREAM_CONNECT_RETRIES", "4")
    monkeypatch.setenv("GATEWAY_ENV_FILE", "")
    assert (Settings().http.port, Settings().upstream.connect_retries) == (8000, 2)
    read = Settings.from_env()
    assert (read.http.port, read.upstream.connect_retries) == (9003, 4)


def test_unknown_and_lowercase_names_are_ignored() -> None:
    settings = Settings.from_env(
        {"GATEWAY_ENV_FILE": "", "GATEWAY_UPSTREAM": "x", "gateway_port": "1", "GATEWAY_NOPE": "1"}
    )
    assert settings == Settings()


def test_a_bad_value_is_one_line_naming_its_variable_wherever_it_comes_from() -> None:
    with pytest.raises(SettingsError) as from_env:
        Settings.from_env({"GATEWAY_ENV_FILE": "", "GATEWAY_GRAPHQL_MAX_DEPTH": "1"})
    with pytest.raises(SettingsError) as replaced:
        Settings().replace(graphql_max_depth=1)
    for error in (from_env.value, replaced.value):
        assert str(error) == "GATEWAY_GRAPHQL_MAX_DEPTH must be between 2 and 100, not 1"
    with pytest.raises(SettingsError, match=r"^GATEWAY_UPSTREAM_MAX_CONCURRENCY must not exceed"):
        Settings().replace(upstream_max_concurrency=100)
    with pytest.raises(TypeError, match="no variable GATEWAY_UPSTREAM_TIMEOUT"):
        Settings().replace(upstream_timeout=1)


def test_the_readme_tables_are_rendered_from_the_settings() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert with_settings_tables(readme) == readme, "run scripts/settings-table"
    for name in [*VARIABLES, "GATEWAY_ENV_FILE"]:
        assert f"| `{name}` |" in readme
    assert "(between 2 and 100)" in settings_table(["graphql"])
