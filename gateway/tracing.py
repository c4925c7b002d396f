"""OpenTelemetry traces (`GATEWAY_OTEL=true`, `pip install '.[otel]'`): the tracer provider and the
few hooks the rest of the gateway calls.

Imported only when tracing is on (`gateway.app.open_tracing`; the other modules name `Tracing` for
their types alone): with `GATEWAY_OTEL=false` nothing of OpenTelemetry is imported and the request
path pays one `is None` check per hook.

**Configuration is OpenTelemetry's own.** `Tracing.from_env` builds an SDK `TracerProvider` the way
the SDK's auto-configuration does: the resource from `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`
(service name `clinical-one-gateway` when neither names one), the sampler from `OTEL_TRACES_SAMPLER`,
the exporters from `OTEL_TRACES_EXPORTER` (resolved by the SDK's configuration module, with
`OTEL_EXPORTER_OTLP_*` read by the exporter itself; unset: OTLP over HTTP), each behind a
`BatchSpanProcessor` (`OTEL_BSP_*`); `OTEL_PROPAGATORS` picks the propagators. Tests hand in a
provider of their own instead (`Tracing(provider)`).

**The spans**, one trace per request:

- `RequestSpans`: the request (SERVER), opentelemetry-instrumentation-asgi's middleware, outermost,
  continuing the caller's `traceparent`;
- `operation`: the GraphQL operation (its type and root fields, its union member);
- `store_transaction`: each group-commit batch, a child of its first unit's request and linked to
  every unit's request;
- `upstream_call`: each PUT to Clinical One (CLIENT), its `traceparent` injected into the request.

**Nothing that names a patient or a secret.** Paths are route templates (the REST face's and the
upstream's carry study, subject and device ids), no query string (the mSubjectId), no header but
the propagation headers, host and user agent reaches the ASGI middleware (so no
`OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_*` can record an Authorization header), no GraphQL
document or variables (a document may spell the ids inline; this is why Strawberry's
`OpenTelemetryExtension`, which records the document as `graphql.query`, is not used), and
exceptions are recorded by class name only (a driver's message can quote bound parameters).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk._configuration import _get_exporter_names, _import_exporters
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.util.http import get_excluded_urls
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import __version__
from gateway.settings import SettingsError

SERVICE = "clinical-one-gateway"
DEFAULT_EXPORTER = "otlp_proto_http"
"""What an unset `OTEL_TRACES_EXPORTER` means: OTLP (the specification's default) over HTTP, the
transport the `otel` extra installs."""

_SCOPE = "gateway.scope"
"""Where `RequestSpans` keeps the request's own scope while the middleware reads its cleaned copy."""
_SAFE_HEADERS = frozenset({b"host", b"user-agent", b"content-length"})


class TracingError(SettingsError):
    """The `OTEL_*` variables describe no usable set-up (an exporter that is not installed, say)."""


def exporter_classes() -> list[type[SpanExporter]]:
    """The exporters `OTEL_TRACES_EXPORTER` names (`none`: none), as the SDK's configuration resolves
    them (`otlp` follows `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`); `TracingError` for one not installed."""
    try:
        names = _get_exporter_names("traces") if os.environ.get("OTEL_TRACES_EXPORTER") else [DEFAULT_EXPORTER]
        traces, _, _ = _import_exporters(names, [], [])
    except RuntimeError as error:
        raise TracingError(
            f"OTEL_TRACES_EXPORTER={os.environ.get('OTEL_TRACES_EXPORTER', '')}: {error} "
            f"(the otel extra installs otlp_proto_http and console)"
        ) from None
    return list(traces.values())


def _resource() -> Resource:
    resource = Resource.create({SERVICE_VERSION: __version__})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: SERVICE}))
    return resource


class Tracing:
    """The gateway's tracer and its hooks, over `provider` (shut down with the app only when `owned`)."""

    def __init__(self, provider: trace.TracerProvider, *, owned: bool = False) -> None:
        self.provider = provider
        self.owned = owned
        self.tracer = provider.get_tracer("gateway", __version__)

    @classmethod
    def from_env(cls) -> Tracing:
        """A provider configured by the `OTEL_*` variables, its exporters each behind a batch processor."""
        exporters = exporter_classes()
        provider = SdkTracerProvider(resource=_resource())  # the sampler: OTEL_TRACES_SAMPLER(_ARG)
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter()))
        return cls(provider, owned=True)

    def shutdown(self) -> None:
        """Export what is still queued and stop (the lifespan's end); a provider handed in is its owner's."""
        if self.owned and isinstance(self.provider, SdkTracerProvider):
            self.provider.shutdown()

    # -- the GraphQL operation -----------------------------------------------------------------

    @contextmanager
    def operation(self) -> Iterator[trace.Span]:
        """The span of one GraphQL operation; `describe_operation` and `note` fill it in."""
        with self._span("graphql", trace.SpanKind.INTERNAL) as span:
            yield span

    @staticmethod
    def describe_operation(operation_type: str, root_fields: Sequence[str]) -> None:
        """The current operation's type and root fields (schema names, never aliases or arguments)."""
        span = trace.get_current_span()
        span.update_name(f"graphql {operation_type}")
        span.set_attribute("graphql.operation.type", operation_type)
        span.set_attribute("gateway.graphql.fields", list(root_fields))

    @staticmethod
    def note(name: str, value: str | int) -> None:
        """An attribute on the current span (a bounded value: an outcome, a count)."""
        trace.get_current_span().set_attribute(name, value)

    # -- the store's group commit --------------------------------------------------------------

    @staticmethod
    def current() -> object:
        """The caller's context, kept with a unit of work until its batch runs."""
        return otel_context.get_current()

    @contextmanager
    def store_transaction(self, dialect: str, contexts: Sequence[object]) -> Iterator[trace.Span]:
        """The span of one batch transaction: a child of its first unit's request, linked to every unit's."""
        parent = contexts[0] if contexts and isinstance(contexts[0], otel_context.Context) else None
        links: list[trace.Link] = []
        seen: set[tuple[int, int]] = set()
        for each in contexts:
            if not isinstance(each, otel_context.Context):
                continue
            span_context = trace.get_current_span(each).get_span_context()
            key = (span_context.trace_id, span_context.span_id)
            if span_context.is_valid and key not in seen:
                seen.add(key)
                links.append(trace.Link(span_context))
        attributes = {"db.system.name": dialect, "gateway.store.units": len(contexts)}
        with self._span("store transaction", trace.SpanKind.CLIENT, parent, attributes, links) as span:
            yield span

    # -- the upstream call ---------------------------------------------------------------------

    @contextmanager
    def upstream_call(self, request: httpx.Request, route: str) -> Iterator[UpstreamCall]:
        """The span of one upstream call, named by the path's template `route` (the path itself names
        the subject); its context goes into `request`'s headers (`traceparent`, by `OTEL_PROPAGATORS`)."""
        attributes: dict[str, Any] = {
            "http.request.method": request.method,
            "url.scheme": request.url.scheme,
            "url.template": route,
            "server.address": request.url.host,
        }
        if request.url.port is not None:
            attributes["server.port"] = request.url.port
        with self._span(f"{request.method} {route}", trace.SpanKind.CLIENT, None, attributes) as span:
            # A context holding the span alone: the trace goes upstream, a caller's baggage does not.
            propagate.inject(request.headers, context=trace.set_span_in_context(span, otel_context.Context()))
            yield UpstreamCall(span)

    # -- spans, exceptions by class name only --------------------------------------------------

    @contextmanager
    def _span(
        self,
        name: str,
        kind: trace.SpanKind,
        parent: otel_context.Context | None = None,
        attributes: dict[str, Any] | None = None,
        links: Sequence[trace.Link] = (),
    ) -> Iterator[trace.Span]:
        with self.tracer.start_as_current_span(
            name,
            context=parent,
            kind=kind,
            attributes=attributes,
            links=links,
            record_exception=False,  # an exception's text may quote what it was given: its class only
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except BaseException as error:
                span.set_attribute("error.type", type(error).__name__)
                span.set_status(trace.StatusCode.ERROR, type(error).__name__)
                raise


@dataclass(frozen=True)
class UpstreamCall:
    span: trace.Span

    def answered(self, status: int) -> None:
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.span.set_status(trace.StatusCode.ERROR)

    def failed(self, reason: str) -> None:
        """No usable answer: `reason` is the gateway's own words (class names, never the server's)."""
        self.span.set_status(trace.StatusCode.ERROR, reason)


class RequestSpans:
    """The request's span: opentelemetry-instrumentation-asgi's `OpenTelemetryMiddleware`, handed a
    cleaned copy of the scope (the route's template for the path, no query string, only the
    propagation headers, host and user agent), while the app below gets the request's own scope."""

    def __init__(self, app: ASGIApp, *, tracing: Tracing, routes: Sequence[BaseRoute]) -> None:
        self.routes = routes
        propagation = {field.lower().encode("latin-1") for field in propagate.get_global_textmap().fields}
        self.shown_headers = _SAFE_HEADERS | propagation
        self.middleware = OpenTelemetryMiddleware(
            _OwnScope(app),
            tracer_provider=tracing.provider,
            excluded_urls=get_excluded_urls("ASGI"),  # OTEL_PYTHON_ASGI_EXCLUDED_URLS, matched on the template
            exclude_spans=["receive", "send"],  # one span a request, not one per ASGI message
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.middleware.app(scope, receive, send)
            return
        template = self._template(scope)
        shown = {
            **scope,
            "path": template,
            "raw_path": template.encode("ascii"),
            "query_string": b"",
            "headers": [(name, value) for name, value in scope["headers"] if name in self.shown_headers],
            _SCOPE: scope,
        }
        await self.middleware(shown, receive, send)

    def _template(self, scope: Scope) -> str:
        """The template of the route the request will reach; empty for none (a 404 names nothing)."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                return str(getattr(route, "path", ""))
        return ""


class _OwnScope:
    """Below the ASGI middleware: the app runs on the request's own scope again."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope.get(_SCOPE, scope), receive, send)
