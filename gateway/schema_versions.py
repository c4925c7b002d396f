"""The store's schema revisions (Alembic): the revision a store is at, the one the code needs, and
bringing the store there (`gateway migrate`).

The revisions live in `gateway/migrations/` (package data: env.py, versions/), driven from here
with an Alembic `Config` built in code, so there is no alembic.ini. They form two independent
branches in one version table: `trail` (the audit trail and the rate limiter's counters, which
every backend needs) and `engine` (the local engine's tables, which only the local backend needs),
so upstream mode migrates, and creates, no engine table. The version table lives beside the tables
(in `GATEWAY_DATABASE_SCHEMA` on PostgreSQL).

A store made by the gateway before migrations existed has tables and no version table. Its tables
are compared with the first revision's (Alembic's `compare_metadata`): when they match, `gateway
migrate` adopts them (stamps that revision, then upgrades as usual); when they differ, it refuses,
naming the differences. Read-only tools (`gateway audit`) accept such a store as it is when it
matches and the code needs no later revision.

Status checks (`gateway migrate --check`, and the check before `audit`, `seed` and `serve`) read
in a plain read transaction, without the migration lock, and create nothing: a SQLite file that
does not exist is reported as missing, not made.

Migrating holds a lock for the whole transaction (PostgreSQL: an advisory lock per schema; SQLite:
`BEGIN IMMEDIATE`), and the store's revision is read again under it: two gateways starting at once
migrate once. Every revision of a run commits together or not at all. On SQLite the revisions run
with foreign keys off (`store.schema_engine`: SQLite cannot turn them off inside a transaction, and
rebuilding a table others refer to needs them off); `PRAGMA foreign_key_check` runs before the
commit and a broken reference rolls the whole run back, naming the tables.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, inspect, text

from gateway import audit, rate_limits
from gateway.engine import tables as engine_tables
from gateway.store import metadata, schema_engine, sqlite_file

SCRIPTS = Path(__file__).parent / "migrations"
"""Alembic's script folder: env.py and versions/."""
CONNECTION = "gateway.connection"
"""The key of `Config.attributes` under which env.py finds the connection to migrate."""
TRAIL = "trail"
ENGINE = "engine"

BRANCH_TABLES = {TRAIL: (*audit.TABLES, *rate_limits.TABLES), ENGINE: engine_tables.TABLES}
"""The live tables each branch's revisions make."""


class StoreVersionError(Exception):
    """The store cannot be used, or migrated, as it is: one line saying why and what to do."""


def branches(backend: str) -> tuple[str, ...]:
    """The branches a backend needs: the trail always, the engine's only for the local engine."""
    return (TRAIL, ENGINE) if backend == "local" else (TRAIL,)


def target_metadata() -> MetaData:
    """Every table of the gateway (each declared by its owner, imported above)."""
    return metadata


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, built in code; env.py migrates `connection`."""
    built = Config()
    built.set_main_option("script_location", str(SCRIPTS))
    built.set_main_option("path_separator", "os")
    if connection is not None:
        built.attributes[CONNECTION] = connection
    return built


@dataclass(frozen=True)
class Branch:
    """One line of revisions: its first and last revision, every revision, and the first one's tables."""

    name: str
    base: str
    head: str
    revisions: frozenset[str]
    baseline: MetaData
    """The tables as the first revision makes them (frozen in its module)."""


@cache
def known_branches() -> dict[str, Branch]:
    script = ScriptDirectory.from_config(config())
    found: dict[str, Branch] = {}
    for name in (TRAIL, ENGINE):
        walked = list(script.walk_revisions("base", f"{name}@head"))  # from the head down to the base
        baseline = walked[-1].module.metadata
        assert isinstance(baseline, MetaData), "a branch's first revision declares its tables in `metadata`"
        revisions = frozenset(each.revision for each in walked)
        found[name] = Branch(name, walked[-1].revision, walked[0].revision, revisions, baseline)
    return found


@dataclass(frozen=True)
class Status:
    """Where a store stands against what the code needs, for the branches it needs."""

    recorded: dict[str, str | None]
    """Each needed branch's revision in the store's version table (None: none recorded)."""
    needs: dict[str, str]
    """Each needed branch's last revision: what the code expects."""
    unknown: tuple[str, ...] = ()
    """Revisions the store records that this code does not know (a newer gateway migrated it)."""
    predating: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Needed branches with no revision recorded whose tables exist (made before migrations), and
    how those tables differ from the branch's first revision (empty: they match)."""
    missing: str | None = None
    """The SQLite file the store would be, which does not exist (the store was never made there)."""

    @property
    def current(self) -> bool:
        return not self.unknown and all(self.recorded[name] == head for name, head in self.needs.items())

    @property
    def mismatched(self) -> dict[str, tuple[str, ...]]:
        return {name: differences for name, differences in self.predating.items() if differences}

    @property
    def readable(self) -> bool:
        """Current, or made before migrations with tables that are exactly what the code needs."""
        if self.unknown or self.mismatched:
            return False
        return all(
            self.recorded[name] == head or (name in self.predating and known_branches()[name].base == head)
            for name, head in self.needs.items()
        )

    def at(self) -> str:
        revisions = [revision for revision in self.recorded.values() if revision]
        return ", ".join(revisions) or "none"

    def line(self) -> str:
        """One line: where the store stands and, when it is not current, what to run."""
        needs = ", ".join(self.needs.values())
        if self.missing:
            return f"the store does not exist (no file {self.missing}), the code needs {needs}: run `gateway migrate`"
        if self.unknown:
            return (
                f"the store is at revision {', '.join(self.unknown)}, which this gateway does not know "
                "(a newer gateway migrated it): run that version or a newer one"
            )
        if self.current:
            return f"the store is at revision {needs}: up to date"
        for name, differences in self.mismatched.items():
            shown = "; ".join(differences[:4]) + ("; …" if len(differences) > 4 else "")
            return (
                f"the store's tables were made before migrations and differ from revision "
                f"{known_branches()[name].base} ({shown}): start the store afresh, or bring those tables to that "
                "revision by hand and run `gateway migrate`"
            )
        made_before = " (its tables were made before migrations)" if self.predating else ""
        return f"the store is at revision {self.at()}{made_before}, the code needs {needs}: run `gateway migrate`"


@dataclass(frozen=True)
class Migration:
    """What `upgrade` did."""

    before: Status
    after: Status

    def line(self) -> str:
        if self.before.current:
            return f"the store is at revision {self.after.at()}: up to date, nothing to do"
        adopted = (
            f" (adopted its tables made before migrations at {', '.join(self.before.predating)})"
            if self.before.predating
            else ""
        )
        return f"the store is migrated from revision {self.before.at()} to {self.after.at()}{adopted}"


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    """Alembic's own info lines ("Context impl …", "Running upgrade …") kept out of the log: the
    caller says in one line what happened. (A CLI process, before any worker or request exists.)"""
    alembic_log = logging.getLogger("alembic")
    level = alembic_log.level
    alembic_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        alembic_log.setLevel(level)


async def status(url: str, schema: str, needed: Sequence[str]) -> Status:
    """Where the store at `url` (and `schema`) stands for the branches `needed`; changes nothing,
    creates nothing (a SQLite file that does not exist is `missing`), and takes no write lock (a
    read transaction: `upgrade` reads the revision again under its lock)."""
    missing = sqlite_file(url)
    if missing is not None and not missing.exists():
        heads = {name: known_branches()[name].head for name in needed}
        return Status(dict.fromkeys(needed), heads, missing=str(missing))
    engine = schema_engine(url, schema=schema, write=False)
    try:
        async with engine.connect() as conn:
            with _quiet_alembic():
                return await conn.run_sync(_status, tuple(needed), schema)
    finally:
        await engine.dispose()


async def upgrade(url: str, schema: str, needed: Sequence[str]) -> Migration:
    """Bring the branches `needed` to their last revision, adopting tables made before migrations
    that match a first revision. Raises `StoreVersionError` when the store cannot be migrated."""
    engine = schema_engine(url, schema=schema)
    try:
        async with engine.connect() as conn:
            with _quiet_alembic():
                done = await conn.run_sync(_upgrade, tuple(needed), schema)
    finally:
        await engine.dispose()
    return done


async def ensure(
    url: str, schema: str, needed: Sequence[str], *, may_migrate: bool, read_only: bool = False
) -> str | None:
    """Have the store at the code's revision for the branches `needed`: migrate it when `may_migrate`
    (the embedded SQLite default), else raise `StoreVersionError` (one line saying what to run) when it
    is behind. `read_only` tools also accept a store made before migrations whose tables are what the
    code needs. Returns what a migration did, if one ran."""
    found = await status(url, schema, needed)
    if found.current or (read_only and found.readable):
        return None
    if may_migrate and not found.unknown and not found.mismatched:
        return (await upgrade(url, schema, needed)).line()
    raise StoreVersionError(found.line())


def _status(conn: Connection, needed: tuple[str, ...], schema: str) -> Status:
    with conn.begin():
        return _read(conn, needed, schema)


def _upgrade(conn: Connection, needed: tuple[str, ...], schema: str) -> Migration:
    with conn.begin():
        if conn.dialect.name == "postgresql":
            # Held until the commit: a second migrator waits here, then finds the store current.
            key = f"gateway-migrate:{schema}"
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})
        before = _read(conn, needed, schema)
        if before.unknown or before.mismatched:
            raise StoreVersionError(before.line())
        alembic = config(conn)
        for name in before.predating:
            command.stamp(alembic, known_branches()[name].base)
        for name in needed:
            command.upgrade(alembic, f"{name}@head")
        _check_references(conn, before)
        after = _read(conn, needed, schema)
    return Migration(before, after)


def _check_references(conn: Connection, before: Status) -> None:
    """SQLite: the revisions ran with foreign keys off (so that they can rebuild a table others
    refer to); before the commit, every reference must hold again, else the whole run rolls back.
    (PostgreSQL checks each statement itself.)"""
    if conn.dialect.name != "sqlite":
        return
    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()  # (table, rowid, parent, fk id)
    if broken:
        pairs = sorted({(str(row[0]), str(row[2])) for row in broken})
        named = "; ".join(f"rows of {table} refer to missing rows of {parent}" for table, parent in pairs)
        raise StoreVersionError(
            f"the migration would leave broken references ({named}): rolled back, "
            f"the store is still at revision {before.at()}"
        )


def _read(conn: Connection, needed: tuple[str, ...], schema: str) -> Status:
    if schema and conn.dialect.name == "postgresql" and conn.execute(text("SELECT current_schema()")).scalar() is None:
        raise StoreVersionError(f"GATEWAY_DATABASE_SCHEMA: the schema {schema!r} does not exist in that database")
    present = set(inspect(conn).get_table_names())
    recorded = set(MigrationContext.configure(conn).get_current_heads())
    known = known_branches()
    unknown = sorted(recorded.difference(*(branch.revisions for branch in known.values())))
    at: dict[str, str | None] = {}
    predating: dict[str, tuple[str, ...]] = {}
    for name in needed:
        branch = known[name]
        at[name] = next((revision for revision in recorded if revision in branch.revisions), None)
        if at[name] is None and present & set(branch.baseline.tables):
            predating[name] = differences(conn, branch.baseline)
    return Status(at, {name: known[name].head for name in needed}, tuple(unknown), predating)


def differences(conn: Connection, expected: MetaData) -> tuple[str, ...]:
    """How the store's tables differ from `expected`'s (only tables `expected` declares), in words."""
    names = set(expected.tables)

    def include_name(name: str | None, type_: str, _parents: object) -> bool:
        return type_ != "table" or name in names

    context = MigrationContext.configure(conn, opts={"compare_type": True, "include_name": include_name})
    return tuple(_described(difference) for difference in compare_metadata(context, expected))


def _described(difference: Any) -> str:
    """One of Alembic's differences in words: what the store lacks (`missing`) or has beyond (`unexpected`)."""
    if isinstance(difference, list):  # modify_type, modify_nullable, …: one column changed
        kind, _, table, column = difference[0][:4]
        return f"{table}.{column}: {kind.removeprefix('modify_')} differs"
    kind, *rest = difference
    verdict = "missing" if kind.startswith("add_") else "unexpected"
    if kind in {"add_table", "remove_table"}:
        return f"table {rest[0].name} {verdict}"
    if kind in {"add_column", "remove_column"}:
        return f"{rest[1]}.{rest[2].name} {verdict}"
    thing = rest[-1]
    table = getattr(getattr(thing, "table", None), "name", "?")
    return f"{kind.partition('_')[2]} {getattr(thing, 'name', None) or ''} on {table} {verdict}".replace("  ", " ")
