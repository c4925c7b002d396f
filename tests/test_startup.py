"""`gateway serve` that cannot start says why in one line naming the setting, and exits 2 (no
traceback; that only at GATEWAY_LOG_LEVEL=debug). An unknown `GATEWAY_*` variable is warned about."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import make_url

from tests.demo import POSTGRES_URL
from tests.utils import free_port, serving


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment whose store is a SQLite file in the test's own folder."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return {**base, "GATEWAY_DATA_DIR": str(tmp_path / "data"), "GATEWAY_KDF_COST": "4", "GATEWAY_ENV_FILE": ""}


def serve(env: dict[str, str], port: int | None = None) -> subprocess.CompletedProcess[str]:
    port = port or free_port()
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def refused(env: dict[str, str], setting: str, port: int | None = None) -> str:
    """Run `gateway serve`, check it stopped with one line naming `setting`, and return that line."""
    done = serve(env, port)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert setting in lines[0]
    return lines[0]


@pytest.fixture
def postgres() -> str:
    """The tests' PostgreSQL URL, skipped (failed in CI) when nothing answers there."""
    url = make_url(POSTGRES_URL)
    try:
        socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=2).close()
    except OSError as error:
        message = f"PostgreSQL at {POSTGRES_URL} is unreachable: {error}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_URL


def test_unreachable_postgres(env: dict[str, str]) -> None:
    line = refused(
        {**env, "GATEWAY_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1:1/test"}, "GATEWAY_DATABASE_URL"
    )
    assert "refused" in line or "failed" in line


def test_missing_database(env: dict[str, str], postgres: str) -> None:
    url = make_url(postgres).set(database="no_such_db").render_as_string(hide_password=False)
    line = refused({**env, "GATEWAY_DATABASE_URL": url}, "GATEWAY_DATABASE_URL")
    assert "no_such_db" in line


def test_missing_schema(env: dict[str, str], postgres: str) -> None:
    given = {**env, "GATEWAY_DATABASE_URL": postgres, "GATEWAY_DATABASE_SCHEMA": "no_such_schema"}
    line = refused(given, "GATEWAY_DATABASE_SCHEMA")
    assert "no_such_schema" in line


def test_unwritable_data_dir(env: dict[str, str]) -> None:
    line = refused({**env, "GATEWAY_DATA_DIR": "/proc/no_such/data"}, "GATEWAY_DATA_DIR")
    assert "/proc/no_such/data" in line


def test_unwritable_sqlite_store(env: dict[str, str], tmp_path: Path) -> None:
    """The audit key kept elsewhere: the SQLite file itself is what cannot be made."""
    key = tmp_path / "audit.key"
    key.write_text("ab" * 32, encoding="ascii")
    given = {**env, "GATEWAY_DATA_DIR": "/proc/no_such/data", "GATEWAY_AUDIT_KEY_FILE": str(key)}
    line = refused(given, "GATEWAY_DATA_DIR")
    assert "SQLite" in line


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_port_in_use(env: dict[str, str], taken_port: int) -> None:
    line = refused(env, "GATEWAY_PORT", port=taken_port)
    assert str(taken_port) in line
    assert not (Path(env["GATEWAY_DATA_DIR"]) / "gateway.sqlite3").exists()  # refused before the store


def test_traceback_at_debug(env: dict[str, str]) -> None:
    done = serve({**env, "GATEWAY_DATA_DIR": "/proc/no_such/data", "GATEWAY_LOG_LEVEL": "debug"})
    assert done.returncode == 2
    assert "Traceback" in done.stderr
    assert done.stderr.splitlines()[-1].startswith("gateway serve: GATEWAY_DATA_DIR")


def test_unknown_variable_warned(env: dict[str, str], tmp_path: Path) -> None:
    env_file = tmp_path / "gateway.env"
    env_file.write_text("GATEWAY_LOG_LEVLE=info\n", encoding="utf-8")
    port = free_port()
    given = {**env, "GATEWAY_PROT": "9000", "GATEWAY_ENV_FILE": str(env_file)}
    with serving(given, port) as served:
        pass
    assert "GATEWAY_PROT (in the environment) is not a setting" in served.output
    assert "did you mean GATEWAY_PORT?" in served.output
    assert f"GATEWAY_LOG_LEVLE (in the env file {env_file}) is not a setting" in served.output
    assert "GATEWAY_ENV_FILE " not in served.output  # known, not a setting: no warning
