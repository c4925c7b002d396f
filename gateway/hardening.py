"""Limits that keep oversized or probing requests away from the gateway's work.

- `BodySizeLimitMiddleware`: every route; a body over `GATEWAY_MAX_BODY_BYTES` gets 413, whether
  it announces its length or streams.
- `QueryDepthLimit`: Strawberry's depth limit, safe on documents with unknown fragments.
- `HideSuggestions`: GraphQL errors never say "Did you mean …?", so a client without
  introspection cannot map the schema by probing (graphql-core can hide them, but Strawberry does
  not pass its `hide_suggestions` on; stripping them from every error covers validation and
  variable coercion alike).
- `TrustedDocuments`: when `GATEWAY_TRUSTED_DOCUMENTS` names a file, only its documents run,
  sent whole or by hash in Apollo's persisted-query format
  (`extensions.persistedQuery.sha256Hash`).

The other GraphQL limits (depth, aliases, tokens, introspection) are Strawberry's extensions,
assembled in `gateway.api.schema.build_schema`; the HTTP rules (JSON-only POST, no mutations by
GET, no batching) are in `gateway.api.view`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graphql import (
    DocumentNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    ValidationContext,
    ValidationRule,
    Visitor,
    visit,
)
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from strawberry.extensions import AddValidationRules, SchemaExtension, query_depth_limiter

from gateway.settings import SettingsError

log = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    """Raised from `receive` when a body grows past the limit."""


async def _too_large(send: Send, max_bytes: int) -> None:
    payload = json.dumps(
        {"error": "payload_too_large", "error_description": f"request bodies are limited to {max_bytes} bytes"}
    ).encode("utf-8")
    # No `Connection: close`: closing with the rest of the body unread makes the client's TCP stack
    # see a reset, often before it reads the 413; uvicorn reads and drops the rest instead.
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode("ascii"))]
    await send({"type": "http.response.start", "status": 413, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class BodySizeLimitMiddleware:
    """Answer 413 to a body larger than `max_bytes`: at once when Content-Length says so, else as
    soon as the bytes received pass the limit (the route reading the body never sees the rest)."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.strip().isdigit() or int(declared) > self.max_bytes):
            await _too_large(send, self.max_bytes)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            if started:
                log.warning("a request body passed the limit after the response had started")
                return
            await _too_large(send, self.max_bytes)


def _spread_names(document: DocumentNode) -> set[str]:
    names: set[str] = set()

    class Spreads(Visitor):
        def enter_fragment_spread(self, node: FragmentSpreadNode, *_: object) -> None:
            names.add(node.name.value)

    visit(document, Spreads())
    return names


class QueryDepthLimit(AddValidationRules):
    """Strawberry's `QueryDepthLimiter`, run only on documents whose fragment spreads all resolve.

    Its validator looks fragments up without checking (a KeyError, reported as an unexpected
    error); graphql-core's own `KnownFragmentNamesRule` reports an unknown fragment properly.
    """

    def __init__(self, max_depth: int) -> None:
        depth_rule = query_depth_limiter.create_validator(max_depth, None)

        class DepthWhereFragmentsResolve(ValidationRule):
            def __init__(self, context: ValidationContext) -> None:
                super().__init__(context)
                document = context.document
                defined = {d.name.value for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
                if _spread_names(document) <= defined:
                    depth_rule(context)  # reports through `context`; it visits nothing afterwards

        super().__init__([DepthWhereFragmentsResolve])


_SUGGESTION = re.compile(r"\s*Did you mean [^?]*\?")


def without_suggestions(message: str) -> str:
    return _SUGGESTION.sub("", message)


class HideSuggestions(SchemaExtension):
    """Strip graphql-core's "Did you mean …?" from every error of the result."""

    def on_operation(self) -> Iterator[None]:
        yield
        for error in getattr(self.execution_context.result, "errors", None) or ():
            error.message = without_suggestions(error.message)


class UntrustedDocument(Exception):
    """The request's document is not one of the trusted documents; the message says why."""


def document_hash(document: str) -> str:
    return hashlib.sha256(document.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class TrustedDocuments:
    """The only documents the gateway executes, by the hex sha256 of their text."""

    documents: Mapping[str, str]

    @classmethod
    def load(cls, path: str | Path) -> TrustedDocuments:
        """Read `{"<sha256>": "<document>", …}` or an Apollo persisted-query manifest
        (`{"format": "apollo-persisted-query-manifest", "operations": [{"id", "body", …}]}`).
        Every hash must be the document's own; raises `SettingsError` otherwise."""
        name = "GATEWAY_TRUSTED_DOCUMENTS"
        try:
            raw: Any = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise SettingsError(f"{name}: cannot read {path}: {error}") from None
        if isinstance(raw, dict) and isinstance(raw.get("operations"), list):
            pairs = [
                (op.get("id"), op.get("body")) if isinstance(op, dict) else (None, None) for op in raw["operations"]
            ]
        elif isinstance(raw, dict):
            pairs = list(raw.items())
        else:
            raise SettingsError(f"{name}: {path} must hold an object of sha256 -> document")
        documents: dict[str, str] = {}
        for key, document in pairs:
            if not isinstance(key, str) or not isinstance(document, str):
                raise SettingsError(f"{name}: {path} must map sha256 strings to document strings")
            if document_hash(document) != key.lower():
                raise SettingsError(f"{name}: {key!r} in {path} is not the sha256 of its document")
            documents[key.lower()] = document
        return cls(documents)

    def resolve(self, query: str | None, extensions: Mapping[str, Any] | None) -> str:
        """The document to execute, or raise `UntrustedDocument`."""
        persisted = (extensions or {}).get("persistedQuery")
        sha = persisted.get("sha256Hash") if isinstance(persisted, dict) else None
        if isinstance(sha, str):
            document = self.documents.get(sha.lower())
            if document is None:
                raise UntrustedDocument("PersistedQueryNotFound: only trusted documents are executed here")
            if query is not None and document_hash(query) != sha.lower():
                raise UntrustedDocument("the query is not the document its sha256Hash names")
            return document
        if query is not None and document_hash(query) in self.documents:
            return query
        raise UntrustedDocument(
            "only trusted documents are executed here: send extensions.persistedQuery.sha256Hash of a registered one"
        )
