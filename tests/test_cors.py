"""CORS (`GATEWAY_CORS_ORIGINS`) over HTTP, as a browser speaks it (in Chromium: tests/test_browser.py).

A preflight from a listed origin is answered without a token; the answer to the call itself lets
the page read it and its `X-Request-ID`; an origin not listed is never named in `Access-Control-Allow-Origin`; without
the setting no route says anything about CORS; `*` is refused in production.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.routing import Route

from gateway.app import create_app
from gateway.settings import Settings, SettingsError
from tests.demo import bearer
from tests.security import RecordingBackend, sqlite_settings
from tests.utils import run_server

pytestmark = pytest.mark.anyio

FRONT_END = "https://site-portal.example"
OTHER = "https://elsewhere.example"
QUERY = {"query": "{ gateway { version } }"}


def preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization,content-type",
    }


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Settings]]:
    settings = sqlite_settings(tmp_path, cors_origins=f"{FRONT_END}, http://127.0.0.1:3000")
    async with (
        run_server(create_app(settings, backend=RecordingBackend())) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        yield client, settings


def cors_headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith("access-control-")}


async def test_a_preflight_from_a_listed_origin_needs_no_token(served: tuple[httpx.AsyncClient, Settings]) -> None:
    client, _ = served
    for path, method in [("/graphql", "POST"), ("/ec-ors-svc/rest/v1.0/studies/x/active/subjects/y", "PUT")]:
        response = await client.options(path, headers=preflight(FRONT_END, method))
        assert response.status_code == 200
        headers = cors_headers(response)
        assert headers["access-control-allow-origin"] == FRONT_END
        assert method in headers["access-control-allow-methods"].split(", ")
        allowed = {name.strip().lower() for name in headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type"} <= allowed
        assert "access-control-allow-credentials" not in headers  # a bearer token, never cookies
        assert "www-authenticate" not in response.headers
        assert response.headers["x-request-id"]


async def test_a_listed_origin_reads_the_answer_and_its_request_id(
    served: tuple[httpx.AsyncClient, Settings],
) -> None:
    client, settings = served
    headers = {"Origin": FRONT_END, "Authorization": bearer(settings)}
    response = await client.post("/graphql", json=QUERY, headers=headers)
    assert response.json() == {"data": {"gateway": {"version": "0.1.0"}}}
    assert cors_headers(response) == {
        "access-control-allow-origin": FRONT_END,
        "access-control-expose-headers": "X-Request-ID",
    }
    assert "Origin" in response.headers["vary"]


async def test_a_refusal_reaches_a_listed_origins_page_too(served: tuple[httpx.AsyncClient, Settings]) -> None:
    client, _ = served
    response = await client.post("/graphql", json=QUERY, headers={"Origin": FRONT_END})
    assert response.status_code == 401  # the page can read it: a token to fetch, not a network error
    assert cors_headers(response)["access-control-allow-origin"] == FRONT_END


async def test_an_origin_not_listed_is_not_allowed(served: tuple[httpx.AsyncClient, Settings]) -> None:
    client, settings = served
    refused = await client.options("/graphql", headers=preflight(OTHER))
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers  # what a browser needs to go on
    called = await client.post("/graphql", json=QUERY, headers={"Origin": OTHER, "Authorization": bearer(settings)})
    assert "access-control-allow-origin" not in called.headers


async def test_an_unexpected_500_carries_the_cors_headers(tmp_path: Path) -> None:
    """The request id's own 500 (an exception nobody caught) goes out through CORS: the page on a
    listed origin reads the status and the X-Request-ID to quote, rather than a network error."""
    settings = sqlite_settings(tmp_path, cors_origins=FRONT_END)
    app = create_app(settings, backend=RecordingBackend())

    async def explode(request: Request) -> None:
        raise RuntimeError("an unexpected failure")

    app.router.routes.append(Route("/explode", explode))
    headers = {"Origin": FRONT_END, "Authorization": bearer(settings), "X-Request-ID": "cors-500"}
    async with run_server(app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/explode", headers=headers)
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "cors-500"
    assert cors_headers(response) == {
        "access-control-allow-origin": FRONT_END,
        "access-control-expose-headers": "X-Request-ID",
    }


async def test_without_the_setting_no_route_speaks_cors(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path)
    async with run_server(create_app(settings, backend=RecordingBackend())) as url, httpx.AsyncClient() as client:
        response = await client.options(f"{url}/graphql", headers=preflight(FRONT_END))
        assert response.status_code == 401  # an OPTIONS like any other request: no token, no entry
        assert cors_headers(response) == {}
        called = await client.post(
            f"{url}/graphql", json=QUERY, headers={"Origin": FRONT_END, "Authorization": bearer(settings)}
        )
        assert called.status_code == 200
        assert cors_headers(called) == {}


async def test_any_origin_is_for_development_only(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path, cors_origins="*")
    async with run_server(create_app(settings, backend=RecordingBackend())) as url, httpx.AsyncClient() as client:
        response = await client.options(f"{url}/graphql", headers=preflight(OTHER))
        assert cors_headers(response)["access-control-allow-origin"] == "*"
    with pytest.raises(SettingsError, match=r"^GATEWAY_CORS_ORIGINS=\* is refused when GATEWAY_PRODUCTION=true"):
        sqlite_settings(tmp_path, cors_origins="https://a.example,*", production=True)
    assert sqlite_settings(tmp_path, cors_origins=FRONT_END, production=True).http.cors_origins == (FRONT_END,)


@pytest.mark.parametrize(
    ("value", "origin"),
    [
        pytest.param("https://App.Example", "https://app.example", id="host-case"),
        pytest.param("HTTPS://a.example", "https://a.example", id="scheme-case"),
        pytest.param("https://a.example:443", "https://a.example", id="https-default-port"),
        pytest.param("http://a.example:80", "http://a.example", id="http-default-port"),
        pytest.param("http://a.example:443", "http://a.example:443", id="other-port-kept"),
        pytest.param("https://a.example:8443", "https://a.example:8443", id="port-kept"),
        pytest.param("http://[::1]:3000", "http://[::1]:3000", id="ipv6"),
    ],
)
def test_origins_are_normalised_as_browsers_send_them(value: str, origin: str) -> None:
    settings = Settings.from_env({"GATEWAY_ENV_FILE": "", "GATEWAY_CORS_ORIGINS": f"{value}, {origin}"})
    assert settings.http.cors_origins == (origin,)  # the same origin twice: listed once


async def test_an_origin_written_otherwise_matches_what_the_browser_sends(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path, cors_origins="HTTPS://Site-Portal.example:443")
    async with run_server(create_app(settings, backend=RecordingBackend())) as url, httpx.AsyncClient() as client:
        response = await client.options(f"{url}/graphql", headers=preflight(FRONT_END))
    assert response.status_code == 200
    assert cors_headers(response)["access-control-allow-origin"] == FRONT_END


@pytest.mark.parametrize(
    "value",
    [
        "https://a.example/app",
        "a.example",
        "ftp://a.example",
        "https://a.example/",
        "https://a.example?x",
        "https://user@a.example",
        "https://a.example:99999",
        "https://a.example:port",
    ],
)
def test_an_origin_is_a_scheme_a_host_and_a_port(value: str) -> None:
    with pytest.raises(SettingsError, match=r"^GATEWAY_CORS_ORIGINS must list origins such as"):
        Settings.from_env({"GATEWAY_ENV_FILE": "", "GATEWAY_CORS_ORIGINS": value})
