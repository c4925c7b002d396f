"""Logs as an operator reads them: a real `gateway serve` in JSON mode, its stderr line by line.

Every line written while requests run parses as JSON and carries its request's id; each request
has exactly one access line; no line holds an OTP, a token, an Authorization header or the
mSubjectId of a query string. Text mode (the default when tests run) keeps working.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway import logs
from gateway.app import create_app
from gateway.engine.registry import DEMO_REGISTRY, load_registry
from gateway.engine.tables import seed
from gateway.settings import Settings
from gateway.store import Store
from tests import demo, secret_watch
from tests.demo import ALL_TABLES
from tests.test_cli import dev_token
from tests.test_upstream_parity import base_settings
from tests.upstream_servers import ScriptedUpstream, answer, ors_error, serve_scripted
from tests.utils import free_port, run_server, serving

BAD_TOKEN = "not.a-real.token-SECRETISH"
ACCESS_FIELDS = {"request_id", "method", "path", "status", "duration_ms", "outcome", "sub", "upstream_status"}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return {**base, "GATEWAY_DATA_DIR": str(tmp_path / "data"), "GATEWAY_KDF_COST": "4", "GATEWAY_ENV_FILE": ""}


def test_json_lines_carry_the_request_id_and_one_access_line_each(env: dict[str, str]) -> None:
    port = free_port()
    token = dev_token(env)
    env = {**env, "GATEWAY_LOG_FORMAT": "json", "GATEWAY_LOG_LEVEL": "debug"}
    bearer = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{port}"
    with (
        serving(env, port, log_apart=True) as served,
        httpx.Client(base_url=base, headers=bearer, timeout=10) as client,
    ):
        ok = client.post(
            "/graphql",
            json={"query": demo.REGENERATE, "variables": {"input": demo.device_input()}},
            headers={"X-Request-ID": "logs-ok-1"},
        ).json()["data"]["regenerateAccessCode"]
        refused = client.put(demo.rest_path(mSubjectId="MSUBJECT-SECRET-9"), headers={"X-Request-ID": "logs-refused-2"})
        invalid = client.post(
            "/graphql",
            json={"query": demo.REGENERATE, "variables": {"input": demo.device_input(studyId="not a GUID")}},
            headers={"X-Request-ID": "logs-invalid-3"},
        ).json()["data"]["regenerateAccessCode"]
        health = client.get("/healthz", headers={"X-Request-ID": "logs-health-4"})
        # Two that the gateway logs about besides the access line: a syntax error (debug), a bad token (info).
        syntax = client.post("/graphql", json={"query": "mutation {"}, headers={"X-Request-ID": "logs-syntax-5"})
        unauthenticated = client.post(
            "/graphql",
            json={"query": demo.REGENERATE, "variables": {"input": demo.device_input()}},
            headers={"X-Request-ID": "logs-unauth-6", "Authorization": f"Bearer {BAD_TOKEN}"},
        )
    assert ok["__typename"] == "BootstrapCredentials"
    assert refused.status_code == 400
    assert invalid["__typename"] == "InvalidInputError"
    assert health.status_code == 200
    assert syntax.status_code == 200
    assert unauthenticated.status_code == 401
    secret_watch.watch(ok["otp"])
    secret_watch.watch(token)  # signed by `gateway token` in another process
    lines = [line for line in served.log.splitlines() if line.strip()]
    secret_watch.keep(lines)

    records = [json.loads(line) for line in lines]  # every line is JSON
    assert all("request_id" in record for record in records)
    ids = {"logs-ok-1", "logs-refused-2", "logs-invalid-3", "logs-health-4", "logs-syntax-5", "logs-unauth-6"}
    # The gateway's other lines during a request carry its id too, though nobody passed it.
    others = {(r["logger"], r["request_id"]) for r in records if r["logger"] != logs.ACCESS_LOGGER}
    assert ("gateway.api.schema", "logs-syntax-5") in others
    assert ("gateway.auth.middleware", "logs-unauth-6") in others
    access_ids = [r["request_id"] for r in records if r["logger"] == logs.ACCESS_LOGGER]
    assert all(access_ids.count(request_id) == 1 for request_id in ids), access_ids
    access = {r["request_id"]: r for r in records if r["logger"] == logs.ACCESS_LOGGER and r["request_id"] in ids}
    for record in access.values():
        assert set(record) >= ACCESS_FIELDS, record
        assert isinstance(record["duration_ms"], float)
        assert record["upstream_status"] is None  # the local engine: no upstream call
    assert access["logs-ok-1"] | {"duration_ms": 0} == {
        **access["logs-ok-1"],
        "method": "POST",
        "path": "/graphql",
        "status": 200,
        "duration_ms": 0,
        "outcome": "BootstrapCredentials",
        "sub": "developer",  # `gateway token`'s subject
    }
    assert access["logs-refused-2"]["method"] == "PUT"
    assert (
        access["logs-refused-2"]["path"]
        == "/ec-ors-svc/rest/v1.0/studies/{studyId}/{mode}/subjects/{subjectId}/devices/{inventoryId}/access-code"
    )
    assert access["logs-refused-2"]["outcome"] == "400"
    assert access["logs-invalid-3"]["outcome"] == "InvalidInputError"
    assert access["logs-health-4"]["sub"] is None
    # uvicorn's own access log is off: its lines name the client's address.
    assert not any(r["logger"] == "uvicorn.access" for r in records)
    assert not any(r["logger"] == "httpx" for r in records)

    text = "\n".join(lines)
    for secret in (ok["otp"], token, BAD_TOKEN, "MSUBJECT-SECRET-9", "mSubjectId=", "Bearer"):
        assert secret not in text
    assert "authorization" not in text.lower()


@pytest.mark.anyio
async def test_the_access_line_names_the_upstream_status(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logs.ACCESS_LOGGER)
    upstream = ScriptedUpstream()
    async with serve_scripted(upstream) as (_, url):
        front = create_app(base_settings(tmp_path, backend="upstream", upstream_url=url))
        async with run_server(front) as gateway, httpx.AsyncClient(base_url=gateway) as client:
            query = {"query": demo.REGENERATE, "variables": {"input": demo.device_input()}}
            ok = await client.post("/graphql", json=query, headers={"X-Request-ID": "up-ok-1"})
            upstream.handler = answer(404, ors_error("C1-DEV-4001", "Invalid subject ID"))
            refused = await client.put(demo.rest_path(), headers={"X-Request-ID": "up-refused-2"})
    assert ok.json()["data"]["regenerateAccessCode"]["__typename"] == "BootstrapCredentials"
    assert refused.status_code != 200
    access = {
        record.request_id: record  # type: ignore[attr-defined]
        for record in caplog.records
        if record.name == logs.ACCESS_LOGGER and getattr(record, "request_id", None)
    }
    assert access["up-ok-1"].upstream_status == 200  # type: ignore[attr-defined]
    assert access["up-ok-1"].outcome == "BootstrapCredentials"  # type: ignore[attr-defined]
    assert access["up-refused-2"].upstream_status == 404  # type: ignore[attr-defined]
    assert access["up-refused-2"].outcome == str(refused.status_code)  # type: ignore[attr-defined]


def test_text_format_names_the_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    settings = Settings.from_env({"GATEWAY_ENV_FILE": "", "GATEWAY_LOG_FORMAT": "text"})
    root, httpx_logger, uvicorn_access = (
        logging.getLogger(),
        logging.getLogger("httpx"),
        logging.getLogger("uvicorn.access"),
    )
    before = (list(root.handlers), root.level, logging.getLogger("gateway").level)
    uvicorn_before = (list(uvicorn_access.handlers), uvicorn_access.propagate, uvicorn_access.disabled)
    try:
        logs.configure(settings)
        token = logs.current.set(logs.RequestLog("text-7"))
        try:
            logging.getLogger("gateway.test").warning("hello")
        finally:
            logs.current.reset(token)
        logging.getLogger("gateway.test").warning("outside")
        # httpx's INFO line names the full upstream URL, subject ids in it.
        assert not logging.getLogger("httpx").isEnabledFor(logging.INFO)
    finally:
        for handler in root.handlers:
            if handler not in before[0]:
                root.removeHandler(handler)
        root.setLevel(before[1])
        logging.getLogger("gateway").setLevel(before[2])
        httpx_logger.setLevel(logging.NOTSET)
        uvicorn_access.handlers[:] = uvicorn_before[0]
        uvicorn_access.propagate, uvicorn_access.disabled = uvicorn_before[1:]
    lines = capsys.readouterr().err.splitlines()
    assert any(line.endswith("WARNING gateway.test [text-7]: hello") for line in lines), lines
    assert any(line.endswith("WARNING gateway.test [-]: outside") for line in lines), lines


@pytest.mark.parametrize(("isatty", "expected"), [(True, "text"), (False, "json")])
def test_auto_format_follows_the_terminal(monkeypatch: pytest.MonkeyPatch, isatty: bool, expected: str) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: isatty)
    assert logs.log_format(Settings.from_env({"GATEWAY_ENV_FILE": ""})) == expected


def test_json_formatter_keeps_extra_fields_and_exceptions() -> None:
    record: dict[str, Any]
    try:
        raise ValueError("boom")
    except ValueError:
        made = logging.getLogger("gateway.test").makeRecord(
            "gateway.test", logging.ERROR, __file__, 1, "failed %s", ("x",), sys.exc_info(), extra={"status": 500}
        )
    made.request_id = "r-1"
    record = json.loads(logs.JsonFormatter().format(made))
    assert record["message"] == "failed x"
    assert record["status"] == 500
    assert record["request_id"] == "r-1"
    assert "ValueError: boom" in record["exception"]


@pytest.mark.anyio
async def test_paths_no_route_matched_and_failed_writes_name_no_identifiers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A REST path with a trailing slash (redirected) or a typo (404) is logged by its first segment
    only, and a write that fails logs its statement without its values: study, subject and device
    ids stay out of every line."""
    caplog.set_level(logging.INFO)
    settings = base_settings(tmp_path)
    store = await Store.open(settings.store_url, tables=ALL_TABLES)
    await seed(store, load_registry(DEMO_REGISTRY))
    await store.close()
    async with run_server(create_app(settings)) as gateway, httpx.AsyncClient(base_url=gateway) as client:
        redirected = await client.put(demo.rest_path() + "/", headers={"X-Request-ID": "path-slash-1"})
        missing = await client.put(demo.rest_path().replace("access-code", "acess-code"))
        with sqlite3.connect(tmp_path / "store.sqlite3") as conn:
            conn.execute("DROP TABLE audit_events")  # every attempt's unit of work now fails
        conn.close()
        query = {"query": demo.REGENERATE, "variables": {"input": demo.device_input()}}
        failed = (await client.post("/graphql", json=query)).json()["data"]["regenerateAccessCode"]
    assert redirected.status_code in (307, 400)  # redirected, or refused by the REST face
    assert missing.status_code == 404
    assert failed["__typename"] == "InternalServerError"
    access = [r for r in caplog.records if r.name == logs.ACCESS_LOGGER]
    assert {getattr(r, "path", None) for r in access} >= {"/ec-ors-svc/…", "/graphql"}
    gateways = [r for r in caplog.records if r.name.startswith(("gateway", "uvicorn"))]  # not the test's client
    text = "\n".join(logging.Formatter("%(message)s").format(r) for r in gateways)
    assert "no such table: audit_events" in text  # the failure is logged, with its statement
    for identifier in demo.device_input().values():
        if identifier != "ACTIVE":
            assert identifier not in text
