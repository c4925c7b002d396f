"""What production refuses, and the files it keeps private (issue: an attacker's pass over the settings).

Each refusal is one line naming the variable; plain http is allowed on loopback only when asked.
The data folder is 0700, the database and an audit export 0600; demo data is never loaded.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import Settings, SettingsError
from tests.demo import TEST_AUDIT_KEY, TEST_HS256_SECRET
from tests.utils import free_port, serving

BASE = {
    "GATEWAY_ENV_FILE": "",
    "GATEWAY_PRODUCTION": "true",
    "GATEWAY_AUTH_HS256_SECRET": TEST_HS256_SECRET,
}


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"GATEWAY_BACKEND": "upstream", "GATEWAY_UPSTREAM_URL": "http://tenant.example"}, "GATEWAY_UPSTREAM_URL"),
        (
            {
                "GATEWAY_BACKEND": "upstream",
                "GATEWAY_UPSTREAM_URL": "https://tenant.example",
                "GATEWAY_UPSTREAM_AUTH": "client-credentials",
                "GATEWAY_UPSTREAM_TOKEN_URL": "http://idp.example/oauth2/v1/token",
                "GATEWAY_UPSTREAM_CLIENT_ID": "gateway",
                "GATEWAY_UPSTREAM_CLIENT_SECRET": "an-issued-client-secret",
            },
            "GATEWAY_UPSTREAM_TOKEN_URL",
        ),
        (
            {"GATEWAY_AUTH_HS256_SECRET": "", "GATEWAY_AUTH_JWKS_URL": "http://idp.example/jwks"},
            "GATEWAY_AUTH_JWKS_URL",
        ),
        (
            {"GATEWAY_AUTH_HS256_SECRET": "", "GATEWAY_AUTH_JWKS_URL": "http://127.0.0.1:9000/jwks"},
            "GATEWAY_ALLOW_PLAINTEXT_LOOPBACK",
        ),
        ({"GATEWAY_AUTH_HS256_SECRET": "k" * 40}, "GATEWAY_AUTH_HS256_SECRET"),
        ({"GATEWAY_AUTH_HS256_SECRET": "abcd" * 10}, "GATEWAY_AUTH_HS256_SECRET"),
    ],
    ids=["upstream-http", "token-http", "jwks-http", "loopback-unasked", "secret-40-k", "secret-repeating"],
)
def test_production_refuses_plaintext_and_predictable_secrets(extra: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({**BASE, **extra})
    message = str(refused.value)
    assert named in message
    assert "\n" not in message


def test_plaintext_loopback_only_when_asked_and_only_on_loopback() -> None:
    sidecar = {"GATEWAY_AUTH_HS256_SECRET": "", "GATEWAY_AUTH_JWKS_URL": "http://127.0.0.1:9000/jwks"}
    allowed = Settings.from_env({**BASE, **sidecar, "GATEWAY_ALLOW_PLAINTEXT_LOOPBACK": "true"})
    assert allowed.auth.jwks_url == "http://127.0.0.1:9000/jwks"
    elsewhere = {**sidecar, "GATEWAY_AUTH_JWKS_URL": "http://idp.example/jwks"}
    with pytest.raises(SettingsError, match="GATEWAY_AUTH_JWKS_URL must use https"):
        Settings.from_env({**BASE, **elsewhere, "GATEWAY_ALLOW_PLAINTEXT_LOOPBACK": "true"})
    # Outside production the development set-up keeps working over plain http.
    Settings.from_env({"GATEWAY_ENV_FILE": "", "GATEWAY_AUTH_JWKS_URL": "http://idp.example/jwks"})


def test_production_serves_no_demo_data_and_keeps_its_files_private(tmp_path: Path) -> None:
    key_file = tmp_path / "audit.key"
    key_file.write_text(TEST_AUDIT_KEY.hex())
    data = tmp_path / "data"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
        **BASE,
        "GATEWAY_DATA_DIR": str(data),
        "GATEWAY_AUDIT_KEY_FILE": str(key_file),
        "GATEWAY_KDF_COST": "4",
    }
    with serving(env, free_port()) as served:
        pass
    output = served.output
    assert "demo data loaded" not in output
    assert "Paste this into GraphiQL" not in output
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "gateway.sqlite3").stat().st_mode) == 0o600
    exported = tmp_path / "trail.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "export", "--output", str(exported)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
