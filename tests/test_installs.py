"""Reproducible installs, on a copy of the repository: the first `./scripts/serve` installs the locked
runtime (and nothing of the test extra), a second one starts the gateway with no package index reachable
and installs nothing, and a changed pyproject.toml makes it install again (a development environment
staying one). The Dockerfile's uv is scripts/uv's."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests import secret_watch
from tests.utils import free_port

ROOT = Path(__file__).resolve().parent.parent
INSTALLING = "serve: installing"


@dataclass
class Copy:
    """A copy of the repository's files (no .venv) and the environment its scripts run in."""

    root: Path
    env: dict[str, str]

    @property
    def stamp(self) -> Path:
        return self.root / ".venv" / ".installed"

    def site_packages(self) -> Path:
        (found,) = (self.root / ".venv" / "lib").glob("python3*/site-packages")
        return found


@contextmanager
def serve(copy: Copy, env: dict[str, str], *, wait: float) -> Iterator[list[str]]:
    """`./scripts/serve --port N` in the copy until /healthz answers 200; yields its output lines (complete
    once the block has ended). Stopped by its pid (its process group: an install may still be running)."""
    port = free_port()
    output = copy.root.parent / f"serve-{port}.out"
    lines: list[str] = []
    with output.open("w") as sink:
        process = subprocess.Popen(
            ["./scripts/serve", "--port", str(port)],
            cwd=copy.root,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"./scripts/serve did not start the gateway:\n{output.read_text()}")
            time.sleep(0.05)
        yield lines
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        lines.extend(output.read_text().splitlines())
        secret_watch.keep(lines)


def offline(env: dict[str, str], nowhere: Path) -> dict[str, str]:
    """`env` with no package index to reach: uv and pip offline, their indexes and every proxy a dead
    loopback port, pip's configuration (local indexes and wheel folders) ignored, uv's cache empty."""
    dead = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in env.items() if not k.lower().startswith(("pip_", "uv_", "no_proxy"))}
    return {
        **env,
        "UV_OFFLINE": "1",
        "UV_CACHE_DIR": str(nowhere),
        "UV_DEFAULT_INDEX": f"{dead}/simple",
        "UV_INDEX_URL": f"{dead}/simple",
        "PIP_NO_INDEX": "1",
        "PIP_INDEX_URL": f"{dead}/simple",
        "PIP_CONFIG_FILE": os.devnull,
        **dict.fromkeys(("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"), dead),
    }


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Copy:
    """A copy of the repository (its tracked and new files, as they are in the work tree) in which
    `./scripts/serve` has run once: the install, from the package index, then a gateway that answered."""
    base = tmp_path_factory.mktemp("installs")
    root = base / "repository"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k != "VIRTUAL_ENV"}
    env |= {"GATEWAY_DATA_DIR": str(base / "data"), "GATEWAY_KDF_COST": "4", "GATEWAY_ENV_FILE": ""}
    copy = Copy(root, env)
    with serve(copy, env, wait=300) as output:
        pass
    assert any(INSTALLING in line for line in output)
    assert copy.stamp.read_text().endswith(" runtime\n")
    return copy


def test_the_first_serve_installs_only_what_serving_needs(installed: Copy) -> None:
    names = {path.name.split("-")[0].lower() for path in installed.site_packages().glob("*.dist-info")}
    assert {"uvicorn", "strawberry_graphql", "sqlalchemy"} <= names
    assert not names & {"pytest", "mypy", "ruff", "import_linter"}


def test_a_second_serve_starts_with_no_package_index(installed: Copy, tmp_path: Path) -> None:
    stamp = installed.stamp.read_text(), installed.stamp.stat().st_mtime_ns
    packages = installed.site_packages()
    before = sorted(path.name for path in packages.iterdir()), packages.stat().st_mtime_ns
    with serve(installed, offline(installed.env, tmp_path / "empty-uv-cache"), wait=60) as output:
        pass
    assert not any(INSTALLING in line for line in output)
    assert (installed.stamp.read_text(), installed.stamp.stat().st_mtime_ns) == stamp
    assert (sorted(path.name for path in packages.iterdir()), packages.stat().st_mtime_ns) == before


def test_a_changed_pyproject_makes_serve_install_again(installed: Copy) -> None:
    pyproject = installed.root / "pyproject.toml"
    stamp = installed.stamp.read_text()
    pyproject.write_text(pyproject.read_text() + "\n# changed\n")
    with serve(installed, installed.env, wait=120) as output:
        pass
    assert any(INSTALLING in line for line in output)
    assert installed.stamp.read_text() not in {stamp, ""}
    assert installed.stamp.read_text().endswith(" runtime\n")


def test_a_development_environment_stays_one_when_serve_installs(installed: Copy) -> None:
    subprocess.run(["./scripts/install"], cwd=installed.root, env=installed.env, check=True, capture_output=True)
    assert installed.stamp.read_text().endswith(" all\n")
    pyproject = installed.root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + "\n# changed again\n")
    with serve(installed, installed.env, wait=120) as output:
        pass
    assert any(INSTALLING in line for line in output)
    assert installed.stamp.read_text().endswith(" all\n")
    assert list(installed.site_packages().glob("pytest-*.dist-info"))


def test_the_dockerfile_pins_the_uv_of_scripts_uv() -> None:
    (script,) = re.findall(r"^UV_VERSION=(\S+)$", (ROOT / "scripts" / "uv").read_text(), re.MULTILINE)
    (docker,) = re.findall(r"^ARG UV_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert docker == script
