"""Upstream-mode settings: defaults, parsing, cross-checks, the secret kept out of reprs, the pooled client."""

from __future__ import annotations

import httpx
import pytest

from gateway.settings import Settings, SettingsError
from gateway.upstream import UpstreamClient, upstream_http_client
from gateway.upstream.credentials import ClientCredentialsAuth, ForwardAuth

pytestmark = pytest.mark.anyio

UPSTREAM = {"GATEWAY_ENV_FILE": "", "GATEWAY_BACKEND": "upstream", "GATEWAY_UPSTREAM_URL": "https://tenant.example"}
SERVICE_ACCOUNT = {
    "GATEWAY_UPSTREAM_AUTH": "client-credentials",
    "GATEWAY_UPSTREAM_TOKEN_URL": "https://idcs.example/oauth2/v1/token",
    "GATEWAY_UPSTREAM_CLIENT_ID": "test-client-id",
    "GATEWAY_UPSTREAM_CLIENT_SECRET": "test-client-secret-not-real",
    "GATEWAY_UPSTREAM_SCOPE": "tenant.ec-ors-svc.all",
}


def test_defaults_follow_oracles_advice() -> None:
    settings = Settings.from_env(UPSTREAM)
    assert settings.upstream.connect_timeout_seconds == 5
    assert settings.upstream.read_timeout_seconds == 120  # "expect up to a 2-minute network timeout"
    assert settings.upstream.connect_retries == 2
    assert settings.upstream.auth == "forward"
    assert settings.upstream.max_concurrency <= settings.upstream.max_connections


def test_every_upstream_setting_is_read_from_its_variable() -> None:
    env = {
        **UPSTREAM,
        **SERVICE_ACCOUNT,
        "GATEWAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS": "2.5",
        "GATEWAY_UPSTREAM_READ_TIMEOUT_SECONDS": "60",
        "GATEWAY_UPSTREAM_WRITE_TIMEOUT_SECONDS": "10",
        "GATEWAY_UPSTREAM_POOL_TIMEOUT_SECONDS": "3",
        "GATEWAY_UPSTREAM_MAX_CONNECTIONS": "20",
        "GATEWAY_UPSTREAM_MAX_KEEPALIVE_CONNECTIONS": "10",
        "GATEWAY_UPSTREAM_KEEPALIVE_EXPIRY_SECONDS": "2",
        "GATEWAY_UPSTREAM_MAX_CONCURRENCY": "8",
        "GATEWAY_UPSTREAM_QUEUE_TIMEOUT_SECONDS": "1.5",
        "GATEWAY_UPSTREAM_BREAKER_FAILURE_THRESHOLD": "3",
        "GATEWAY_UPSTREAM_BREAKER_RESET_SECONDS": "12",
        "GATEWAY_UPSTREAM_CONNECT_RETRIES": "0",
        "GATEWAY_UPSTREAM_RETRY_BACKOFF_SECONDS": "0.5",
    }
    settings = Settings.from_env(env)
    assert (settings.upstream.connect_timeout_seconds, settings.upstream.read_timeout_seconds) == (2.5, 60)
    assert (settings.upstream.write_timeout_seconds, settings.upstream.pool_timeout_seconds) == (10, 3)
    assert (settings.upstream.max_connections, settings.upstream.max_keepalive_connections) == (20, 10)
    assert settings.upstream.keepalive_expiry_seconds == 2
    assert (settings.upstream.max_concurrency, settings.upstream.queue_timeout_seconds) == (8, 1.5)
    assert (settings.upstream.breaker_failure_threshold, settings.upstream.breaker_reset_seconds) == (3, 12)
    assert (settings.upstream.connect_retries, settings.upstream.retry_backoff_seconds) == (0, 0.5)
    assert settings.upstream.auth == "client-credentials"
    assert settings.upstream.token_url == "https://idcs.example/oauth2/v1/token"
    assert settings.upstream.client_id == "test-client-id"
    assert settings.upstream.scope == "tenant.ec-ors-svc.all"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GATEWAY_UPSTREAM_READ_TIMEOUT_SECONDS", "two minutes", "must be a number"),
        ("GATEWAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS", "0", "must be between"),
        ("GATEWAY_UPSTREAM_CONNECT_RETRIES", "9", "must be between 0 and 5"),
        ("GATEWAY_UPSTREAM_AUTH", "basic", "must be one of forward, client-credentials"),
        ("GATEWAY_UPSTREAM_TOKEN_URL", "idcs.example/token", "must be an http"),
        ("GATEWAY_UPSTREAM_CA_FILE", "/nonexistent/ca.pem", "must name a readable file"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=f"{name} {message}"):
        Settings.from_env({**UPSTREAM, name: value})


@pytest.mark.parametrize(
    "missing", ["GATEWAY_UPSTREAM_TOKEN_URL", "GATEWAY_UPSTREAM_CLIENT_ID", "GATEWAY_UPSTREAM_CLIENT_SECRET"]
)
def test_client_credentials_needs_its_settings(missing: str) -> None:
    env = {**UPSTREAM, **SERVICE_ACCOUNT}
    del env[missing]
    with pytest.raises(SettingsError, match=f"{missing} is required when GATEWAY_UPSTREAM_AUTH=client-credentials"):
        Settings.from_env(env)


def test_concurrency_may_not_exceed_the_pool() -> None:
    env = {**UPSTREAM, "GATEWAY_UPSTREAM_MAX_CONCURRENCY": "50", "GATEWAY_UPSTREAM_MAX_CONNECTIONS": "10"}
    with pytest.raises(SettingsError, match="GATEWAY_UPSTREAM_MAX_CONCURRENCY must not exceed"):
        Settings.from_env(env)


def test_the_client_secret_stays_out_of_reprs() -> None:
    settings = Settings.from_env({**UPSTREAM, **SERVICE_ACCOUNT})
    assert SERVICE_ACCOUNT["GATEWAY_UPSTREAM_CLIENT_SECRET"] not in repr(settings)


async def test_the_pooled_client_is_built_from_the_settings() -> None:
    settings = Settings.from_env({**UPSTREAM, **SERVICE_ACCOUNT, "GATEWAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS": "3"})
    async with upstream_http_client(settings.upstream) as http:
        assert http.base_url == httpx.URL("https://tenant.example")
        assert http.timeout == httpx.Timeout(connect=3, read=120, write=30, pool=5)
        assert http.follow_redirects is False
        assert http.trust_env is False
        client = UpstreamClient.from_settings(settings.upstream, http)
        assert client.name == "upstream"
        assert isinstance(client.auth, ClientCredentialsAuth)
        assert isinstance(UpstreamClient.from_settings(Settings.from_env(UPSTREAM).upstream, http).auth, ForwardAuth)
    assert http.is_closed
