"""Settings: every GATEWAY_* variable checked, the bad one named; `.env` files read."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import Settings, SettingsError


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
    assert settings.port == 9002
    assert settings.otp_ttl_seconds == 600
