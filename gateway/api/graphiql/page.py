"""The GraphiQL page and its files, from the package alone.

`page_response()` is what `GET /graphql` answers a browser with (the view's `render_graphql_ide`):
`page.html` with the pinned files of `assets.json` as `<script>`/`<link>` tags carrying their SRI
hashes, the page's settings as a JSON data block, and `boot.js` inline. Its Content-Security-Policy
lets scripts come only from the gateway's origin or be `boot.js` itself (by its hash), and requests
go only to the origin, so nothing can load from or send to anywhere else.

`assets_app()` serves `assets/` at `ASSETS_PATH`: every path names its package's version, so a
file never changes under its URL and browsers may keep it for a year (`immutable`); gzipped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from functools import cache
from html import escape
from pathlib import Path
from string import Template

from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import PathLike, StaticFiles
from starlette.types import ASGIApp, Scope

from gateway.api.sample import SAMPLE_OPERATION, SAMPLE_VARIABLES

HERE = Path(__file__).parent
ASSETS_DIR = HERE / "assets"
ASSETS_PATH = "/graphiql"
"""Where the files are served; the page names them relative to itself (`graphiql/…` from `/graphql`), so it
works behind a proxy that adds a path prefix."""

HEADERS_TEMPLATE = "{\n  \"Authorization\": \"Bearer paste-the-output-of: gateway token --study '*' --mode '*'\"\n}"
"""What the headers pane holds until the user pastes a token."""

IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Asset:
    path: str
    """Below `assets/`: `<package>@<version>/<file>`."""
    integrity: str

    @property
    def tag(self) -> str:
        url, integrity = escape(f"{ASSETS_PATH.lstrip('/')}/{self.path}"), escape(self.integrity)
        if self.path.endswith(".css"):
            return f'    <link rel="stylesheet" href="{url}" integrity="{integrity}" />'
        return f'    <script src="{url}" integrity="{integrity}"></script>'


def pinned_assets() -> list[Asset]:
    """The files the page loads, in order, as `assets.json` pins them."""
    manifest = json.loads((HERE / "assets.json").read_text(encoding="utf-8"))
    return [Asset(file["path"], file["integrity"]) for file in manifest["files"]]


def _script_hash(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii") + "'"


def _data_block(value: object) -> str:
    """JSON safe inside `<script type="application/json">`: no `<` can close the element."""
    return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@dataclass(frozen=True)
class Page:
    html: str
    csp: str


@cache
def page() -> Page:
    """The page and its policy, built once (everything in them is fixed at packaging time)."""
    boot = (HERE / "boot.js").read_text(encoding="utf-8")
    assets = pinned_assets()
    config = {"query": SAMPLE_OPERATION, "variables": SAMPLE_VARIABLES, "headers": HEADERS_TEMPLATE}
    html = Template((HERE / "page.html").read_text(encoding="utf-8")).substitute(
        styles="\n".join(asset.tag for asset in assets if asset.path.endswith(".css")),
        scripts="\n".join(asset.tag for asset in assets if not asset.path.endswith(".css")),
        config=_data_block(config),
        boot=boot,
    )
    csp = "; ".join(
        [
            "default-src 'none'",
            f"script-src 'self' {_script_hash(boot)}",
            # GraphiQL's editors and React set inline styles; styles cannot run code.
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self' data:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return Page(html, csp)


def page_response() -> Response:
    built = page()
    headers = {"Content-Security-Policy": built.csp, "X-Content-Type-Options": "nosniff"}
    return HTMLResponse(built.html, headers=headers)


class _ImmutableFiles(StaticFiles):
    """Starlette's static files, each answer cacheable for a year: a versioned path never changes."""

    def file_response(
        self, full_path: PathLike, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = IMMUTABLE
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def assets_app() -> ASGIApp:
    """The ASGI app serving `assets/` (mounted at `ASSETS_PATH`), gzipped (GraphiQL's script is 3.5 MB)."""
    return GZipMiddleware(_ImmutableFiles(directory=ASSETS_DIR), minimum_size=1024)
