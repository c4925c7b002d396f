"""What some scenarios stand on: a loopback nginx as the upstream, the Apollo peer's packages, a PostgreSQL schema."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.processes import HOST, LOAD_CPU, BenchError, Pinned, ensure_package, find_command, free_port, run

UPSTREAM_ANSWER = '{"accessId":"K7QXMP","otp":"TZ4W9RHC","id":"B1B8327AFAA6412287106192AB5984EF"}'
APOLLO_DIR = Path(__file__).with_name("peers") / "apollo"
DEFAULT_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"

_NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {{
        listen {host}:{port};
        location ~ ^/ec-ors-svc/rest/v1\\.0/studies/[^/]+/[^/]+/subjects/[^/]+/devices/[^/]+/access-code$ {{
            if ($request_method != PUT) {{ return 405; }}
            default_type application/json;
            return 200 '{answer}';
        }}
        location / {{ return 404; }}
    }}
}}
"""


def start_nginx(workdir: Path) -> tuple[Pinned, str]:
    """nginx-light in the foreground, one process on the load core, answering the documented 200 at once."""
    executable = ensure_package("nginx", "nginx-light")
    folder = workdir / "nginx"
    folder.mkdir()
    port = free_port()
    config = folder / "nginx.conf"
    config.write_text(_NGINX_CONF.format(dir=folder, host=HOST, port=port, answer=UPSTREAM_ANSWER))
    server = Pinned(
        "nginx",
        [executable, "-p", str(folder), "-c", str(config)],
        cpu=LOAD_CPU,
        log=folder / "out.log",
        env=os.environ,
    )
    server.wait_listening(port)
    return server, f"http://{HOST}:{port}"


def _installed(folder: Path) -> bool:
    """node_modules is what the lock file describes (npm writes its own copy of the lock there)."""
    hidden = folder / "node_modules" / ".package-lock.json"
    lock = folder / "package-lock.json"
    return hidden.is_file() and hidden.stat().st_mtime >= lock.stat().st_mtime


def install_apollo() -> str | None:
    """`npm ci` the Apollo peer when its node_modules is stale; the reason to skip it, or None when it is ready."""
    if not find_command("node"):
        return "node not found"
    if _installed(APOLLO_DIR):
        return None
    npm = find_command("npm")
    if not npm:
        return "npm not found"
    print("installing the Apollo peer with npm ci …", flush=True)
    run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], timeout=600, cwd=APOLLO_DIR)
    return None


def _psql_url(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(scheme="postgresql").geturl()


def postgres_url() -> str:
    return os.environ.get("BENCH_POSTGRES_URL") or os.environ.get("GATEWAY_TEST_POSTGRES_URL") or DEFAULT_POSTGRES_URL


def postgres(url: str, statement: str) -> None:
    """Run one SQL statement with psql at the SQLAlchemy URL `url`."""
    psql = find_command("psql")
    if not psql:
        raise BenchError("psql not found")
    run([psql, _psql_url(url), "-v", "ON_ERROR_STOP=1", "-q", "-c", statement], timeout=60)


def node_command() -> list[str]:
    node = shutil.which("node")
    if not node:
        raise BenchError("node not found")
    return [node, str(APOLLO_DIR / "server.mjs")]
