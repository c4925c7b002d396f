"""Strawberry's ASGI view with the gateway's HTTP rules for GraphQL.

- A POST must be `application/json`: a text/plain, form or multipart POST (what a browser sends
  cross-site without a preflight) is refused with 415 before anything is parsed or executed.
- Mutations only by POST (Strawberry refuses them over GET); no batching (a JSON array is
  refused: the schema has no batching config); no multipart uploads.
- GraphiQL only outside production: the gateway's own page (`gateway.api.graphiql`), whose files it
  serves itself.
- With trusted documents configured, only those documents run (`gateway.api.guards.TrustedDocuments`).
- Responses are encoded with orjson.
"""

from __future__ import annotations

import dataclasses
import json

import orjson
from cross_web import AsyncHTTPRequestAdapter, HTTPException
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.http import GraphQLRequestData
from strawberry.schema import BaseSchema

from gateway.api.context import Context
from gateway.api.graphiql.page import page_response
from gateway.api.guards import TrustedDocuments, UntrustedDocument
from gateway.callers import caller_of
from gateway.settings import GraphQLSettings
from gateway.state import state_of


def _with_content_type(scope: Scope, content_type: str) -> Scope:
    headers = [(name, value) for name, value in scope["headers"] if name != b"content-type"]
    return {**scope, "headers": [*headers, (b"content-type", content_type.encode("latin-1"))]}


def request_error(status: int, message: str) -> JSONResponse:
    """A request the gateway will not execute, as GraphQL-over-HTTP describes it: `errors` only."""
    return JSONResponse({"errors": [{"message": message}]}, status_code=status, headers={"Cache-Control": "no-store"})


class GraphQLView(GraphQL[Context, None]):
    def __init__(self, schema: BaseSchema, *, settings: GraphQLSettings, production: bool) -> None:
        super().__init__(
            schema,
            graphql_ide=None if production else "graphiql",
            allow_queries_via_get=True,
            multipart_uploads_enabled=False,
        )
        self.trusted = TrustedDocuments.load(settings.trusted_documents) if settings.trusted_documents else None

    def encode_json(self, data: object) -> bytes:
        """orjson, several times faster than `json.dumps`; the stdlib for what orjson refuses
        (an integer past 64 bits, say), so a result never fails to encode."""
        try:
            return orjson.dumps(data)
        except TypeError:
            return json.dumps(data, separators=(",", ":")).encode("utf-8")

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        """The typed context every resolver receives: the service, the caller and the settings."""
        state = state_of(request)
        return Context(service=state["service"], caller=caller_of(request), settings=state["settings"])

    async def render_graphql_ide(self, request: Request) -> Response:
        """The gateway's own GraphiQL page (not Strawberry's, which loads its files from a CDN)."""
        return page_response()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Strawberry's HTTP handling, with every request error (a body that is not a JSON object,
        a mutation by GET, a batch, an untrusted document) answered as a GraphQL error in JSON,
        never as plain text, so that a GraphQL client can read it."""
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        media_type = Headers(scope=scope).get("content-type", "").split(";")[0].strip().lower()
        if scope["method"] == "POST" and media_type != "application/json":
            response: Response = request_error(415, "GraphQL requests must be POSTed as application/json")
        else:
            if media_type == "application/json":  # media types are case-insensitive; Strawberry's check is not
                scope = _with_content_type(scope, "application/json")
            try:
                response = await self.run(Request(scope=scope, receive=receive))
            except HTTPException as error:
                response = request_error(error.status_code, error.reason)
        # A result may carry an OTP: no cache (the browser's, a proxy's) may keep it.
        response.headers["Cache-Control"] = "no-store"
        await response(scope, receive, send)

    def decode_json(self, data: str | bytes) -> object:
        """orjson's strict parser: invalid UTF-8 and nesting past 1,024 levels are refused as bad
        JSON (400); anything but an object (a string, a number, null) is refused as well."""
        decoded = orjson.loads(data)
        if not isinstance(decoded, dict | list):  # a list is a batch, refused as such later
            raise HTTPException(400, "The request body (and variables, extensions) must be a JSON object")
        return decoded

    async def parse_http_body(self, request: AsyncHTTPRequestAdapter) -> GraphQLRequestData | list[GraphQLRequestData]:
        data = await super().parse_http_body(request)
        if self.trusted is None or isinstance(data, list):
            return data
        try:
            query = self.trusted.resolve(data.query, data.extensions)
        except UntrustedDocument as error:
            raise HTTPException(400, str(error)) from None
        return dataclasses.replace(data, query=query)
