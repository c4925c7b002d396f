"""GraphiQL and CORS in a real browser: Debian's headless Chromium, driven by Playwright (PyPI) with
the system browser (no `playwright install`), against a real `gateway serve` on loopback.

- GraphiQL loads with every request going to the gateway's own origin, opens on the sample mutation
  and its variables, and runs it with a token typed into its headers pane.
- A page of another loopback origin calls the gateway with `fetch`: it gets the credentials when
  `GATEWAY_CORS_ORIGINS` lists its origin, a CORS failure when it does not.

Off CI a machine without `chromium` skips these tests; in CI (`CI=true`) they fail instead
(`.ci/run` installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from gateway.api.graphiql.page import HEADERS_TEMPLATE, pinned_assets
from gateway.api.sample import SAMPLE_MUTATION, SAMPLE_OPERATION, SAMPLE_VARIABLES
from tests import secret_watch
from tests.utils import free_port, serving


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module: the system's, as Debian installs it."""
    chromium = shutil.which("chromium")
    if chromium is None:
        message = "chromium is not installed (Debian: apt-get install chromium; .ci/run does it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class _FrontEnd(BaseHTTPRequestHandler):
    """A front end's page, served from an origin of its own: an empty HTML page to run `fetch` in."""

    def do_GET(self) -> None:
        body = b"<!doctype html><title>front end</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test's output is for failures


@pytest.fixture(scope="module")
def front_ends() -> Iterator[tuple[str, str]]:
    """Two loopback origins serving a page: the first is allowed by the gateway, the second is not."""
    servers = [ThreadingHTTPServer(("127.0.0.1", free_port()), _FrontEnd) for _ in range(2)]
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    try:
        allowed, other = (f"http://127.0.0.1:{server.server_address[1]}" for server in servers)
        yield allowed, other
    finally:
        for server, thread in zip(servers, threads, strict=True):
            server.shutdown()
            server.server_close()
            thread.join()


@dataclass(frozen=True)
class Served:
    url: str
    token: str


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, front_ends: tuple[str, str]) -> Iterator[Served]:
    """`gateway serve` as a new user runs it (local engine, demo data, development token), allowing
    the first front end's origin."""
    base = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    env = {
        **base,
        "GATEWAY_DATA_DIR": str(tmp_path_factory.mktemp("browser") / "data"),
        "GATEWAY_KDF_COST": "4",
        "GATEWAY_ENV_FILE": "",
        "GATEWAY_RATE_LIMIT_DEVICE": "0",
        "GATEWAY_CORS_ORIGINS": front_ends[0],
    }
    made = subprocess.run(
        [sys.executable, "-m", "gateway", "token", "--study", "*", "--mode", "*"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    port = free_port()
    with serving(env, port, log_apart=True) as served:
        yield Served(f"http://127.0.0.1:{port}", made.stdout.strip())
    secret_watch.keep([line for line in served.log.splitlines() if line.strip()])
    assert made.stdout.strip() not in served.output + served.log


def _editor_text(page: Page, selector: str) -> str:
    """The text of the CodeMirror editor inside `selector` (GraphiQL 3's editors are CodeMirror 5)."""
    text: str = page.locator(f"{selector} .CodeMirror").evaluate("element => element.CodeMirror.getValue()")
    return text


def test_graphiql_loads_from_the_gateway_alone_and_runs_the_sample_mutation(browser: Browser, gateway: Served) -> None:
    context = browser.new_context()
    page = context.new_page()
    requested: list[str] = []
    csp_violations: list[str] = []
    page_errors: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("pageerror", lambda error: page_errors.append(str(error)))

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            csp_violations.append(message.text)

    page.on("console", on_console)
    page.goto(f"{gateway.url}/graphql")

    # The editor holds the sample mutation, the variables pane its variables, the headers pane the template.
    assert _editor_text(page, ".graphiql-query-editor") == SAMPLE_OPERATION
    page.get_by_role("button", name="Variables", exact=True).click()
    assert _editor_text(page, ".graphiql-editor-tool .graphiql-editor:not(.hidden)") == SAMPLE_VARIABLES
    page.get_by_role("button", name="Headers", exact=True).click()
    headers = ".graphiql-editor-tool .graphiql-editor:not(.hidden)"
    assert _editor_text(page, headers) == HEADERS_TEMPLATE

    # A user replaces the template with their token and runs the mutation.
    page.locator(f"{headers} .CodeMirror").click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(json.dumps({"Authorization": f"Bearer {gateway.token}"}))
    page.get_by_role("button", name="Execute query (Ctrl-Enter)").click()
    page.wait_for_function(
        "() => document.querySelector('.result-window .CodeMirror').CodeMirror.getValue().includes('accessId')"
    )
    result = json.loads(_editor_text(page, ".result-window"))["data"]["regenerateAccessCode"]
    secret_watch.watch(result["otp"])
    assert result["__typename"] == "BootstrapCredentials"
    assert len(result["accessId"]) == 6
    # The headers pane holds the token, and GraphiQL keeps it out of the browser's storage.
    stored = page.evaluate("() => JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)])")
    assert "graphiql:queries" in stored  # the history is kept (GraphiQL 3.8 would keep its headers too)
    assert gateway.token not in stored
    assert "Bearer" not in stored
    context.close()

    # Every request went to the gateway's own origin: the page, its pinned files, then GraphQL calls.
    origin = urlsplit(gateway.url)
    assert requested
    assert [url for url in requested if urlsplit(url)[:2] != origin[:2]] == []
    paths = [urlsplit(url).path for url in requested]
    assert paths[0] == "/graphql"
    assert set(paths) == {"/graphql", *(f"/graphiql/{asset.path}" for asset in pinned_assets())}
    assert csp_violations == []
    assert page_errors == []


FETCH = """async ({url, token, query}) => {
  try {
    const response = await fetch(url, {
      method: "POST",
      headers: {"Content-Type": "application/json", "Authorization": "Bearer " + token},
      body: JSON.stringify({query}),
    });
    return {status: response.status, requestId: response.headers.get("X-Request-ID"), body: await response.json()};
  } catch (error) {
    return {error: error.name};
  }
}"""
"""A front end's call: JSON and a bearer token, so the browser asks the gateway first (a preflight)."""


def _call_from(browser: Browser, origin: str, gateway: Served) -> dict[str, Any]:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{origin}/")
    called: dict[str, Any] = page.evaluate(
        FETCH, {"url": f"{gateway.url}/graphql", "token": gateway.token, "query": SAMPLE_MUTATION}
    )
    context.close()
    return called


def test_a_page_of_an_allowed_origin_gets_the_credentials(
    browser: Browser, gateway: Served, front_ends: tuple[str, str]
) -> None:
    called = _call_from(browser, front_ends[0], gateway)
    result = called["body"]["data"]["regenerateAccessCode"]
    secret_watch.watch(result["otp"])
    assert called["status"] == 200
    assert result["__typename"] == "BootstrapCredentials"
    assert len(called["requestId"]) == 32  # exposed to the page: it can quote it when reporting a problem


def test_a_page_of_another_origin_gets_a_cors_failure(
    browser: Browser, gateway: Served, front_ends: tuple[str, str]
) -> None:
    assert _call_from(browser, front_ends[1], gateway) == {"error": "TypeError"}
