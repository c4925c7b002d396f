"""Migrations (Alembic) on both databases: every revision runs up, the migrated schema is what the
code declares (Alembic's `compare_metadata` finds no difference), `gateway migrate [--check]` as a
user runs it, and `gateway serve` on a store that is behind: refused in one line, or migrated when
it is the embedded SQLite default. Stores made before migrations are adopted when they match."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
import pytest
from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, func, inspect, select, text

from gateway import schema_versions
from gateway.app import store_tables
from gateway.audit import audit_events
from gateway.engine.registry import DEMO_REGISTRY, load_registry
from gateway.engine.tables import seed, study_modes
from gateway.schema_versions import ENGINE, TRAIL
from gateway.settings import Settings
from gateway.store import Store, metadata, schema_engine
from tests.demo import ALL_TABLES, Database
from tests.utils import free_port, serving, wait_until_up

pytestmark = pytest.mark.anyio

FIRST = {TRAIL: "trail_0001", ENGINE: "engine_0001"}
ENGINE_TABLES = {"study_modes", "subjects", "devices", "credentials"}
TRAIL_TABLES = {"audit_events", "audit_head", "rate_counters"}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment; its store is the embedded SQLite default in the test's own folder."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return {**base, "GATEWAY_DATA_DIR": str(tmp_path / "data"), "GATEWAY_KDF_COST": "4", "GATEWAY_ENV_FILE": ""}


@pytest.fixture
def store_env(env: dict[str, str], database: Database) -> dict[str, str]:
    """`env` pointed at the test's own database (a SQLite file, or a PostgreSQL schema)."""
    return {**env, "GATEWAY_DATABASE_URL": database.url, "GATEWAY_DATABASE_SCHEMA": database.schema}


async def gateway(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = await anyio.run_process([sys.executable, "-m", "gateway", *args], env=env, check=False)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(), done.stderr.decode())


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    return lines[0]


async def on_store(database: Database, work: object) -> object:
    """Run `work(connection)` in one committed transaction on the schema engine of `database`."""
    engine = schema_engine(database.url, schema=database.schema)
    try:
        async with engine.connect() as conn:

            def run(sync: Connection) -> object:
                with sync.begin():
                    return work(sync)  # type: ignore[operator]

            return await conn.run_sync(run)
    finally:
        await engine.dispose()


def differences_from_code(conn: Connection) -> tuple[str, ...]:
    return schema_versions.differences(conn, metadata)


def versions(conn: Connection) -> set[str]:
    return set(MigrationContext.configure(conn).get_current_heads())


def tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def every_revision_up(conn: Connection) -> list[str]:
    """Each branch from its base to its head one revision at a time, checking the version table after each."""
    alembic = schema_versions.config(conn)
    script = ScriptDirectory.from_config(alembic)
    ran: list[str] = []
    for name in (TRAIL, ENGINE):
        for revision in reversed(list(script.walk_revisions("base", f"{name}@head"))):
            command.upgrade(alembic, revision.revision)
            assert revision.revision in versions(conn)
            ran.append(revision.revision)
    return ran


async def test_every_revision_up_gives_the_schema_the_code_declares(database: Database) -> None:
    ran = await on_store(database, every_revision_up)
    assert isinstance(ran, list)
    assert {FIRST[TRAIL], FIRST[ENGINE]} <= set(ran)
    assert await on_store(database, differences_from_code) == ()
    assert await on_store(database, versions) == {schema_versions.known_branches()[b].head for b in (TRAIL, ENGINE)}
    # The migrated store works: the demo registry seeds, and the chain's head row is there.
    store = await Store.open(database.url, schema=database.schema, create=False)
    try:
        await seed(store, load_registry(DEMO_REGISTRY))
        count = await store.read(lambda conn: conn.execute(select(func.count()).select_from(study_modes)).scalar())
        assert count
    finally:
        await store.close()


async def test_the_comparison_sees_a_difference(database: Database) -> None:
    """The no-difference check above is not vacuous: a missing column is named."""
    await schema_versions.upgrade(database.url, database.schema, (TRAIL, ENGINE))
    await on_store(database, lambda conn: conn.execute(text("DROP TABLE rate_counters")))
    assert await on_store(database, differences_from_code) == ("table rate_counters missing",)


async def test_migrate_from_empty(store_env: dict[str, str], database: Database) -> None:
    checked = await gateway(store_env, "migrate", "--check")
    assert checked.returncode == 1
    where = "does not exist (no file {})".format(database.url.removeprefix("sqlite+aiosqlite:///"))
    assert one_line(checked.stdout) == (
        f"the store {where if database.kind == 'sqlite' else 'is at revision none'}, "
        "the code needs trail_0001, engine_0001: run `gateway migrate`"
    )
    migrated = await gateway(store_env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert one_line(migrated.stdout) == "the store is migrated from revision none to trail_0001, engine_0001"
    assert await on_store(database, differences_from_code) == ()
    checked = await gateway(store_env, "migrate", "--check")
    assert checked.returncode == 0
    assert one_line(checked.stdout) == "the store is at revision trail_0001, engine_0001: up to date"
    again = await gateway(store_env, "migrate")
    assert again.returncode == 0
    assert "nothing to do" in one_line(again.stdout)


async def test_migrate_from_the_first_revision_keeps_the_data(store_env: dict[str, str], database: Database) -> None:
    def first_revisions(conn: Connection) -> None:
        alembic = schema_versions.config(conn)
        for revision in FIRST.values():
            command.upgrade(alembic, revision)

    await on_store(database, first_revisions)
    store = await Store.open(database.url, schema=database.schema, create=False)
    try:
        await seed(store, load_registry(DEMO_REGISTRY))
    finally:
        await store.close()
    migrated = await gateway(store_env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert await on_store(database, versions) == {schema_versions.known_branches()[b].head for b in (TRAIL, ENGINE)}
    assert await on_store(database, differences_from_code) == ()
    count = await on_store(database, lambda conn: conn.execute(select(func.count()).select_from(study_modes)).scalar())
    assert count
    assert (await gateway(store_env, "migrate", "--check")).returncode == 0


async def test_read_only_commands_make_no_sqlite_file(env: dict[str, str], tmp_path: Path) -> None:
    """`migrate --check` and `audit` on a SQLite store that was never made say so, and make nothing
    (neither the file nor its folder)."""
    data = Path(env["GATEWAY_DATA_DIR"])
    checked = await gateway(env, "migrate", "--check")
    assert checked.returncode == 1
    assert one_line(checked.stdout) == (
        f"the store does not exist (no file {data / 'gateway.sqlite3'}), the code needs trail_0001, engine_0001: "
        "run `gateway migrate`"
    )
    elsewhere = tmp_path / "elsewhere" / "store.sqlite3"
    named = {**env, "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{elsewhere}"}
    for args in (("migrate", "--check"), ("audit", "verify"), ("audit", "head")):
        done = await gateway(named, *args)
        line = one_line(done.stdout if args[0] == "migrate" else done.stderr)
        assert done.returncode == (1 if args[0] == "migrate" else 2), line
        assert f"the store does not exist (no file {elsewhere})" in line
    assert not await anyio.Path(data).exists()
    assert not await anyio.Path(elsewhere.parent).exists()


async def test_check_reads_beside_a_busy_writer(env: dict[str, str], tmp_path: Path) -> None:
    """A gateway holding SQLite's write lock does not hold up `migrate --check` or `audit`: they read
    in a plain read transaction (only `gateway migrate` takes the lock). The folder's name needs
    quoting in SQLite's URI filename."""
    path = tmp_path / "a store #1 100%" / "store.sqlite3"
    store_env = {**env, "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{path}"}
    assert (await gateway(store_env, "migrate")).returncode == 0
    writer = sqlite3.connect(path, isolation_level=None)
    try:
        writer.execute("BEGIN IMMEDIATE")  # as the gateway's writer holds it during a batch
        writer.execute("DELETE FROM rate_counters")
        checked = await gateway(store_env, "migrate", "--check")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert one_line(checked.stdout) == "the store is at revision trail_0001, engine_0001: up to date"
        verified = await gateway(store_env, "audit", "verify")
        assert verified.returncode == 0, verified.stderr
        writer.execute("ROLLBACK")
    finally:
        writer.close()


async def test_check_is_behind_until_every_needed_branch_is_migrated(
    store_env: dict[str, str], database: Database
) -> None:
    upstream = {**store_env, "GATEWAY_BACKEND": "upstream", "GATEWAY_UPSTREAM_URL": "https://tenant.example"}
    assert one_line((await gateway(upstream, "migrate")).stdout).endswith("from revision none to trail_0001")
    assert (await gateway(upstream, "migrate", "--check")).returncode == 0
    local = await gateway(store_env, "migrate", "--check")  # the local engine needs its own branch too
    assert local.returncode == 1
    assert "at revision trail_0001, the code needs trail_0001, engine_0001" in one_line(local.stdout)


async def test_upstream_mode_migrates_no_engine_table(store_env: dict[str, str], database: Database) -> None:
    upstream = {**store_env, "GATEWAY_BACKEND": "upstream", "GATEWAY_UPSTREAM_URL": "https://tenant.example"}
    assert (await gateway(upstream, "migrate")).returncode == 0
    present = await on_store(database, tables)
    assert isinstance(present, set)
    assert present >= TRAIL_TABLES
    assert not present & ENGINE_TABLES
    assert await on_store(database, versions) == {"trail_0001"}


async def test_a_store_migrated_by_a_newer_gateway_is_named(store_env: dict[str, str], database: Database) -> None:
    assert (await gateway(store_env, "migrate")).returncode == 0
    await on_store(
        database,
        lambda conn: conn.execute(
            text("UPDATE alembic_version SET version_num = 'trail_9999' WHERE version_num = 'trail_0001'")
        ),
    )
    checked = await gateway(store_env, "migrate", "--check")
    assert checked.returncode == 1
    assert "revision trail_9999, which this gateway does not know" in one_line(checked.stdout)
    refused = await gateway(store_env, "migrate")
    assert refused.returncode == 2
    assert "trail_9999" in one_line(refused.stderr)


async def test_a_store_made_before_migrations_is_adopted(store_env: dict[str, str], database: Database) -> None:
    """Tables made by the gateway before migrations (create_all), with data: stamped, kept, current."""
    store = await Store.open(database.url, schema=database.schema, tables=ALL_TABLES)
    try:
        await seed(store, load_registry(DEMO_REGISTRY))
    finally:
        await store.close()
    checked = await gateway(store_env, "migrate", "--check")
    assert checked.returncode == 1
    assert "made before migrations" in one_line(checked.stdout)
    migrated = await gateway(store_env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "adopted its tables made before migrations at trail, engine" in one_line(migrated.stdout)
    assert await on_store(database, versions) == {"trail_0001", "engine_0001"}
    count = await on_store(database, lambda conn: conn.execute(select(func.count()).select_from(study_modes)).scalar())
    assert count


async def test_a_store_made_before_migrations_that_differs_is_refused(
    store_env: dict[str, str], database: Database
) -> None:
    """A trail from before the unit-of-work redesign (no access_id, no attempt_seq) is named, not touched."""
    old = [column for column in audit_events.columns if column.name not in {"access_id", "attempt_seq"}]
    columns = ", ".join(
        f"{column.name} {'VARCHAR(255)' if column.name != 'seq' else 'BIGINT PRIMARY KEY'}" for column in old
    )
    await on_store(database, lambda conn: conn.execute(text(f"CREATE TABLE audit_events ({columns})")))
    refused = await gateway(store_env, "migrate")
    assert refused.returncode == 2
    line = one_line(refused.stderr)
    assert "audit_events.access_id missing" in line
    assert "audit_events.attempt_seq missing" in line
    assert "start the store afresh" in line
    present = await on_store(database, tables)
    assert present == {"audit_events"}  # nothing made, nothing stamped


async def test_seed_and_audit_on_a_store_that_is_behind(
    store_env: dict[str, str], database: Database, tmp_path: Path
) -> None:
    seeded = await gateway(store_env, "seed", str(DEMO_REGISTRY))
    assert seeded.returncode == 2
    assert one_line(seeded.stderr).endswith("run `gateway migrate`")
    verified = await gateway(store_env, "audit", "verify")
    assert verified.returncode == 2
    assert one_line(verified.stderr).endswith("run `gateway migrate`")
    assert await on_store(database, tables) == set()  # neither made a table
    assert (await gateway(store_env, "migrate")).returncode == 0
    assert (await gateway(store_env, "seed", str(DEMO_REGISTRY))).returncode == 0
    verified = await gateway(store_env, "audit", "verify")
    assert verified.returncode == 0, verified.stderr


async def test_two_migrations_at_once_migrate_once(store_env: dict[str, str], database: Database) -> None:
    results: list[subprocess.CompletedProcess[str]] = []

    async def run() -> None:
        results.append(await gateway(store_env, "migrate"))

    async with anyio.create_task_group() as group:
        group.start_soon(run)
        group.start_soon(run)
    assert [done.returncode for done in results] == [0, 0]
    lines = [one_line(done.stdout) for done in results]
    assert sum("migrated from revision none" in line for line in lines) == 1
    assert sum("nothing to do" in line for line in lines) == 1
    assert await on_store(database, differences_from_code) == ()


def serve_refused(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_serve_refuses_a_postgres_store_that_is_behind(store_env: dict[str, str], database: Database) -> None:
    done = await anyio.to_thread.run_sync(serve_refused, store_env)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert one_line(done.stderr) == (
        "gateway serve: the store is at revision none, the code needs trail_0001, engine_0001: run `gateway migrate`"
    )
    assert await on_store(database, tables) == set()  # refused before anything was made
    # Half-way (the trail only) is behind too; once migrated, the same store serves.
    upstream = {**store_env, "GATEWAY_BACKEND": "upstream", "GATEWAY_UPSTREAM_URL": "https://tenant.example"}
    assert (await gateway(upstream, "migrate")).returncode == 0
    done = await anyio.to_thread.run_sync(serve_refused, store_env)
    assert done.returncode == 2
    assert "at revision trail_0001, the code needs trail_0001, engine_0001" in one_line(done.stderr)
    assert (await gateway(store_env, "migrate")).returncode == 0

    def served() -> str:
        port = free_port()
        with serving(store_env, port) as process:
            assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        return process.output

    output = await anyio.to_thread.run_sync(served)
    assert "demo data loaded" in output


def test_the_embedded_default_migrates_itself(env: dict[str, str]) -> None:
    port = free_port()
    with serving(env, port) as served:
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    assert "The store is migrated from revision none to trail_0001, engine_0001" in served.output
    checked = subprocess.run(
        [sys.executable, "-m", "gateway", "migrate", "--check"], env=env, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout
    with serving(env, port) as served:  # the second start finds it current
        pass
    assert "migrated" not in served.output


def test_the_embedded_default_in_upstream_mode_has_no_engine_table(env: dict[str, str]) -> None:
    upstream = {**env, "GATEWAY_BACKEND": "upstream", "GATEWAY_UPSTREAM_URL": "http://127.0.0.1:9"}
    with serving(upstream, free_port()) as served:
        pass
    assert "from revision none to trail_0001" in served.output
    with sqlite3.connect(Path(env["GATEWAY_DATA_DIR"]) / "gateway.sqlite3") as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        recorded = {row[0] for row in conn.execute("SELECT version_num FROM alembic_version")}
    conn.close()
    assert names >= TRAIL_TABLES
    assert not names & ENGINE_TABLES
    assert recorded == {"trail_0001"}


def test_fixtures_create_what_the_migrations_make() -> None:
    """The test suite's fixtures create tables with create_all (fast): the same tables, in both branches."""
    local = {table.name for table in store_tables(Settings(backend="local"))}
    made = {name for branch in schema_versions.BRANCH_TABLES.values() for name in (t.name for t in branch)}
    assert local == made
    assert {table.name for table in ALL_TABLES} == TRAIL_TABLES | ENGINE_TABLES


def uvicorn_factory(env: dict[str, str], port: int) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "uvicorn", "--factory", "gateway.app:app_from_env", "--port", str(port)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("database", ["postgres"], indirect=True)
async def test_the_asgi_factory_refuses_a_store_that_is_behind(store_env: dict[str, str], database: Database) -> None:
    """`uvicorn --factory gateway.app:app_from_env` checks the revision as `gateway serve` does, and
    creates nothing on a store that is behind."""
    process = uvicorn_factory(store_env, free_port())
    output, _ = await anyio.to_thread.run_sync(process.communicate, None, 60)
    assert process.returncode != 0
    assert "the store is at revision none, the code needs trail_0001, engine_0001: run `gateway migrate`" in output
    assert await on_store(database, tables) == set()


def test_the_asgi_factory_migrates_the_embedded_default(env: dict[str, str]) -> None:
    port = free_port()
    process = uvicorn_factory(env, port)
    try:
        wait_until_up(process, f"http://127.0.0.1:{port}/readyz")
    finally:
        process.terminate()
        process.communicate(timeout=30)
    with sqlite3.connect(Path(env["GATEWAY_DATA_DIR"]) / "gateway.sqlite3") as conn:
        recorded = {row[0] for row in conn.execute("SELECT version_num FROM alembic_version")}
    conn.close()
    assert recorded == set(FIRST.values())


# A later revision on SQLite: rebuilding a table others refer to (foreign keys off while the
# revisions run), and a revision that breaks a reference (caught before the commit, rolled back).
# The revisions are written into a copy of the script folder, never into gateway/migrations.

REBUILD = """
import sqlalchemy as sa
from alembic import op

revision = "engine_0002"
down_revision = "engine_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # recreate="always": SQLite would add a nullable column in place; a rebuild (copy, drop,
    # rename) is what any other change to the table needs, and what subjects and devices refer to.
    with op.batch_alter_table("study_modes", recreate="always") as batch:
        batch.add_column(sa.Column("note", sa.String(10), nullable=True))
"""

DANGLING = (
    REBUILD
    + """
    # Deletes a study that subjects still refer to: caught before the commit, so nothing of this
    # revision (not even the rebuild above) stays.
    op.execute("DELETE FROM study_modes WHERE study_id = (SELECT MIN(study_id) FROM subjects)")
"""
)


@pytest.fixture
def later_revision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Write a revision module into a copy of the script folder, which the migrations then use."""
    scripts = tmp_path / "migrations"
    shutil.copytree(schema_versions.SCRIPTS, scripts, ignore=shutil.ignore_patterns("__pycache__"))

    def write(source: str) -> None:
        (scripts / "versions" / "engine_0002_later.py").write_text(source)
        monkeypatch.setattr(schema_versions, "SCRIPTS", scripts)
        schema_versions.known_branches.cache_clear()

    yield write
    monkeypatch.undo()
    schema_versions.known_branches.cache_clear()


async def migrated_with_demo_data(database: Database) -> None:
    await schema_versions.upgrade(database.url, database.schema, (TRAIL, ENGINE))
    store = await Store.open(database.url, schema=database.schema, create=False)
    try:
        await seed(store, load_registry(DEMO_REGISTRY))
    finally:
        await store.close()


@dataclass(frozen=True)
class EngineTables:
    """What a later revision may change: each engine table's row count, study_modes' columns, the version."""

    rows: dict[str, int]
    study_modes_columns: frozenset[str]
    version: frozenset[str]


def engine_tables(conn: Connection) -> EngineTables:
    rows = {name: int(conn.execute(text(f"SELECT COUNT(*) FROM {name}")).scalar_one()) for name in ENGINE_TABLES}
    columns = frozenset(column["name"] for column in inspect(conn).get_columns("study_modes"))
    return EngineTables(rows, columns, frozenset(versions(conn)))


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_a_revision_rebuilds_a_table_others_refer_to(
    database: Database, later_revision: Callable[[str], None]
) -> None:
    await migrated_with_demo_data(database)
    before = await on_store(database, engine_tables)
    assert isinstance(before, EngineTables)
    assert all(before.rows[name] for name in ("study_modes", "subjects", "devices"))  # the demo data
    later_revision(REBUILD)
    done = await schema_versions.upgrade(database.url, database.schema, (TRAIL, ENGINE))
    assert done.line() == "the store is migrated from revision trail_0001, engine_0001 to trail_0001, engine_0002"
    after = await on_store(database, engine_tables)
    assert after == EngineTables(
        before.rows, before.study_modes_columns | {"note"}, frozenset({"trail_0001", "engine_0002"})
    )
    assert await on_store(database, lambda conn: conn.exec_driver_sql("PRAGMA foreign_key_check").all()) == []


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_a_revision_that_breaks_a_reference_rolls_back(
    database: Database, later_revision: Callable[[str], None]
) -> None:
    await migrated_with_demo_data(database)
    before = await on_store(database, engine_tables)
    later_revision(DANGLING)
    with pytest.raises(schema_versions.StoreVersionError) as refused:
        await schema_versions.upgrade(database.url, database.schema, (TRAIL, ENGINE))
    line = str(refused.value)
    assert line.startswith("the migration would leave broken references (rows of ")
    assert "refer to missing rows of study_modes" in line
    assert line.endswith("rolled back, the store is still at revision trail_0001, engine_0001")
    assert await on_store(database, engine_tables) == before  # the rows, the table as it was, the version
