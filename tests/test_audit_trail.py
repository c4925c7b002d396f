"""The audit trail under attack and under load: keyed links, a recorded head, a live verify.

- Verifying a live gateway reads one snapshot: it never false-alarms and never blocks a writer
  (SQLite and PostgreSQL, regenerations over HTTP meanwhile).
- A row edited and the chain recomputed without the key is caught; a trail cut short with its
  head moved back passes `verify` but not `verify --expect-head`.
- The key lives in a file: made 0600 in development, required in production.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import anyio
import httpx
import pytest
from sqlalchemy import delete, select, update

from gateway.app import create_app
from gateway.audit import GENESIS, KEY_FILE, AuditEvent, AuditTrail, Head, audit_events, audit_head, audit_key
from gateway.domain import utc_now
from gateway.settings import Settings, SettingsError
from gateway.store import Store, UnitOfWork
from tests.demo import ALL_TABLES, POSTGRES_URL, TEST_AUDIT_KEY, TEST_HS256_SECRET, Database, rest_path
from tests.utils import run_server

pytestmark = pytest.mark.anyio

ROWS = 3000


def event(index: int) -> AuditEvent:
    return AuditEvent(at=utc_now(), action="test", outcome="SUCCESS", request_id=f"req-{index}", caller="tester")


async def fill(trail: AuditTrail, rows: int) -> None:
    """`rows` rows, in batches of 500 units."""
    for start in range(0, rows, 500):

        def unit(work: UnitOfWork, index: int = start) -> None:
            for offset in range(500):
                trail.append(work, event(index + offset))

        await trail.store.submit(unit)


@pytest.fixture
def live_settings(settings: Settings) -> Settings:
    return settings.replace(insecure_disable_auth=True, rate_limit_device=0, rate_limit_caller=0)


async def test_verify_on_a_live_gateway_reads_one_snapshot_and_blocks_nobody(
    live_settings: Settings, database: Database
) -> None:
    app = create_app(live_settings)
    answers: list[int] = []
    answered_during: list[int] = []
    verdicts: list[object] = []
    async with run_server(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
        store = await Store.open(database.url, schema=database.schema, tables=ALL_TABLES)
        try:
            trail = AuditTrail(store, audit_key(live_settings))
            await fill(trail, ROWS)
            done = anyio.Event()

            async def regenerate_meanwhile() -> None:
                while not done.is_set():
                    answers.append((await client.put(rest_path())).status_code)

            async with anyio.create_task_group() as tasks:
                for _ in range(4):
                    tasks.start_soon(regenerate_meanwhile)
                await anyio.sleep(0.2)  # the regenerations are under way
                for _ in range(3):
                    before = len(answers)
                    verdicts.append(await trail.verify())
                    answered_during.append(len(answers) - before)
                done.set()
            final = await trail.verify()
        finally:
            await store.close()
    assert all(verdict.problem is None for verdict in verdicts), verdicts  # type: ignore[attr-defined]
    assert all(count > 0 for count in answered_during), f"writers waited for the verify: {answered_during}"
    assert set(answers) == {404}, "a regeneration failed while the trail was verified"  # study unknown: audited
    assert final.rows == ROWS + len(answers)


async def test_an_edited_row_with_a_recomputed_chain_is_caught(store: Store) -> None:
    trail = AuditTrail(store, TEST_AUDIT_KEY)
    await fill(trail, 500)
    assert (await trail.verify()).problem is None
    # The forger edits row 2 and recomputes every link after it, but without the key.
    rows = await trail.records()
    prev = rows[0].hash
    async with store.transaction() as conn:
        for record in rows[1:]:
            edited = replace(record, caller="mallory") if record.seq == 2 else record
            body = {k: v for k, v in edited.to_json().items() if k not in {"seq", "prev_hash", "hash"}}
            canonical = json.dumps({**body, "seq": record.seq}, sort_keys=True, separators=(",", ":"))
            forged = hashlib.sha256(f"{prev}\n{canonical}".encode()).hexdigest()
            await conn.execute(
                update(audit_events)
                .where(audit_events.c.seq == record.seq)
                .values(caller=edited.caller, prev_hash=prev, hash=forged)
            )
            prev = forged
        await conn.execute(update(audit_head).values(hash=prev))
    assert (await trail.verify()).broken == (2, "its contents do not match its hash")


async def test_a_trail_cut_short_passes_verify_but_not_the_recorded_head(store: Store) -> None:
    trail = AuditTrail(store, TEST_AUDIT_KEY)
    await fill(trail, 500)
    recorded = await trail.head()
    assert recorded.seq == 500
    assert (await trail.verify(recorded)).problem is None
    # Delete the last rows and move the head back to the new last row: the chain is whole again.
    keep = 480
    async with store.transaction() as conn:
        last = (await conn.execute(select(audit_events.c.hash).where(audit_events.c.seq == keep))).scalar_one()
        await conn.execute(delete(audit_events).where(audit_events.c.seq > keep))
        await conn.execute(update(audit_head).values(seq=keep, hash=last))
    assert (await trail.verify()).problem is None
    verdict = await trail.verify(recorded)
    assert verdict.broken_at == 500
    assert verdict.problem is not None
    assert "cut short" in verdict.problem


def test_a_head_is_seq_and_mac() -> None:
    head = Head(12, "a" * 64)
    assert Head.parse(str(head)) == head
    for bad in ("12", "x:" + "a" * 64, "12:abc", "12:" + "A" * 64):
        with pytest.raises(ValueError, match="SEQ:MAC"):
            Head.parse(bad)
    assert str(Head(0, GENESIS)) == "0:" + "0" * 64


def test_the_development_key_is_made_once_readable_by_its_owner_only(tmp_path: Path) -> None:
    settings = Settings().replace(data_dir=str(tmp_path / "data"))
    key = audit_key(settings)
    assert len(key) == 32
    assert audit_key(settings) == key
    path = tmp_path / "data" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_production_needs_a_key_file_and_reads_it(tmp_path: Path) -> None:
    env = {"GATEWAY_ENV_FILE": "", "GATEWAY_PRODUCTION": "true", "GATEWAY_AUTH_HS256_SECRET": TEST_HS256_SECRET}
    with pytest.raises(SettingsError, match="GATEWAY_AUDIT_KEY_FILE is required"):
        audit_key(Settings.from_env(env))
    key_file = tmp_path / "audit.key"
    key_file.write_text(TEST_AUDIT_KEY.hex())
    settings = Settings.from_env({**env, "GATEWAY_AUDIT_KEY_FILE": str(key_file)})
    assert audit_key(settings) == TEST_AUDIT_KEY
    key_file.write_text("not hex")
    with pytest.raises(SettingsError, match="GATEWAY_AUDIT_KEY_FILE"):
        audit_key(settings)


def test_the_cli_prints_the_head_and_checks_it(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env = {**base, "GATEWAY_ENV_FILE": "", "GATEWAY_DATA_DIR": str(tmp_path / "data"), "GATEWAY_KDF_COST": "4"}

    def gateway(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )

    async def write_rows() -> None:
        settings = Settings.from_env(env)
        store = await Store.open(settings.store_url, tables=ALL_TABLES)
        try:
            await fill(AuditTrail(store, audit_key(settings)), 500)
        finally:
            await store.close()

    anyio.run(write_rows)
    head = gateway("audit", "head")
    assert head.returncode == 0, head.stderr
    recorded = head.stdout.strip()
    assert Head.parse(recorded).seq == 500
    assert gateway("audit", "verify", "--expect-head", recorded).returncode == 0
    refused = gateway("audit", "verify", "--expect-head", "nonsense")
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert "--expect-head" in refused.stderr


def test_the_cli_names_a_store_without_an_audit_trail_in_one_line(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env = {
        **base,
        "GATEWAY_ENV_FILE": "",
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_DATABASE_URL": POSTGRES_URL,
        "GATEWAY_DATABASE_SCHEMA": "no_such_schema_here",
    }
    for action in ("verify", "head", "export"):
        command = [sys.executable, "-m", "gateway", "audit", action]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 2
        assert done.stderr.count("\n") == 1, done.stderr
        assert "GATEWAY_DATABASE_SCHEMA" in done.stderr
