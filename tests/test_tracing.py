"""OpenTelemetry traces (`GATEWAY_OTEL=true`): an in-memory exporter receives a span per request,
GraphQL operation, store transaction and upstream call, in the caller's trace (its `traceparent`
the request span's parent); the real loopback upstream receives that trace's `traceparent`; no span
carries the request's identifiers, the OTP or the token. Off, nothing of OpenTelemetry is even
imported. `gateway serve` refuses `GATEWAY_OTEL=true` without the extra in one line, and with
`OTEL_TRACES_EXPORTER=console` prints the spans the `OTEL_*` variables describe.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy import make_url

from gateway.app import create_app
from gateway.contract import ACCESS_CODE_PATH
from gateway.engine.registry import DEMO_REGISTRY, load_registry
from gateway.engine.tables import seed
from gateway.settings import Settings
from gateway.store import Store
from gateway.tracing import Tracing
from tests import secret_watch
from tests.demo import (
    ALL_TABLES,
    READY_DEVICE,
    REGENERATE,
    STUDY,
    SUBJECT,
    TEST_HS256_SECRET,
    TEST_KDF_COST,
    bearer,
    device_input,
    regenerate,
    rest_path,
)
from tests.test_cli import dev_token
from tests.upstream_servers import (
    DEVICE_INSTANCE,
    FAKE_ACCESS_ID,
    FAKE_OTP,
    ScriptedUpstream,
    answer,
    serve_scripted,
    upstream_settings,
)
from tests.utils import free_port, run_server, serving

pytestmark = pytest.mark.anyio

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
M_SUBJECT = "MSUBJECT-001"
IDENTIFIERS = (STUDY, SUBJECT, READY_DEVICE, M_SUBJECT)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exported = InMemorySpanExporter()
    yield exported
    exported.clear()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A provider of the test's own: every span, exported as it ends, into `exporter`."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


async def finished(exporter: InMemorySpanExporter, requests: int) -> list[ReadableSpan]:
    """The spans once `requests` request spans have ended (the server ends one just after its answer)."""
    with anyio.fail_after(5):
        while sum(span.kind is SpanKind.SERVER for span in exporter.get_finished_spans()) < requests:  # noqa: ASYNC110 (the exporter offers no event)
            await anyio.sleep(0.01)
    return list(exporter.get_finished_spans())


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, [span.name for span in spans]
    return found[0]


def parent_id(span: ReadableSpan) -> int:
    assert span.parent is not None, span.name
    return span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.trace_id)


def assert_nothing_names(spans: Sequence[ReadableSpan], secrets: Sequence[str]) -> None:
    """No span (name, attributes, events, links, resource) holds any of `secrets`; the secret watch
    checks them for every OTP of the run too."""
    rendered = [span.to_json() for span in spans]
    secret_watch.keep(rendered)
    for text in rendered:
        for secret in secrets:
            assert secret.lower() not in text.lower(), (secret[:4], text)


async def seeded(settings: Settings) -> None:
    store = await Store.open(settings.store_url, schema=settings.database_schema, tables=ALL_TABLES)
    await seed(store, load_registry(DEMO_REGISTRY))
    await store.close()


async def test_local_mode_a_trace_from_the_callers_traceparent_to_the_store(
    settings: Settings, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    await seeded(settings)
    token = bearer(settings)
    headers = {"Authorization": token, "traceparent": TRACEPARENT}
    async with (
        run_server(create_app(settings.replace(otel=True), tracer_provider=provider)) as url,
        httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as client,
    ):
        credentials = await regenerate(client)
        refused = await client.put(rest_path(mSubjectId="MSUBJECT-999"))
        unrouted = await client.get(f"/studies/{STUDY}/subjects/{SUBJECT}")
        spans = await finished(exporter, requests=3)
    assert credentials["__typename"] == "BootstrapCredentials"
    assert refused.status_code == 400
    assert unrouted.status_code == 404
    assert one(spans, "GET").kind is SpanKind.SERVER  # no route: the method alone names it, not the path

    graphql = one(spans, "POST /graphql")
    assert graphql.kind is SpanKind.SERVER
    assert trace_id(graphql) == int(TRACE_ID, 16)
    assert parent_id(graphql) == int(CALLER_SPAN, 16)
    assert graphql.parent is not None
    assert graphql.parent.is_remote
    operation = one(spans, "graphql mutation")
    assert parent_id(operation) == span_id(graphql)
    assert operation.attributes is not None
    assert operation.attributes["graphql.operation.type"] == "mutation"
    assert operation.attributes["gateway.graphql.fields"] == ("regenerateAccessCode",)
    assert operation.attributes["gateway.outcome"] == "BootstrapCredentials"
    # The REST face's path names the subject: its span has the route's template, and no query string.
    rest = one(spans, f"PUT {ACCESS_CODE_PATH}")
    assert trace_id(rest) == int(TRACE_ID, 16)
    assert rest.attributes is not None
    assert rest.attributes["http.status_code"] == 400

    # Each attempt's unit of work: its batch's span is a child of the request's innermost span, and linked to it.
    batches = [span for span in spans if span.name == "store transaction"]
    assert {parent_id(batch) for batch in batches} == {span_id(operation), span_id(rest)}
    for batch in batches:
        assert trace_id(batch) == int(TRACE_ID, 16)
        assert any(link.context.span_id == parent_id(batch) for link in batch.links)
        assert batch.attributes is not None
        assert batch.attributes["db.system.name"] == make_url(settings.store_url).get_backend_name()
        assert batch.attributes["gateway.store.outcome"] == "committed"
        units = batch.attributes["gateway.store.units"]
        assert isinstance(units, int)
        assert units >= 1

    issued = [credentials["otp"], credentials["accessId"], credentials["id"]]
    assert_nothing_names(spans, [*IDENTIFIERS, "MSUBJECT-999", *issued, token.removeprefix("Bearer ")])


ROOT_FRAGMENT = """
mutation Regenerate($input: RegenerateAccessCodeInput!) {
  ...Root
  again: regenerateAccessCode(input: $input) { __typename }
}
fragment Root on Mutation { regenerateAccessCode(input: $input) { __typename ... on Error { code } } }
"""


async def test_the_operations_span_is_the_same_by_the_executor_and_by_the_plan(
    settings: Settings, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The first request of a text is executed by graphql-core, the second by its plan: one span each, alike."""
    await seeded(settings)
    payload = {"query": ROOT_FRAGMENT, "variables": {"input": device_input(inventoryId="DEMO-UNKNOWN")}}
    app = create_app(settings.replace(otel=True), tracer_provider=provider)
    async with (
        run_server(app) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": bearer(settings)}, timeout=10) as client,
    ):
        answers = [(await client.post("/graphql", json=payload)).json() for _ in range(2)]
        spans = await finished(exporter, requests=2)
    assert answers[0] == answers[1]
    assert answers[0]["data"]["again"] == {"__typename": "InvalidDeviceError"}
    operations = [span for span in spans if span.name == "graphql mutation"]
    assert len(operations) == 2
    by_executor, by_plan = (dict(span.attributes or {}) for span in operations)
    assert by_plan == by_executor
    assert by_plan["gateway.graphql.fields"] == ("regenerateAccessCode",)  # written at the top: `again`'s field
    assert by_plan["gateway.outcome"] == "InvalidDeviceError"
    batches = [span for span in spans if span.name == "store transaction"]
    assert {parent_id(batch) for batch in batches} == {span_id(operation) for operation in operations}


async def test_upstream_mode_the_upstream_receives_the_trace(
    tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with serve_scripted() as (upstream, upstream_url):
        settings = upstream_settings(
            upstream_url,
            otel=True,
            data_dir=str(tmp_path),
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'store.sqlite3'}",
            kdf_cost=TEST_KDF_COST,
            auth_hs256_secret=TEST_HS256_SECRET,
        )
        token = bearer(settings)  # forwarded upstream (GATEWAY_UPSTREAM_AUTH=forward)
        headers = {"Authorization": token, "traceparent": TRACEPARENT, "baggage": "tenant=caller-says"}
        async with (
            run_server(create_app(settings, tracer_provider=provider)) as url,
            httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as client,
        ):
            credentials = await regenerate(client)
            spans = await finished(exporter, requests=1)
    assert credentials == {
        "__typename": "BootstrapCredentials",
        "accessId": FAKE_ACCESS_ID,
        "otp": FAKE_OTP,
        "id": DEVICE_INSTANCE,
        "expiresAt": None,
    }

    request = one(spans, "POST /graphql")
    assert parent_id(request) == int(CALLER_SPAN, 16)
    operation = one(spans, "graphql mutation")
    call = one(spans, f"PUT {ACCESS_CODE_PATH}")
    assert call.kind is SpanKind.CLIENT
    assert trace_id(call) == int(TRACE_ID, 16)
    assert parent_id(call) == span_id(operation)
    assert call.attributes is not None
    assert call.attributes["http.response.status_code"] == 200
    assert call.attributes["url.template"] == ACCESS_CODE_PATH
    # The attempt is written before the call and its outcome after: both batches in the caller's trace.
    batches = [span for span in spans if span.name == "store transaction"]
    assert len(batches) >= 2
    assert all(trace_id(span) == int(TRACE_ID, 16) for span in batches)

    # What the real upstream received: this trace, the upstream call's span as the parent.
    (seen,) = upstream.seen
    version, sent_trace, sent_parent, _flags = seen.headers["traceparent"].split("-")
    assert (version, sent_trace, sent_parent) == ("00", TRACE_ID, f"{span_id(call):016x}")
    assert seen.headers["authorization"] == token  # the forwarded header reached it; no span holds it
    assert "baggage" not in seen.headers  # the trace goes upstream, the caller's baggage does not

    issued = [FAKE_OTP, FAKE_ACCESS_ID, DEVICE_INSTANCE]
    assert_nothing_names(spans, [*IDENTIFIERS, *issued, token.removeprefix("Bearer ")])


async def test_an_upstream_failure_marks_its_span_without_quoting_the_upstream(
    tmp_path: Path, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    page = f"<html>proxy error for subject {SUBJECT}</html>"
    async with serve_scripted(ScriptedUpstream(handler=answer(503, page))) as (_, upstream_url):
        settings = upstream_settings(
            upstream_url,
            otel=True,
            data_dir=str(tmp_path),
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'store.sqlite3'}",
            insecure_disable_auth=True,
        )
        async with (
            run_server(create_app(settings, tracer_provider=provider)) as url,
            httpx.AsyncClient(base_url=url, headers={"traceparent": TRACEPARENT}, timeout=10) as client,
        ):
            assert (await regenerate(client))["__typename"] == "UpstreamUnavailableError"
            spans = await finished(exporter, requests=1)
    call = one(spans, f"PUT {ACCESS_CODE_PATH}")
    assert call.status.status_code is StatusCode.ERROR
    assert call.attributes is not None
    assert call.attributes["http.response.status_code"] == 503
    assert one(spans, "graphql mutation").attributes == {
        "graphql.operation.type": "mutation",
        "gateway.graphql.fields": ("regenerateAccessCode",),
        "gateway.outcome": "UpstreamUnavailableError",
    }
    assert_nothing_names(spans, [*IDENTIFIERS, "proxy error"])


async def test_off_no_spans_and_no_middleware(
    settings: Settings, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    await seeded(settings)
    assert Settings().otel is False
    app = create_app(settings, tracer_provider=provider)  # GATEWAY_OTEL=false: the provider is not used
    assert all(middleware.cls.__name__ != "RequestSpans" for middleware in app.user_middleware)  # type: ignore[attr-defined]
    headers = {"Authorization": bearer(settings), "traceparent": TRACEPARENT}
    async with run_server(app) as url, httpx.AsyncClient(base_url=url, headers=headers) as client:
        assert (await regenerate(client))["__typename"] == "BootstrapCredentials"
    assert exporter.get_finished_spans() == ()


OFF_SCRIPT = """
import asyncio, sys
import httpx
from gateway.app import create_app
from gateway.settings import Settings
from tests.demo import REGENERATE, device_input
from tests.utils import run_server

async def main() -> None:
    settings = Settings().replace(data_dir=sys.argv[1], kdf_cost=4, insecure_disable_auth=True)
    async with run_server(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as client:
        body = {"query": REGENERATE, "variables": {"input": device_input()}}
        answer = await client.post("/graphql", json=body, headers={"traceparent": sys.argv[2]})
        assert answer.json()["data"]["regenerateAccessCode"]["__typename"] == "StudyNotFoundError"

asyncio.run(main())
print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
"""


def test_off_nothing_of_opentelemetry_is_imported(tmp_path: Path) -> None:
    """A request through the whole app (a store transaction included) in a fresh interpreter."""
    root = Path(__file__).parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    done = subprocess.run(
        [sys.executable, "-c", OFF_SCRIPT, str(tmp_path), TRACEPARENT],
        cwd=root,
        env={**env, "GATEWAY_ENV_FILE": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OTEL_"))}
    return {**base, "GATEWAY_DATA_DIR": str(tmp_path / "data"), "GATEWAY_KDF_COST": "4", "GATEWAY_ENV_FILE": ""}


def refused(env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""  # refused before the store was touched or the banner printed
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_on_without_the_extra_refused_in_one_line(env: dict[str, str], tmp_path: Path) -> None:
    # A regular package named `opentelemetry` ahead of site-packages hides the installed one.
    hidden = tmp_path / "hide" / "opentelemetry"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text('"""Not OpenTelemetry: it hides the real one from this process."""\n')
    line = refused({**env, "GATEWAY_OTEL": "true", "PYTHONPATH": str(hidden.parent)})
    assert "GATEWAY_OTEL" in line
    assert "pip install '.[otel]'" in line


def test_an_exporter_that_is_not_installed_refused_in_one_line(env: dict[str, str]) -> None:
    line = refused({**env, "GATEWAY_OTEL": "true", "OTEL_TRACES_EXPORTER": "zipkin_json"})
    assert "OTEL_TRACES_EXPORTER=zipkin_json" in line


def test_the_otel_variables_configure_the_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    default = Tracing.from_env()
    assert default.provider.resource.attributes["service.name"] == "clinical-one-gateway"  # type: ignore[attr-defined]
    default.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-eu-1")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    configured = Tracing.from_env()
    assert configured.provider.resource.attributes["service.name"] == "gateway-eu-1"  # type: ignore[attr-defined]
    assert configured.provider.sampler.get_description() == "AlwaysOffSampler"  # type: ignore[attr-defined]
    configured.shutdown()


def _spans(stdout: str) -> list[dict[str, Any]]:
    """The console exporter's spans (indented JSON objects) among the banner's lines."""
    decoder, found, at = json.JSONDecoder(), [], stdout.find('{\n    "name"')
    while at != -1:
        span, end = decoder.raw_decode(stdout, at)
        found.append(span)
        at = stdout.find('{\n    "name"', end)
    return found


def test_gateway_serve_exports_what_the_otel_variables_say(env: dict[str, str]) -> None:
    port = free_port()
    token = dev_token(env)
    env = {**env, "GATEWAY_OTEL": "true", "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "gateway-under-test"}
    with serving(env, port, log_apart=True) as served:
        answer = httpx.post(
            f"http://127.0.0.1:{port}/graphql",
            json={"query": REGENERATE, "variables": {"input": device_input()}},
            headers={"Authorization": f"Bearer {token}", "traceparent": TRACEPARENT},
            timeout=10,
        ).json()["data"]["regenerateAccessCode"]
    assert answer["__typename"] == "BootstrapCredentials"
    secret_watch.watch(answer["otp"])
    spans = _spans(served.output)  # exported at the latest when the lifespan ends (SIGTERM)
    secret_watch.keep([json.dumps(span) for span in spans])
    ours = [span for span in spans if span["context"]["trace_id"] == f"0x{TRACE_ID}"]
    names = {span["name"] for span in ours}
    assert {"POST /graphql", "graphql mutation", "store transaction"} <= names, names
    assert all(span["resource"]["attributes"]["service.name"] == "gateway-under-test" for span in ours)
    rendered = json.dumps(spans)
    for secret in (*IDENTIFIERS, answer["otp"], answer["accessId"], token):
        assert secret not in rendered
