"""Rights and rate limits over real HTTP, in both backends: refused before anything happens, audited."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.audit import AuditTrail
from gateway.domain import CAUSES, ErrorCode
from gateway.engine.registry import DEMO_REGISTRY, load_registry
from gateway.engine.tables import seed
from gateway.settings import Settings
from gateway.store import Store
from tests.demo import ALL_TABLES, REGENERATE, STUDY, TEST_AUDIT_KEY, bearer, device_input, rest_path
from tests.security import sqlite_settings
from tests.upstream_servers import ScriptedUpstream, serve_scripted
from tests.utils import run_server

pytestmark = pytest.mark.anyio


@dataclass
class Deployment:
    client: httpx.AsyncClient
    settings: Settings
    upstream: ScriptedUpstream | None

    async def mutate(self, token_rights: Any = None, **overrides: Any) -> dict[str, Any]:
        response = await self.client.post(
            "/graphql",
            json={"query": REGENERATE, "variables": {"input": device_input(**overrides)}},
            headers={"Authorization": bearer(self.settings, token_rights)},
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()["data"]["regenerateAccessCode"]
        return result

    async def put(self, token_rights: Any = None, **overrides: Any) -> httpx.Response:
        return await self.client.put(
            rest_path(**overrides), headers={"Authorization": bearer(self.settings, token_rights)}
        )

    async def outcomes(self) -> list[str]:
        store = await Store.open(self.settings.store_url, create=False)
        try:
            return [record.outcome for record in await AuditTrail(store, TEST_AUDIT_KEY).attempts()]
        finally:
            await store.close()


@asynccontextmanager
async def deploy(backend: str, tmp_path: Path, **overrides: Any) -> AsyncIterator[Deployment]:
    """A gateway on `backend`; in upstream mode its upstream is a stand-in that records every request."""
    settings = sqlite_settings(tmp_path, **overrides)
    async with AsyncExitStack() as stack:
        upstream = None
        if backend == "upstream":
            upstream, url = await stack.enter_async_context(serve_scripted())
            settings = settings.replace(backend="upstream", upstream_url=url)
        else:
            store = await Store.open(settings.store_url, tables=ALL_TABLES)
            await seed(store, load_registry(DEMO_REGISTRY))
            await store.close()
        base = await stack.enter_async_context(run_server(create_app(settings)))
        client = await stack.enter_async_context(httpx.AsyncClient(base_url=base, timeout=10))
        yield Deployment(client, settings, upstream)


DENIED = CAUSES[ErrorCode.PERMISSION_DENIED]


@pytest.mark.parametrize("backend", ["local", "upstream"])
@pytest.mark.parametrize(
    "rights",
    [
        pytest.param({"0" * 32: {"active": ["DeviceActionsPost"]}}, id="another-study"),
        pytest.param({STUDY: {"test": ["DeviceActionsPost"]}}, id="another-mode"),
    ],
)
async def test_a_right_elsewhere_is_denied_with_no_upstream_request_and_one_row(
    backend: str, rights: dict[str, Any], tmp_path: Path
) -> None:
    async with deploy(backend, tmp_path) as gateway:
        result = await gateway.mutate(rights)
        assert result["__typename"] == "PermissionDeniedError"
        assert result["code"] == "PERMISSION_DENIED"
        rest = await gateway.put(rights)
        assert rest.status_code == DENIED.http_status
        assert rest.json()["errorData"]["errorCode"] == DENIED.rest_code
        if gateway.upstream is not None:
            assert gateway.upstream.seen == []
        assert await gateway.outcomes() == ["PERMISSION_DENIED", "PERMISSION_DENIED"]

        # The right for this study and mode goes through.
        allowed = await gateway.mutate({STUDY: {"active": ["DeviceActionsPost"]}})
        assert allowed["__typename"] == "BootstrapCredentials"
        if gateway.upstream is not None:
            assert len(gateway.upstream.seen) == 1
        assert await gateway.outcomes() == ["PERMISSION_DENIED", "PERMISSION_DENIED", "SUCCESS"]


@pytest.mark.parametrize("backend", ["local", "upstream"])
async def test_rate_limited_over_http(backend: str, tmp_path: Path) -> None:
    async with deploy(backend, tmp_path, rate_limit_device=2, rate_limit_window_seconds=600) as gateway:
        assert (await gateway.mutate())["__typename"] == "BootstrapCredentials"
        assert (await gateway.mutate())["__typename"] == "BootstrapCredentials"
        limited = await gateway.mutate()
        assert limited["__typename"] == "RateLimitedError"
        assert 590 <= limited["retryAfterSeconds"] <= 600
        rest = await gateway.put()
        assert rest.status_code == 429
        assert 590 <= int(rest.headers["retry-after"]) <= 600
        if gateway.upstream is not None:
            assert len(gateway.upstream.seen) == 2
        assert await gateway.outcomes() == ["SUCCESS", "SUCCESS", "RATE_LIMITED", "RATE_LIMITED"]
