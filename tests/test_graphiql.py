"""The GraphiQL page and its files over HTTP (the browser's view of them: tests/test_browser.py).

The page names only the gateway's own files, each with the SRI hash of the file served; the files
need no token and may be cached for a year; the Content-Security-Policy allows the page's own
script and origin only; production serves neither page nor files.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from graphql import parse, validate

from gateway.api.graphiql.page import HEADERS_TEMPLATE, IMMUTABLE, pinned_assets
from gateway.api.sample import SAMPLE_INPUT, SAMPLE_MUTATION, SAMPLE_OPERATION, SAMPLE_VARIABLES
from gateway.api.schema import schema
from gateway.app import create_app
from tests.security import RecordingBackend, sqlite_settings
from tests.utils import run_server

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway (development settings) and a client sending no token at all."""
    settings = sqlite_settings(tmp_path_factory.mktemp("graphiql"))
    async with (
        run_server(create_app(settings, backend=RecordingBackend())) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        yield client


async def page(client: httpx.AsyncClient) -> httpx.Response:
    response = await client.get("/graphql", headers={"accept": "text/html"})
    assert response.status_code == 200
    return response


async def test_the_page_names_only_the_pinned_files_with_their_hashes(client: httpx.AsyncClient) -> None:
    html = (await page(client)).text
    tags = re.findall(r'<(?:script src|link rel="stylesheet" href)="([^"]+)" integrity="([^"]+)"', html)
    assert tags == [
        *((f"graphiql/{asset.path}", asset.integrity) for asset in pinned_assets() if asset.path.endswith(".css")),
        *((f"graphiql/{asset.path}", asset.integrity) for asset in pinned_assets() if asset.path.endswith(".js")),
    ]
    assert "http://" not in html
    assert "https://" not in html
    assert "unpkg" not in html


async def test_every_pinned_file_is_served_without_a_token_as_its_hash_says(client: httpx.AsyncClient) -> None:
    for asset in pinned_assets():
        response = await client.get(f"/graphiql/{asset.path}")
        assert response.status_code == 200, asset.path
        digest = base64.b64encode(hashlib.sha384(response.content).digest()).decode()
        assert asset.integrity == f"sha384-{digest}"
        assert response.headers["cache-control"] == IMMUTABLE
        assert response.headers["content-type"].startswith("text/css" if asset.path.endswith(".css") else "text/")


async def test_files_are_gzipped_for_browsers_that_ask(client: httpx.AsyncClient) -> None:
    script = next(asset for asset in pinned_assets() if asset.path.endswith("graphiql.min.js"))
    async with client.stream("GET", f"/graphiql/{script.path}", headers={"accept-encoding": "gzip"}) as response:
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.headers["content-encoding"] == "gzip"
    folder = Path(__file__).parent.parent / "gateway" / "api" / "graphiql" / "assets"
    assert gzip.decompress(raw) == (folder / script.path).read_bytes()
    assert len(raw) < len(gzip.decompress(raw)) / 3


@pytest.mark.parametrize("path", ["/graphiql/react@0.0.1/react.js", "/graphiql/..%2Fpage.py", "/graphiql/"])
async def test_nothing_else_is_served_there(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 404


async def test_the_policy_allows_the_pages_own_script_and_origin_only(client: httpx.AsyncClient) -> None:
    response = await page(client)
    policy = dict(part.strip().split(" ", 1) for part in response.headers["content-security-policy"].split(";"))
    [boot] = re.findall(r"<script>(.*?)</script>", response.text, re.DOTALL)
    boot_hash = base64.b64encode(hashlib.sha256(boot.encode()).digest()).decode()
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == f"'self' 'sha256-{boot_hash}'"
    assert policy["connect-src"] == "'self'"
    assert policy["frame-ancestors"] == "'none'"
    assert response.headers["cache-control"] == "no-store"


async def test_the_page_opens_on_the_sample_and_the_token_template(client: httpx.AsyncClient) -> None:
    html = (await page(client)).text
    [data] = re.findall(r'<script id="graphiql-config" type="application/json">(.*?)</script>', html, re.DOTALL)
    assert json.loads(data) == {"query": SAMPLE_OPERATION, "variables": SAMPLE_VARIABLES, "headers": HEADERS_TEMPLATE}
    assert "gateway token --study '*' --mode '*'" in json.loads(data)["headers"]


def test_the_sample_is_one_input_written_twice() -> None:
    """The banner's inline mutation and GraphiQL's operation with variables name the same device,
    and both are valid against the schema."""
    graphql_schema = schema._schema
    assert validate(graphql_schema, parse(SAMPLE_MUTATION)) == []
    assert validate(graphql_schema, parse(SAMPLE_OPERATION)) == []
    assert json.loads(SAMPLE_VARIABLES) == {"input": SAMPLE_INPUT}
    for value in SAMPLE_INPUT.values():
        assert value in SAMPLE_MUTATION


async def test_production_serves_neither_page_nor_files(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path, production=True)
    async with run_server(create_app(settings, backend=RecordingBackend())) as url, httpx.AsyncClient() as client:
        assert (await client.get(f"{url}/graphql", headers={"accept": "text/html"})).status_code == 404
        for asset in pinned_assets():
            assert (await client.get(f"{url}/graphiql/{asset.path}")).status_code == 404
