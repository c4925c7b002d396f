"""SIGKILL a real `gateway serve` in the middle of its work, restart it, and check what survived.

Local engine: 120 clients regenerating over several devices, killed with ≥ 100 calls in flight. Afterwards
every committed credential has its audit row, every pair a client received has its SUCCESS row,
at most one pair per device works (the stored one), and `gateway audit verify` passes.
Upstream mode: killed while the upstream holds the call; the attempt is `OUTCOME_UNKNOWN` after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import Process
from sqlalchemy import select

from benchmarks import seed
from gateway.audit import OUTCOME_UNKNOWN, PENDING, AuditTrail, audit_events, audit_key
from gateway.engine import otp
from gateway.engine.tables import credentials
from gateway.settings import Settings
from gateway.store import Store
from tests.demo import Database
from tests.upstream_servers import ScriptedUpstream
from tests.utils import free_port, run_server

pytestmark = pytest.mark.anyio

STUDY = "C0FFEE00C0FFEE00C0FFEE00C0FFEE00"
DEVICES = 6
CONCURRENCY = 120
KILL_AFTER = 200
MAX_TURNS = 50


def subject(index: int) -> str:
    return seed.subject_id(index)


def registry() -> dict[str, object]:
    return seed.registry(DEVICES, study=STUDY, name="CRASH")


def environment(database: Database, tmp_path: Path, **settings: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return {
        **base,
        "GATEWAY_ENV_FILE": "",
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_DATABASE_URL": database.url,
        "GATEWAY_DATABASE_SCHEMA": database.schema,
        "GATEWAY_KDF_COST": "4",
        "GATEWAY_INSECURE_DISABLE_AUTH": "true",
        "GATEWAY_RATE_LIMIT_DEVICE": "0",
        "GATEWAY_RATE_LIMIT_CALLER": "0",
        "GATEWAY_DEMO_DATA": "false",
        "GATEWAY_LOG_LEVEL": "warning",
        **settings,
    }


def gateway(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@asynccontextmanager
async def serving(env: dict[str, str]) -> AsyncIterator[tuple[Process, str]]:
    """`gateway serve` in its own process on a free port; killed (SIGKILL) by its pid at the end if alive."""
    port = free_port()
    process = await anyio.open_process(
        [sys.executable, "-m", "gateway", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as probe:
            with anyio.fail_after(30):
                while True:
                    assert process.returncode is None, "gateway serve exited early"
                    try:
                        if (await probe.get(f"{base}/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        await anyio.sleep(0.05)
        yield process, base
    finally:
        with suppress(ProcessLookupError):  # killed by the test already
            process.kill()
        with anyio.fail_after(10):
            await process.wait()


def path(device: int) -> str:
    return (
        f"/ec-ors-svc/rest/v1.0/studies/{STUDY}/active/subjects/{subject(device)}"
        f"/devices/CRASH-{device}/access-code?mSubjectId=CRASH-{device}"
    )


async def test_sigkill_during_regenerations_loses_no_audit_row(database: Database, tmp_path: Path) -> None:
    env = environment(database, tmp_path)
    registry_file = tmp_path / "registry.json"
    registry_file.write_text(json.dumps(registry()))
    assert gateway("migrate", env=env).returncode == 0
    seeded = gateway("seed", str(registry_file), env=env)
    assert seeded.returncode == 0, seeded.stderr

    received: list[tuple[int, dict[str, str]]] = []
    cut_off: list[int] = []
    enough = anyio.Event()
    async with serving(env) as (process, base):
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

            async def keep_regenerating(worker: int) -> None:
                """One client of many: regenerates again and again until the server dies under it."""
                for turn in range(MAX_TURNS):
                    device = (worker + turn) % DEVICES
                    try:
                        response = await client.put(path(device))
                    except httpx.TransportError:
                        cut_off.append(worker)
                        return
                    if response.status_code == 200:
                        received.append((device, response.json()))
                        if len(received) >= KILL_AFTER:
                            enough.set()

            async with anyio.create_task_group() as tasks:
                for worker in range(CONCURRENCY):
                    tasks.start_soon(keep_regenerating, worker)
                with anyio.fail_after(60):
                    await enough.wait()
                process.kill()  # SIGKILL
    assert len(received) >= KILL_AFTER
    assert len(cut_off) >= 100, f"only {len(cut_off)} regenerations were in flight at the kill"

    async with serving(env):  # it starts again on what was left
        pass

    store = await Store.open(database.url, schema=database.schema, create=False)
    try:
        async with store.engine.connect() as conn:
            stored = {row.inventory_id: row for row in await conn.execute(select(credentials))}
            successes = {
                row.access_id: row.inventory_id
                for row in await conn.execute(select(audit_events).where(audit_events.c.outcome == "SUCCESS"))
            }
        verified = await AuditTrail(store, audit_key(Settings.from_env(env))).verify()
    finally:
        await store.close()

    for inventory_id, row in stored.items():
        assert successes.get(row.access_id) == inventory_id, "a committed credential without its audit row"
    for device, pair in received:
        assert successes.get(pair["accessId"]) == f"CRASH-{device}", "a pair a client received has no SUCCESS row"
    for device in range(DEVICES):
        pairs = [pair for d, pair in received if d == device]
        current = stored.get(f"CRASH-{device}")
        working = [p for p in pairs if current is not None and p["accessId"] == current.access_id]
        assert len(working) <= 1
        for pair in working:
            assert current is not None
            assert otp.verify_otp(pair["otp"], current.otp_hash)
    assert verified.problem is None, verified
    checked = gateway("audit", "verify", env=env)
    assert checked.returncode == 0, checked.stderr


async def test_sigkill_during_an_upstream_call_leaves_an_attempt_of_unknown_outcome(
    database: Database, tmp_path: Path
) -> None:
    upstream = ScriptedUpstream()
    called = anyio.Event()

    async def hold(request: Any) -> Any:
        called.set()
        return await upstream.hang(request)

    upstream.handler = hold
    async with run_server(upstream.app) as upstream_url:
        env = environment(database, tmp_path, GATEWAY_BACKEND="upstream", GATEWAY_UPSTREAM_URL=upstream_url)
        assert gateway("migrate", env=env).returncode == 0
        async with (
            serving(env) as (process, base),
            httpx.AsyncClient(base_url=base, timeout=30) as client,
            anyio.create_task_group() as tasks,
        ):

            async def regenerate() -> None:
                with pytest.raises(httpx.TransportError):
                    await client.put(path(0))

            tasks.start_soon(regenerate)
            with anyio.fail_after(10):
                await called.wait()
            process.kill()  # SIGKILL
        upstream.release.set()

        async with serving(env):
            pass

    verified = gateway("audit", "verify", env=env)
    assert verified.returncode == 0, verified.stderr
    assert OUTCOME_UNKNOWN in verified.stdout
    exported = [json.loads(line) for line in gateway("audit", "export", env=env).stdout.splitlines()]
    assert [(row["outcome"], row["recorded_outcome"]) for row in exported] == [(OUTCOME_UNKNOWN, PENDING)]
    assert exported[0]["inventory_id"] == "CRASH-0"
