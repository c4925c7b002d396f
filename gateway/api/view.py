"""Strawberry's ASGI view with the gateway's HTTP rules for GraphQL.

- A POST must be `application/json`: a text/plain, form or multipart POST (what a browser sends
  cross-site without a preflight) is refused with 415 before anything is parsed or executed.
- Mutations only by POST (Strawberry refuses them over GET); no batching (a JSON array is
  refused: the schema has no batching config); no multipart uploads.
- GraphiQL only outside production: the gateway's own page (`gateway.api.graphiql`), whose files it
  serves itself.
- Persisted queries (`gateway.api.persisted`): Apollo's APQ, and with trusted documents configured,
  only those documents run; every refusal is a GraphQL error with an `extensions.code`.
- GraphQL over HTTP (`gateway.api.negotiation`): `application/graphql-response+json` when the client
  prefers it, with the spec's status codes (a request error is 4xx, an executed one 200);
  `application/json` otherwise, as before; 406 when the client accepts neither.
- Responses are encoded with orjson.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import orjson
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from starlette.datastructures import Headers, QueryParams
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData, process_result
from strawberry.http.base import BaseRequestProtocol
from strawberry.schema.exceptions import InvalidOperationTypeError
from strawberry.types import ExecutionResult
from strawberry.types.execution import PreExecutionError

from gateway.api.context import Context
from gateway.api.graphiql.page import page_response
from gateway.api.guards import TrustedDocuments
from gateway.api.negotiation import GRAPHQL_RESPONSE_JSON, JSON, response_media_type
from gateway.api.persisted import PersistedQueries, PersistedQueryCache, PersistedQueryRefused
from gateway.api.schema import GatewaySchema
from gateway.callers import caller_of
from gateway.settings import GraphQLSettings
from gateway.state import state_of


def _with_content_type(scope: Scope, content_type: str) -> Scope:
    headers = [(name, value) for name, value in scope["headers"] if name != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", content_type.encode("latin-1"))]}


def request_error(status: int, message: str, code: str | None = None) -> JSONResponse:
    """A request the gateway will not execute, as GraphQL-over-HTTP describes it: `errors` only
    (with `extensions.code` when the refusal has one a client acts on)."""
    error: dict[str, object] = {"message": message}
    if code is not None:
        error["extensions"] = {"code": code}
    return JSONResponse({"errors": [error]}, status_code=status, headers={"Cache-Control": "no-store"})


_REQUEST_KEYS = ("query", "operationName", "variables", "extensions")


def _replay(body: bytes) -> Receive:
    """A `receive` that hands over a body already read, then waits for the disconnect."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


def _context(connection: HTTPConnection) -> Context:
    state = state_of(connection)
    return Context(service=state["service"], caller=caller_of(connection), settings=state["settings"])


_EXCHANGE = "gateway.graphql_exchange"
"""The scope key of the request's `Exchange`."""


@dataclass(slots=True)
class Exchange:
    """What the view learns about one request on its way through Strawberry: the negotiated media
    type, and whether the answer is a request error (nothing executed)."""

    media_type: str
    request_error: bool = False


def _is_page_request(scope: Scope, headers: Headers) -> bool:
    """What Strawberry renders GraphiQL for: a GET with no document (neither `query` nor a persisted
    query's `extensions`) that accepts HTML. `gateway.auth.middleware.is_public` says the same."""
    if scope["method"] != "GET":
        return False
    params = QueryParams(scope.get("query_string", b""))
    accept = headers.get("accept", "")
    return "query" not in params and "extensions" not in params and ("text/html" in accept or "*/*" in accept)


class GraphQLView(GraphQL[Context, None]):
    def __init__(self, schema: GatewaySchema, *, settings: GraphQLSettings, production: bool) -> None:
        super().__init__(
            schema,
            graphql_ide=None if production else "graphiql",
            allow_queries_via_get=True,
            multipart_uploads_enabled=False,
        )
        self.planner = schema
        """The schema, typed as the gateway's: it plans and runs cached operations (`_planned`)."""
        trusted = TrustedDocuments.load(settings.trusted_documents) if settings.trusted_documents else None
        apq = PersistedQueryCache(settings.apq_cache_size) if settings.apq and trusted is None else None

        def valid(text: str) -> bool:  # the document cache's verdict, kept for the execution that follows
            prepared = schema.documents.get(text)
            return prepared.document is not None and not prepared.errors

        self.persisted = PersistedQueries(trusted=trusted, apq=apq, valid=valid)

    def encode_json(self, data: object) -> bytes:
        """orjson, several times faster than `json.dumps`; the stdlib for what orjson refuses
        (an integer past 64 bits, say), so a result never fails to encode."""
        try:
            return orjson.dumps(data)
        except TypeError:
            return json.dumps(data, separators=(",", ":")).encode("utf-8")

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        """The typed context every resolver receives: the service, the caller and the settings."""
        return _context(request)

    async def render_graphql_ide(self, request: Request) -> Response:
        """The gateway's own GraphiQL page (not Strawberry's, which loads its files from a CDN)."""
        return page_response()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Strawberry's HTTP handling, with every request error (a body that is not a JSON object,
        a mutation by GET, a batch, a persisted query refused, an Accept that allows no JSON: 406)
        answered as a GraphQL error in JSON, never as plain text, so that a GraphQL client can read
        it; in the negotiated media type, with the spec's status codes for `graphql-response+json`."""
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        headers = Headers(scope=scope)
        exchange = Exchange(response_media_type(headers.get("accept")) or "")
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if not exchange.media_type and not _is_page_request(scope, headers):
            response: Response = request_error(406, f"GraphQL responses are {GRAPHQL_RESPONSE_JSON} or {JSON}")
        elif scope["method"] == "POST" and media_type != JSON:
            response = request_error(415, "GraphQL requests must be POSTed as application/json")
        else:
            planned: Response | None = None
            if scope["method"] == "POST":  # and so application/json
                body = await Request(scope, receive).body()
                planned = await self._planned(scope, body)
                receive = _replay(body)
            if media_type == JSON:  # media types are case-insensitive; Strawberry's check is not
                scope = _with_content_type(scope, JSON)
            scope[_EXCHANGE] = exchange
            response = planned or await self._answer(scope, receive, exchange)
        if exchange.media_type == GRAPHQL_RESPONSE_JSON and response.headers.get("content-type", "").startswith(JSON):
            response.headers["content-type"] = f"{GRAPHQL_RESPONSE_JSON}; charset=utf-8"  # GraphiQL's page stays HTML
            if exchange.request_error and response.status_code == 200:
                response.status_code = 400
        # A result may carry an OTP: no cache (the browser's, a proxy's) may keep it.
        response.headers["Cache-Control"] = "no-store"
        await response(scope, receive, send)

    async def _planned(self, scope: Scope, body: bytes) -> Response | None:
        """The answer of a POSTed operation that has a plan (`gateway.api.plans`), the same answer
        Strawberry's path gives without its general machinery; None for every other request
        (Strawberry's path then answers it, refusals and request errors included)."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if type(data) is not dict:
            return None
        query, name, variables, extensions = (data.get(key) for key in _REQUEST_KEYS)
        kinds = ((query, str), (name, str), (variables, dict), (extensions, dict))
        if not all(value is None or isinstance(value, kind) for value, kind in kinds):
            return None
        if query is not None and extensions and "persistedQuery" in extensions:
            return None  # an APQ registration: checked (and its document validated) once, on Strawberry's path
        try:
            query = self.persisted.resolve(query, extensions)  # a lookup by hash; trusted documents only
        except PersistedQueryRefused:
            return None
        plan = self.planner.plan(query, name) if query else None
        if plan is None:
            return None
        result = await self.planner.run_plan(plan, variables, _context(Request(scope)))
        if result is None:
            return None
        return Response(self.encode_json(process_result(result)), media_type=JSON)

    async def _answer(self, scope: Scope, receive: Receive, exchange: Exchange) -> Response:
        """Strawberry's answer, a request error as GraphQL JSON (a mutation by GET: the spec's 405
        with `application/graphql-response+json`, 400 as before otherwise)."""
        try:
            response = await self.run(Request(scope=scope, receive=receive))
        except HTTPException as error:
            spec = exchange.media_type == GRAPHQL_RESPONSE_JSON
            if spec and isinstance(error.__cause__, InvalidOperationTypeError):
                response = request_error(405, error.reason)
                response.headers["Allow"] = "POST"
            else:
                response = request_error(error.status_code, error.reason)
        except PersistedQueryRefused as refused:
            status = refused.spec_status if exchange.media_type == GRAPHQL_RESPONSE_JSON else refused.status
            response = request_error(status, refused.message, refused.code)
        return response

    def should_render_graphql_ide(self, request: BaseRequestProtocol) -> bool:
        """Strawberry's rule, but a GET with a persisted query's `extensions` is an execution."""
        return super().should_render_graphql_ide(request) and request.query_params.get("extensions") is None

    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        """Strawberry's rendering; with `application/graphql-response+json`, a result where nothing
        executed (a document that does not parse or validate, variables that do not fit) is a
        request error: no `data` entry, and 400."""
        rendered = await super().process_result(request, result)
        if isinstance(result, PreExecutionError):
            exchange: Exchange | None = request.scope.get(_EXCHANGE)
            if exchange is not None and exchange.media_type == GRAPHQL_RESPONSE_JSON:
                exchange.request_error = True
                rendered.pop("data", None)
        return rendered

    def decode_json(self, data: str | bytes) -> object:
        """orjson's strict parser: invalid UTF-8 and nesting past 1,024 levels are refused as bad
        JSON (400); anything but an object (a string, a number, null) is refused as well."""
        decoded = orjson.loads(data)
        if not isinstance(decoded, dict | list):  # a list is a batch, refused as such later
            raise HTTPException(400, "The request body (and variables, extensions) must be a JSON object")
        return decoded

    async def parse_http_body(self, request: AsyncHTTPRequestAdapter) -> GraphQLRequestData | list[GraphQLRequestData]:
        """Strawberry's parsing, then the persisted query's document (raises `PersistedQueryRefused`)."""
        data = await super().parse_http_body(request)
        if isinstance(data, list):  # a batch, refused as such later
            return data
        query = self.persisted.resolve(data.query, data.extensions)
        return data if query is data.query else dataclasses.replace(data, query=query)
