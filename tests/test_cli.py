"""The `gateway` command as a user runs it: real processes, a real SQLite file, stopped by pid."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from gateway.api.sample import SAMPLE_MUTATION
from gateway.cli import DEMO_READY_DEVICES, exported_schema
from gateway.engine.engine import CredentialEngine
from gateway.engine.registry import DEMO_REGISTRY
from gateway.settings import Settings
from gateway.store import Store
from tests import demo
from tests.secret_watch import keep, watch
from tests.utils import free_port, serving

ROOT = Path(__file__).resolve().parent.parent


def gateway(*args: str, env: dict[str, str], check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], env=env, capture_output=True, text=True, timeout=60, check=check
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment whose store is a SQLite file in the test's own folder."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return {**base, "GATEWAY_DATA_DIR": str(tmp_path / "data"), "GATEWAY_KDF_COST": "4", "GATEWAY_ENV_FILE": ""}


def dev_token(env: dict[str, str]) -> str:
    """What a new user does first: `gateway token`, signed with the data folder's development secret."""
    made = gateway("token", "--study", "*", "--mode", "*", env=env)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def mutate(port: int, token: str) -> dict[str, str]:
    response = httpx.post(
        f"http://127.0.0.1:{port}/graphql",
        json={"query": SAMPLE_MUTATION},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    result: dict[str, str] = response.json()["data"]["regenerateAccessCode"]
    return result


def pair_works(env: dict[str, str], pair: dict[str, str]) -> bool:
    """Open the gateway's SQLite file directly and check a pair against it."""

    async def check() -> bool:
        store = await Store.open(Settings.from_env(env).store_url, create=False)
        try:
            return await demo.pair_works(CredentialEngine(store), pair["accessId"], pair["otp"])
        finally:
            await store.close()

    return anyio.run(check)


def test_serve_loads_demo_data_prints_a_working_mutation_and_persists(env: dict[str, str]) -> None:
    port = free_port()
    token = dev_token(env)
    with serving(env, port) as served:
        assert httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": SAMPLE_MUTATION}).status_code == 401
        first = mutate(port, token)
    output = served.output
    assert first["__typename"] == "BootstrapCredentials"
    assert "demo data loaded" in output
    assert "gateway token --study" in output
    assert token not in output
    assert f"http://127.0.0.1:{port}/graphql" in output
    assert SAMPLE_MUTATION in output
    assert "Ready demo devices: DEMO-READY-01 … DEMO-READY-05" in output
    assert "Each allows 5 regenerations in 15 minutes, refusals included" in output

    # Stopped: the pair is in the file. Restarted on it: the data survived, demo data not reloaded.
    assert pair_works(env, first)
    with serving(env, port) as served:
        second = mutate(port, token)
    output = served.output
    assert "demo data loaded" not in output
    assert second["__typename"] == "BootstrapCredentials"
    assert second["id"] == first["id"]
    assert pair_works(env, second)
    assert not pair_works(env, first)
    assert first["otp"] not in output
    assert second["otp"] not in output


def test_seed_loads_and_refuses(env: dict[str, str], tmp_path: Path) -> None:
    loaded = gateway("seed", str(DEMO_REGISTRY), env=env)
    assert loaded.returncode == 0, loaded.stderr
    assert "Seeded 1 studies, 3 subjects and 13 devices" in loaded.stdout

    bad = json.loads(DEMO_REGISTRY.read_text())
    bad["devices"][1]["connectionType"] = "WIFI"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    refused = gateway("seed", str(path), env=env)
    assert refused.returncode == 2
    assert "devices[1] (inventoryId DEMO-CLOUD-READY).connectionType" in refused.stderr


def test_bad_settings_are_named(env: dict[str, str]) -> None:
    result = gateway("seed", str(DEMO_REGISTRY), env={**env, "GATEWAY_KDF_COST": "lots"})
    assert result.returncode == 2
    assert "GATEWAY_KDF_COST must be a whole number" in result.stderr


def test_export_schema_check(env: dict[str, str], tmp_path: Path) -> None:
    target = tmp_path / "schema.graphql"
    assert gateway("export-schema", "--check", "--path", str(target), env=env).returncode == 1
    assert gateway("export-schema", "--path", str(target), env=env).returncode == 0
    assert target.read_text() == exported_schema()
    assert gateway("export-schema", "--check", "--path", str(target), env=env).returncode == 0
    target.write_text(exported_schema().replace("accessId", "accessID"))
    drift = gateway("export-schema", "--check", "--path", str(target), env=env)
    assert drift.returncode == 1
    assert "differs" in drift.stderr


def test_every_ready_demo_device_answers_the_sample_and_the_banner_says_the_limit_it_is_given(
    env: dict[str, str],
) -> None:
    """A first run has several devices to try, and the banner tells the limit this gateway runs with."""
    env = {**env, "GATEWAY_RATE_LIMIT_DEVICE": "2", "GATEWAY_RATE_LIMIT_WINDOW_SECONDS": "90"}
    port = free_port()
    token = dev_token(env)
    auth = {"Authorization": f"Bearer {token}"}
    with serving(env, port) as served:
        answers = [
            httpx.post(
                f"http://127.0.0.1:{port}/graphql",
                json={"query": SAMPLE_MUTATION.replace("DEMO-READY-01", inventory_id)},
                headers=auth,
                timeout=10,
            ).json()["data"]["regenerateAccessCode"]
            for inventory_id in (*DEMO_READY_DEVICES, "DEMO-CLOUD-READY")
        ]
    assert [answer["__typename"] for answer in answers] == ["BootstrapCredentials"] * 6
    assert len({answer["id"] for answer in answers}) == 6
    assert "Each allows 2 regenerations in 90 s, refusals included" in served.output
    keep(served.output.splitlines())
    for answer in answers:
        watch(answer["otp"])  # the secret watch looks for them in the log and the store's files


def test_no_secret_reaches_the_logs_the_database_or_the_audit_trail(env: dict[str, str]) -> None:
    """A whole session at debug log level: regenerations over both faces and device bootstraps.
    Afterwards no OTP, token or Basic credential is in the output, the store's files or the audit
    export; the audit chain verifies, and a tampered row is found."""
    env = {**env, "GATEWAY_LOG_LEVEL": "debug"}
    port = free_port()
    token = dev_token(env)
    auth = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{port}"
    issued: list[dict[str, str]] = []
    with serving(env, port) as served:
        for inventory_id in ("DEMO-READY-01", "DEMO-CLOUD-READY", "DEMO-IN-STOCK"):
            query = SAMPLE_MUTATION.replace("DEMO-READY-01", inventory_id)
            result = httpx.post(f"{base}/graphql", json={"query": query}, headers=auth).json()
            member = result["data"]["regenerateAccessCode"]
            if member["__typename"] == "BootstrapCredentials":
                issued.append(member)
            path = (
                "/ec-ors-svc/rest/v1.0/studies/DE305D5475B4431BADB2EB6B9E546014/active/subjects/"
                f"A1B2C3D4E5F60718293A4B5C6D7E8F90/devices/{inventory_id}/access-code?mSubjectId=MSUBJECT-001"
            )
            response = httpx.put(f"{base}{path}", headers=auth)
            if response.status_code == 200:
                issued.append(response.json())
        latest = issued[-1]
        assert httpx.post(f"{base}/api/deviceBootstrap", auth=(latest["accessId"], "WRONGOTP")).status_code == 401
        assert httpx.post(f"{base}/api/deviceBootstrap", auth=(latest["accessId"], latest["otp"])).status_code == 200
    assert len(issued) == 4

    exported = gateway("audit", "export", env=env)
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [row["outcome"] for row in rows] == [
        "SUCCESS", "SUCCESS", "SUCCESS", "SUCCESS", "DEVICE_NOT_DISPENSED", "DEVICE_NOT_DISPENSED",
        "WRONG_OTP", "SUCCESS",
    ]  # fmt: skip
    stored = b"".join(path.read_bytes() for path in Path(env["GATEWAY_DATA_DIR"]).iterdir() if path.is_file())
    secrets = [token] + [pair["otp"] for pair in issued]
    basic = base64.b64encode(f"{latest['accessId']}:{latest['otp']}".encode()).decode()
    for secret in [*secrets, basic]:
        assert secret not in served.output
        assert secret not in exported.stdout
        assert secret.encode() not in stored

    verified = gateway("audit", "verify", env=env)
    assert verified.returncode == 0, verified.stderr
    assert "intact: 8 rows" in verified.stdout
    database = Path(env["GATEWAY_DATA_DIR"]) / "gateway.sqlite3"
    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE audit_events SET outcome = 'SUCCESS' WHERE seq = 5")
    conn.close()
    broken = gateway("audit", "verify", env=env)
    assert broken.returncode == 1
    assert "BROKEN at row 5" in broken.stderr
