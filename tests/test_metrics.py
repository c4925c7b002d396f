"""`GET /metrics`: Prometheus text with no token, counts that move by one per request, no identifiers in
any label, off with `GATEWAY_METRICS=false`, and counts that add up across `gateway serve --workers 2`."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.app import create_app
from gateway.settings import Settings
from tests import demo
from tests.upstream_servers import ScriptedUpstream, answer, credentials_body, serve_scripted, upstream_settings
from tests.utils import free_port, run_server, serving

pytestmark = pytest.mark.anyio

Key = tuple[str, frozenset[tuple[str, str]]]


def samples(text: str) -> dict[Key, float]:
    """Every sample of the exposition, by its name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: dict[Key, float], name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


async def scrape(gateway_url: str) -> tuple[str, dict[Key, float]]:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as anonymous:  # no token needed
        response = await anonymous.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text, samples(response.text)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
async def test_each_outcome_moves_its_counter_by_one_and_no_label_names_anyone(
    client: httpx.AsyncClient, gateway_url: str
) -> None:
    _, before = await scrape(gateway_url)

    success = await demo.regenerate(client)
    assert success["__typename"] == "BootstrapCredentials"
    assert (await demo.regenerate(client, studyId="0" * 32))["__typename"] == "StudyNotFoundError"
    assert (await demo.regenerate(client, subjectId="not-a-subject"))["__typename"] == "InvalidInputError"
    rest = await client.put(demo.rest_path())
    assert rest.status_code == 200, rest.text
    pair = rest.json()
    basic = base64.b64encode(f"{pair['accessId']}:{pair['otp']}".encode()).decode()
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10) as device:
        bootstrapped = await device.post("/api/deviceBootstrap", headers={"Authorization": f"Basic {basic}"})
    assert bootstrapped.status_code == 200, bootstrapped.text

    text, after = await scrape(gateway_url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    requests = "gateway_requests_total"
    assert moved(requests, face="graphql", outcome="BootstrapCredentials") == 1
    assert moved(requests, face="graphql", outcome="StudyNotFoundError") == 1
    assert moved(requests, face="graphql", outcome="InvalidInputError") == 1
    assert moved(requests, face="rest", outcome="200") == 1
    assert moved(requests, face="device", outcome="200") == 1
    assert (
        sum(v for (name, _), v in after.items() if name == requests)
        - sum(v for (name, _), v in before.items() if name == requests)
        == 5
    )
    assert moved("gateway_request_duration_seconds_count", face="graphql") == 3
    assert moved("gateway_request_duration_seconds_count", face="rest") == 1
    assert moved("gateway_request_duration_seconds_count", face="device") == 1
    assert moved("gateway_store_commits_total") >= 3  # each attempt's unit of work committed
    assert value(after, "gateway_kdf_in_flight") == 0  # the hashes have finished
    # The first regeneration found the OTP reserve empty (nothing is hashed before one asks); its
    # refill (64 by default, several a hand-off at the tests' low cost) has begun.
    assert moved("gateway_otp_reserve_misses_total") >= 1
    assert ("gateway_otp_reserve", frozenset()) in after
    assert ("gateway_upstream_circuit_open", frozenset()) in after  # a gauge: 0 or 1 (the upstream tests move it)
    for name in ("gateway_upstream_requests_total", "gateway_request_duration_seconds_bucket"):
        assert f"# TYPE {name.removesuffix('_total').removesuffix('_bucket')}" in text

    identifiers = [demo.STUDY, demo.SUBJECT, demo.READY_DEVICE, "0" * 32, "not-a-subject", "test-user"]
    identifiers += [success["accessId"], pair["accessId"], bootstrapped.json()["deviceId"]]
    for identifier in identifiers:
        assert identifier.lower() not in text.lower(), identifier
    ours = [labels for name, labels in after if name.startswith("gateway_")]
    assert {label for labels in ours for label, _ in labels} <= {"face", "outcome", "status", "le"}


async def test_metrics_off_answers_404(settings: Settings) -> None:
    assert Settings.from_env({"GATEWAY_METRICS": "false", "GATEWAY_ENV_FILE": ""}).metrics is False
    server = run_server(create_app(settings.replace(metrics=False)))
    async with server as url, httpx.AsyncClient(base_url=url, timeout=10) as anonymous:
        assert (await anonymous.get("/metrics")).status_code == 404
        assert (await anonymous.get("/healthz")).status_code == 200


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PROMETHEUS_"))}
    return {**base, "GATEWAY_DATA_DIR": str(tmp_path / "data"), "GATEWAY_KDF_COST": "4", "GATEWAY_ENV_FILE": ""}


def test_counts_add_up_across_workers(env: dict[str, str]) -> None:
    port = free_port()
    sent = 24
    with serving(env, port, "--workers", "2"):
        for _ in range(sent):  # a new connection each: the kernel hands them to either worker
            answer = httpx.post(f"http://127.0.0.1:{port}/api/deviceBootstrap", auth=("NOPAIR", "NOTANOTP"), timeout=10)
            assert answer.status_code in {401, 429}
        for _ in range(6):  # whichever worker answers, it shows every worker's counts
            scraped = samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
            device = [v for (name, labels), v in scraped.items() if name == "gateway_requests_total"]
            assert sum(device) == sent
            assert value(scraped, "gateway_request_duration_seconds_count", face="device") == sent


async def test_upstream_calls_and_the_breaker(tmp_path: Path) -> None:
    """Upstream mode: each call counted by the upstream's status, and the breaker's gauge at 1 once a
    failure opens it (threshold 1 here), with no label naming anyone."""
    upstream = ScriptedUpstream(handler=answer(200, credentials_body()))
    async with serve_scripted(upstream) as (_, url):
        store = {"data_dir": str(tmp_path), "database_url": f"sqlite+aiosqlite:///{tmp_path / 'store.sqlite3'}"}
        settings = upstream_settings(url, insecure_disable_auth=True, upstream_breaker_failure_threshold=1, **store)
        async with run_server(create_app(settings)) as gateway_url, httpx.AsyncClient(base_url=gateway_url) as client:
            _, before = await scrape(gateway_url)
            assert (await demo.regenerate(client))["__typename"] == "BootstrapCredentials"
            upstream.handler = answer(503, {"message": "maintenance"})
            assert (await demo.regenerate(client))["__typename"] == "UpstreamUnavailableError"
            text, after = await scrape(gateway_url)
    moved = {key: after[key] - before.get(key, 0.0) for key in after if key[0] == "gateway_upstream_requests_total"}
    assert {labels: n for (_, labels), n in moved.items() if n} == {
        frozenset({("status", "200")}): 1.0,
        frozenset({("status", "503")}): 1.0,
    }
    assert value(after, "gateway_upstream_circuit_open") == 1.0
    for identifier in (demo.STUDY, demo.SUBJECT, demo.READY_DEVICE, "MSUBJECT-001"):
        assert identifier not in text
