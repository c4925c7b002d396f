"""The `gateway` command: serve, migrate, seed, audit, token, export-schema, settings."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

from pydantic import SecretStr
from sqlalchemy.exc import SQLAlchemyError

from gateway import __version__, schema_versions
from gateway.api.sample import SAMPLE_MUTATION
from gateway.audit import OUTCOME_UNKNOWN, AuditTrail, Head, audit_key
from gateway.auth import development_token, serve_hint
from gateway.engine import tables
from gateway.engine.registry import DEMO_REGISTRY, Registry, RegistryError, load_registry
from gateway.schema_versions import StoreVersionError
from gateway.settings import (
    DEFAULT,
    ENV_FILE,
    ENVIRONMENT,
    VARIABLES,
    Settings,
    SettingsError,
    gathered,
    unknown_variables,
)
from gateway.store import Store

SCHEMA_FILE = Path("schema.graphql")

DEMO_READY_DEVICES = tuple(f"DEMO-READY-0{n}" for n in range(1, 6))
"""The demo data's ready devices (study DE305D…, subject A1B2C3D4…, MSUBJECT-001): each answers the
sample (`gateway.api.sample`, which names the first) with new credentials until its own rate limit,
so a first run has several to try."""


def demo_hint(settings: Settings) -> str:
    """What `gateway serve` says under the sample: which devices answer it, and how often each may."""
    limits = settings.rate_limits
    ready = f"{DEMO_READY_DEVICES[0]} … {DEMO_READY_DEVICES[-1]} (and DEMO-CLOUD-READY)"
    if limits.device == 0:
        return f"Ready demo devices: {ready}; no per-device limit (GATEWAY_RATE_LIMIT_DEVICE=0)."
    window = limits.window_seconds
    span = f"{window // 60} minutes" if window % 60 == 0 else f"{window} s"
    return (
        f"Ready demo devices: {ready}. Each allows {limits.device} regenerations in {span}, refusals "
        f"included (GATEWAY_RATE_LIMIT_DEVICE); past that it answers RateLimitedError with retryAfterSeconds: "
        f"change inventoryId to the next ready device."
    )


def exported_schema() -> str:
    from gateway.api.schema import schema

    return schema.as_str() + "\n"


async def _seed(
    settings: Settings, registry: Registry, *, only_if_empty: bool, progress: Callable[[int], None] | None = None
) -> bool:
    store = await Store.open(settings.store_url, schema=settings.database_schema, create=False)
    try:
        if only_if_empty and not await tables.store_is_empty(store):
            return False
        await tables.seed(store, registry, progress)
        return True
    finally:
        await store.close()


def _command() -> str:
    """How to run this same `gateway` again: the script's path, or `python -m gateway`."""
    if sys.argv[0].endswith("__main__.py"):
        return f"{sys.executable} -m gateway"
    return sys.argv[0]


class StartupError(SettingsError):
    """`gateway serve` cannot start: one line naming the setting and the cause (exit 2)."""


def _cause(error: BaseException) -> str:
    """The first line of what went wrong, the driver's own words rather than SQLAlchemy's wrapping."""
    orig = getattr(error, "orig", None) or error
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return text[:200]


@contextmanager
def _starting(settings: Settings, what: str) -> Iterator[None]:
    """Turn an OS or database error while `what` (`data` folder, `store`) is prepared into one
    `StartupError` naming the setting to look at; the traceback too at GATEWAY_LOG_LEVEL=debug."""
    try:
        yield
    except (OSError, SQLAlchemyError) as error:
        if settings.log_level == "debug":
            traceback.print_exc()
        cause = _cause(error)
        if what == "data":
            raise StartupError(
                f"GATEWAY_DATA_DIR: cannot write the data folder {settings.data_dir} ({cause})"
            ) from None
        if not settings.database_url:
            raise StartupError(
                f"GATEWAY_DATA_DIR: cannot create the SQLite store in {settings.data_dir} ({cause})"
            ) from None
        if settings.database_schema and "schema" in cause.lower():
            raise StartupError(
                f"GATEWAY_DATABASE_SCHEMA: {settings.database_schema!r} is not usable ({cause})"
            ) from None
        raise StartupError(f"GATEWAY_DATABASE_URL: cannot open the store there ({cause})") from None


def _check_port(settings: Settings) -> None:
    """Bind the host and port once (as uvicorn will, with SO_REUSEADDR) and let go: a port in use is
    refused here, in one line, before the store is touched and before any worker starts."""
    host, port = settings.http.host, settings.http.port
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        if settings.log_level == "debug":
            traceback.print_exc()
        raise StartupError(f"GATEWAY_PORT / GATEWAY_HOST: cannot listen on {host}:{port} ({_cause(error)})") from None


async def _store_ready(
    settings: Settings, needed: Sequence[str], *, may_migrate: bool, read_only: bool = False
) -> str | None:
    """Check that the store is at the revision the code needs for the branches `needed`. The
    embedded SQLite default (no GATEWAY_DATABASE_URL) is migrated here when `may_migrate`; any other
    store that is behind raises `StoreVersionError`, one line saying what to run. `read_only` tools
    also accept a store made before migrations whose tables are what the code needs. Returns what
    a migration did, if one ran."""
    may = may_migrate and not settings.database_url
    with _starting(settings, "store"):
        return await schema_versions.ensure(
            settings.store_url, settings.database_schema, needed, may_migrate=may, read_only=read_only
        )


def migrate(settings: Settings, check: bool) -> int:
    """`gateway migrate [--check]`: one line; with --check exit 1 when the store is not current."""
    needed = schema_versions.branches(settings.backend)
    with _starting(settings, "store"):
        if check:
            found = asyncio.run(schema_versions.status(settings.store_url, settings.database_schema, needed))
            print(found.line())
            return 0 if found.current else 1
        done = asyncio.run(schema_versions.upgrade(settings.store_url, settings.database_schema, needed))
    print(done.line())
    return 0


def serve(settings: Settings, workers: int) -> int:
    import uvicorn

    from gateway.logs import configure

    configure(settings)
    from gateway.app import check_tracing

    check_tracing(settings)  # GATEWAY_OTEL=true without the extra stops here, before the store or any worker
    _check_port(settings)
    with _starting(settings, "data"):
        audit_key(settings)  # a missing or unreadable key stops here, in one line, before any worker starts
    demo = settings.backend == "local" and settings.demo_data and not settings.production  # never in production
    # The store at the code's revision (the embedded default migrated) and the demo data loaded
    # here, once, before any worker starts.
    migrated = asyncio.run(_store_ready(settings, schema_versions.branches(settings.backend), may_migrate=True))
    if migrated:
        print(migrated[0].upper() + migrated[1:])
    if settings.backend == "local":
        loaded = False
        if demo:
            with _starting(settings, "store"):
                loaded = asyncio.run(_seed(settings, load_registry(DEMO_REGISTRY), only_if_empty=True))
        where = settings.database_url or settings.store_url
        print(f"Local credential engine, store: {where}" + (" (demo data loaded)" if loaded else ""))
    base = f"http://{settings.http.host}:{settings.http.port}"
    ide = "GraphQL (GraphiQL off in production)" if settings.production else "GraphiQL"
    print(f"{ide}: {base}/graphql    REST: {base}/ec-ors-svc/rest/v1.0/…    health: {base}/healthz")
    print(serve_hint(settings.auth, _command()))
    if demo:
        print("Paste this into GraphiQL (the demo data set answers it):\n")
        print(SAMPLE_MUTATION + "\n")
        print(demo_hint(settings) + "\n", flush=True)
    from gateway.shutdown import exiting_zero  # after the drain, exit 0 rather than die by the signal

    with _metrics_folder(settings, workers), exiting_zero():
        uvicorn.run(
            "gateway.app:app_from_env",
            factory=True,
            host=settings.http.host,
            port=settings.http.port,
            workers=workers,
            log_level=settings.log_level,
            log_config=None,  # the gateway's own (`gateway.logs`), JSON or text
            access_log=False,  # replaced by the gateway's access line, with the request id
            h11_max_incomplete_event_size=settings.http.max_header_bytes,
            timeout_graceful_shutdown=settings.shutdown_timeout_seconds,  # the drain's bound; then pools close
        )
    return 0


@contextmanager
def _metrics_folder(settings: Settings, workers: int) -> Iterator[None]:
    """With several workers, prometheus-client's multiprocess mode: a fresh folder where every worker
    writes its values and `/metrics` reads them all, removed when the server stops. The workers
    inherit `PROMETHEUS_MULTIPROC_DIR`; one set already (an operator's own folder) is kept."""
    from gateway.metrics import MULTIPROC_DIR

    if workers == 1 or not settings.metrics or os.environ.get(MULTIPROC_DIR):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="gateway-metrics-") as folder:
        os.environ[MULTIPROC_DIR] = folder
        try:
            yield
        finally:
            del os.environ[MULTIPROC_DIR]


class SeedProgress:
    """`written/total rows` on stderr as batches are written, for a large file on a terminal."""

    LARGE = 10_000

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.done, self.stream = total, 0, stream

    def __call__(self, rows: int) -> None:
        self.done += rows
        end = "\n" if self.done >= self.total else ""
        self.stream.write(f"\rseeding: {self.done:,}/{self.total:,} rows{end}")
        self.stream.flush()

    @classmethod
    def for_terminal(cls, total: int, stream: TextIO) -> SeedProgress | None:
        return cls(total, stream) if total >= cls.LARGE and stream.isatty() else None


def seed(settings: Settings, path: Path) -> int:
    registry = load_registry(path)
    total = sum(len(s.modes) for s in registry.studies) + len(registry.subjects) + len(registry.devices)
    progress = SeedProgress.for_terminal(total, sys.stderr)
    migrated = asyncio.run(_store_ready(settings, schema_versions.branches("local"), may_migrate=True))
    if migrated:
        print(migrated[0].upper() + migrated[1:])
    asyncio.run(_seed(settings, registry, only_if_empty=False, progress=progress))
    print(
        f"Seeded {len(registry.studies)} studies, {len(registry.subjects)} subjects and "
        f"{len(registry.devices)} devices into {settings.database_url or settings.store_url}"
    )
    return 0


async def audit(settings: Settings, action: str, output: Path | None = None, expect_head: str | None = None) -> int:
    try:
        head = Head.parse(expect_head) if expect_head else None
    except ValueError as error:
        raise SettingsError(f"--expect-head: {error}") from None
    await _store_ready(settings, schema_versions.branches("upstream"), may_migrate=False, read_only=True)
    store = await Store.open(settings.store_url, schema=settings.database_schema, create=False)
    try:
        return await _audit(AuditTrail(store, audit_key(settings)), action, output, head)
    except SQLAlchemyError as error:
        cause = str(getattr(error, "orig", error)).splitlines()[0][:200]
        raise SettingsError(
            f"GATEWAY_DATABASE_URL / GATEWAY_DATABASE_SCHEMA: cannot read the audit trail there ({cause})"
        ) from None
    finally:
        await store.close()


def _private(path: Path) -> TextIO:
    """`path` opened for writing, readable by its owner only (an export names callers and devices)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8")


async def _audit(trail: AuditTrail, action: str, output: Path | None, head: Head | None) -> int:
    """`gateway audit head|export|verify` on an open trail."""
    if action == "head":
        print(await trail.head())
        return 0
    if action == "export":
        with _private(output) if output else nullcontext(sys.stdout) as sink:
            await trail.export(sink)
        return 0
    verdict = await trail.verify(head)
    if verdict.problem is not None:
        print(f"audit trail BROKEN at row {verdict.broken_at}: {verdict.problem}", file=sys.stderr)
        return 1
    print(f"audit trail intact: {verdict.rows} rows" + (f", reaching the recorded head {head}" if head else ""))
    unknown = verdict.unknown_outcomes
    if unknown:
        rows = ", ".join(str(seq) for seq in unknown[:20]) + (", …" if len(unknown) > 20 else "")
        print(
            f"{len(unknown)} attempts with {OUTCOME_UNKNOWN}: an upstream call began and its outcome "
            f"was never recorded (rows {rows})"
        )
    return 0


def token(settings: Settings, study: str, mode: str, ttl: int, subject: str) -> int:
    """Print a development token (stdout: the token alone, so that it can be captured)."""
    if settings.production:
        raise SettingsError("development tokens are refused when GATEWAY_PRODUCTION=true")
    longest = settings.auth.max_token_lifetime_seconds
    if not 60 <= ttl <= longest:
        raise SettingsError(f"--ttl must be between 60 and {longest} seconds (GATEWAY_AUTH_MAX_TOKEN_LIFETIME_SECONDS)")
    try:
        minted = development_token(
            settings.auth, settings.data_dir, study=study, mode=mode, ttl_seconds=ttl, subject=subject
        )
    except ValueError as error:
        raise SettingsError(str(error)) from None
    print(minted)
    header = json.dumps({"Authorization": f"Bearer {minted}"})
    print(f"Valid {ttl} s. For GraphiQL's Headers pane:\n{header}", file=sys.stderr)
    return 0


def export_schema(path: Path, check: bool) -> int:
    exported = exported_schema()
    if check:
        current = path.read_text(encoding="utf-8") if path.is_file() else ""
        if current != exported:
            print(f"{path} differs from the schema the code exports: run 'gateway export-schema'", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    path.write_text(exported, encoding="utf-8")
    print(f"wrote {path}")
    return 0


MASK = "********"
EMPTY = "''"
_SECRET_NAME = re.compile(r"(^|_)(SECRET|PASSWORD|PASSWD|TOKEN|KEY)$")
"""Names of values never shown: `…_SECRET`, `…_PASSWORD`, `…_TOKEN` (not `…_TOKEN_URL`, a URL)."""
SETTINGS_DOCS = "the README's Settings section (README.md#settings)"


def _shown(name: str, value: object) -> str:
    """`value` as `gateway settings` prints it: secrets masked, a URL's password too."""
    if isinstance(value, SecretStr) or _SECRET_NAME.search(name):
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        return MASK if text else ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(str(item) for item in value)
    text = str(value)
    parts = urlsplit(text) if "://" in text else None
    if parts is not None and parts.password:
        host = parts.netloc.rpartition("@")[2]
        text = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}"))
    return text


def show_settings(settings: Settings, as_json: bool, environ: Mapping[str, str] | None = None) -> int:
    """Every `GATEWAY_*` variable, its effective value (secrets masked) and where it came from."""
    env = os.environ if environ is None else environ
    sources = {name: source for name, (_, source) in gathered(env).items()}
    rows: list[tuple[str, str, str]] = []
    for name, variable in VARIABLES.items():
        holder = getattr(settings, variable.group) if variable.group else settings
        rows.append((name, _shown(name, getattr(holder, variable.field)), sources.get(name, DEFAULT)))
    rows.append((ENV_FILE, env.get(ENV_FILE, ".env"), ENVIRONMENT if ENV_FILE in env else DEFAULT))
    rows = [
        (name, value, source if source in {ENVIRONMENT, DEFAULT} else f"env file {source}")
        for name, value, source in rows
    ]
    if as_json:
        listed = [{"name": name, "value": value, "source": source} for name, value, source in rows]
        print(json.dumps({"settings": listed}, indent=2))
        return 0
    names, values = max(len(name) for name, _, _ in rows), max(len(value or EMPTY) for _, value, _ in rows)
    for name, value, source in rows:
        print(f"{name:<{names}} = {value or EMPTY:<{values}}  ({source})")
    return 0


def _command_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str, description: str
) -> argparse.ArgumentParser:
    """A sub-command with its one-line `summary` (in `gateway --help`) and its `description` (in its own)."""
    return commands.add_parser(name, help=summary, description=description)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="GraphQL gateway for Clinical One device credentials. "
        f"Settings are GATEWAY_* variables, documented in {SETTINGS_DOCS}; 'gateway settings' shows them.",
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = _command_parser(
        commands,
        "serve",
        "run the gateway (GraphQL at /graphql, REST face, /healthz)",
        "Run the gateway under uvicorn: GraphQL and GraphiQL at /graphql, the REST face, /api/deviceBootstrap, "
        "/healthz, /readyz and /metrics. It first checks that the store is at the code's revision (the "
        "embedded SQLite default migrates itself; any other store behind it is refused: run 'gateway migrate') "
        "and, on the local backend with an empty store, loads the demo data. Every other setting is a "
        "GATEWAY_* environment variable (or a line of the "
        f".env file GATEWAY_ENV_FILE names), documented in {SETTINGS_DOCS}; 'gateway settings' lists them "
        "with their effective values and where each came from.",
    )
    serve_cmd.add_argument("--host", help="interface to listen on (default: GATEWAY_HOST or 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="port to listen on (default: GATEWAY_PORT or 8000)")
    serve_cmd.add_argument(
        "--workers", type=int, default=1, help="worker processes (default: 1; with more, use PostgreSQL)"
    )
    migrate_cmd = _command_parser(
        commands,
        "migrate",
        "bring the store's tables to the revision the code needs (Alembic)",
        "Upgrade the store (GATEWAY_DATABASE_URL, GATEWAY_DATABASE_SCHEMA) to the revision this gateway needs: "
        "the audit trail's tables always, the local engine's on the local backend. Tables made before "
        "migrations are adopted when they match the first revision. Prints one line.",
    )
    migrate_cmd.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 when the store is not at the code's revision"
    )
    seed_cmd = _command_parser(
        commands,
        "seed",
        "load (upsert) a registry file into the local store",
        "Load a registry file (studies, subjects, devices; JSON) into the local store, inserting new rows and "
        "updating existing ones. A refused file exits 2 with a message naming the entry and field.",
    )
    seed_cmd.add_argument("file", type=Path, help="registry file (JSON)")
    audit_cmd = _command_parser(
        commands,
        "audit",
        "check or export the audit trail",
        "Read the audit trail of regenerations kept in the store: verify its MAC chain, print its head, "
        "or export it as JSON lines.",
    )
    audit_actions = audit_cmd.add_subparsers(dest="audit_action", required=True)
    audit_verify = _command_parser(
        audit_actions,
        "verify",
        "check every link of the chain (MACs, order, head); exit 1 at the first broken one",
        "Check every row of the audit trail: its MAC, its order, and (with --expect-head) that the trail still "
        "reaches a head recorded earlier. Exit 1 naming the first broken row.",
    )
    audit_verify.add_argument(
        "--expect-head",
        metavar="SEQ:MAC",
        help="a head recorded earlier (`gateway audit head`): also fail when the trail no longer reaches it",
    )
    _command_parser(
        audit_actions,
        "head",
        "print where the chain ends, SEQ:MAC, to record outside the gateway",
        "Print where the audit chain ends, as SEQ:MAC. Record it outside the gateway; "
        "'gateway audit verify --expect-head SEQ:MAC' later fails if the trail was cut or rewritten.",
    )
    audit_export = _command_parser(
        audit_actions,
        "export",
        "write every row as JSON lines",
        "Write every row of the audit trail as one JSON object a line (a file is made readable by its owner only).",
    )
    audit_export.add_argument("--output", type=Path, help="file to write (default: standard output)")
    token_cmd = _command_parser(
        commands,
        "token",
        "print a development bearer token (DeviceActionsPost)",
        "Print a development bearer token with the DeviceActionsPost right for one study and mode, signed with "
        "the development secret (or GATEWAY_AUTH_HS256_SECRET). Refused when GATEWAY_PRODUCTION=true.",
    )
    token_cmd.add_argument("--study", required=True, help="study id (32 hex characters) or '*' for every study")
    token_cmd.add_argument("--mode", required=True, help="active, test, training or '*' for every mode")
    token_cmd.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default: 3600)")
    token_cmd.add_argument("--subject", default="developer", help="the token's sub claim (default: developer)")
    export_cmd = _command_parser(
        commands,
        "export-schema",
        "write the GraphQL schema (SDL)",
        "Write the GraphQL schema the code serves, as SDL; with --check, exit 1 when the file differs from it.",
    )
    export_cmd.add_argument("--check", action="store_true", help="exit 1 when the file differs from the code")
    export_cmd.add_argument("--path", type=Path, default=SCHEMA_FILE, help="file to write (default: schema.graphql)")
    settings_cmd = _command_parser(
        commands,
        "settings",
        "print the effective settings and where each came from",
        "Print every GATEWAY_* variable, its effective value and where it came from: the environment, the "
        ".env file GATEWAY_ENV_FILE names (default .env), or the default. Secrets are masked. "
        f"What each variable means: {SETTINGS_DOCS}.",
    )
    settings_cmd.add_argument("--json", action="store_true", help="print JSON instead of aligned lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "export-schema":
            return export_schema(args.path, args.check)
        settings = Settings.from_env()
        for warning in unknown_variables():
            print(f"gateway {args.command}: warning: {warning}", file=sys.stderr)
        if args.command == "settings":
            return show_settings(settings, args.json)
        if args.command == "migrate":
            return migrate(settings, args.check)
        if args.command == "seed":
            return seed(settings, args.file)
        if args.command == "audit":
            return asyncio.run(
                audit(settings, args.audit_action, getattr(args, "output", None), getattr(args, "expect_head", None))
            )
        if args.command == "token":
            return token(settings, args.study, args.mode, args.ttl, args.subject)
        overrides = {"host": args.host, "port": args.port}
        settings = settings.replace(**{k: v for k, v in overrides.items() if v is not None})
        if args.workers < 1:
            raise SettingsError("--workers must be at least 1")
        return serve(settings, args.workers)
    except (SettingsError, RegistryError, StoreVersionError) as error:
        print(f"gateway {args.command}: {error}", file=sys.stderr)
        return 2
