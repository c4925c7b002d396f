"""Fetch GraphiQL's files from the npm registry at pinned versions: `scripts/update-graphiql`.

For each pinned package (`react@18.3.1`, …) `npm pack` downloads the tarball from the registry npm is
configured with (and checks it against the registry's integrity hash), then this takes out the files
the page needs (and the package's licence) into `assets/<name>@<version>/`, and writes `assets.json`:
the pins and, for each file the page loads, its Subresource Integrity hash (sha384), which the page's
`<script>` and `<link>` tags carry. Folders of versions no longer pinned are removed. Needs `npm`.

    scripts/update-graphiql                      # the pinned versions again (to check or repair)
    scripts/update-graphiql graphiql@3.8.3       # pin another version of one package

GraphiQL stays on 3.x: it is the last major with UMD builds that run from plain `<script>` tags
(4 and later ship ES modules only, which would need a bundler here).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).parent
ASSETS = HERE / "assets"
MANIFEST = HERE / "assets.json"

PAGE_FILES: dict[str, tuple[str, ...]] = {
    "react": ("umd/react.production.min.js",),
    "react-dom": ("umd/react-dom.production.min.js",),
    "graphiql": ("graphiql.min.css", "graphiql.min.js"),
}
"""What the page loads from each package, in the order it loads them (React before GraphiQL)."""
LICENCES = ("LICENSE", "LICENSE.md")


def sri(data: bytes) -> str:
    """The Subresource Integrity value of `data` (sha384, as browsers check it)."""
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode("ascii")


def fetch_package(name: str, version: str) -> dict[str, bytes]:
    """The files of `name@version` the page needs, and its licence, by their path in the package."""
    with tempfile.TemporaryDirectory(prefix="graphiql-") as folder:
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("scripts/update-graphiql needs npm (Debian: apt-get install npm)")
        packed = subprocess.run(  # noqa: S603 (npm, a package name of PAGE_FILES and the version asked for)
            [npm, "pack", f"{name}@{version}", "--json", "--pack-destination", folder],
            capture_output=True,
            text=True,
            check=False,
        )
        if packed.returncode != 0:
            raise SystemExit(f"npm pack {name}@{version} failed:\n{packed.stderr.strip()}")
        [tarball] = json.loads(packed.stdout)
        wanted = {*PAGE_FILES[name], *LICENCES}
        found: dict[str, bytes] = {}
        with tarfile.open(Path(folder) / tarball["filename"], mode="r:gz") as archive:
            for member in archive.getmembers():
                path = member.name.split("/", 1)[-1]  # npm tarballs hold everything under one top folder
                extracted = archive.extractfile(member) if path in wanted and member.isfile() else None
                if extracted is not None:
                    found[path] = extracted.read()
    missing = [path for path in PAGE_FILES[name] if path not in found]
    if missing:
        raise SystemExit(f"{name}@{version} has no {', '.join(missing)}: is it a version with UMD builds?")
    return found


def pinned() -> dict[str, str]:
    """The versions `assets.json` pins, by package."""
    if not MANIFEST.is_file():
        return {}
    packages: dict[str, str] = json.loads(MANIFEST.read_text(encoding="utf-8"))["packages"]
    return packages


def update(pins: dict[str, str]) -> list[dict[str, str]]:
    """Fetch every pinned package into `assets/`, write `assets.json`, and return its files."""
    files: list[dict[str, str]] = []
    fetched = {name: fetch_package(name, pins[name]) for name in PAGE_FILES}
    ASSETS.mkdir(exist_ok=True)
    folders = {f"{name}@{pins[name]}" for name in PAGE_FILES}
    for old in ASSETS.iterdir():
        if old.name not in folders:
            shutil.rmtree(old)
    for name, found in fetched.items():
        folder = ASSETS / f"{name}@{pins[name]}"
        shutil.rmtree(folder, ignore_errors=True)
        for path, data in found.items():
            target = folder / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        for path in PAGE_FILES[name]:
            files.append({"path": f"{name}@{pins[name]}/{path}", "integrity": sri(found[path])})
    manifest = {"packages": {name: pins[name] for name in PAGE_FILES}, "files": files}
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/update-graphiql", description=__doc__.split("\n\n")[0])
    parser.add_argument("pins", nargs="*", metavar="NAME@VERSION", help=f"one of {', '.join(PAGE_FILES)}")
    args = parser.parse_args(argv)
    pins = pinned()
    for pin in args.pins:
        name, _, version = pin.rpartition("@")
        if name not in PAGE_FILES or not version:
            parser.error(f"{pin!r}: give NAME@VERSION with NAME one of {', '.join(PAGE_FILES)}")
        pins[name] = version
    unpinned = [name for name in PAGE_FILES if name not in pins]
    if unpinned:
        parser.error(f"no version pinned for {', '.join(unpinned)}: give NAME@VERSION")
    for file in update(pins):
        print(f"{file['integrity']}  {file['path']}")
    print(f"wrote {MANIFEST.relative_to(Path.cwd()) if MANIFEST.is_relative_to(Path.cwd()) else MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
