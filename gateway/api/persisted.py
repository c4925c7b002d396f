"""Persisted queries: a document named by its hash, in Apollo's protocol.

A request names its document with `extensions.persistedQuery`, `{"version": 1, "sha256Hash": "<hex>"}`,
the hash being the lowercase hex SHA-256 of the document's exact text. Two features answer it:

- **Automatic persisted queries (APQ)**, `GATEWAY_APQ`: the hash alone runs a document this process
  has seen; a miss answers `PERSISTED_QUERY_NOT_FOUND`, the client sends the hash and the text
  together, and that registers it once the hash matches the text and the document is valid. The
  documents live in an LRU (`PersistedQueryCache`), one per process, bounded by count
  (`GATEWAY_APQ_CACHE_SIZE`) and by bytes (`CACHE_BYTES`); a document over `DOCUMENT_BYTES` is
  refused registration (`PERSISTED_QUERY_TOO_LARGE`).
- **Trusted documents**, `GATEWAY_TRUSTED_DOCUMENTS` (`gateway.api.guards.TrustedDocuments`): the
  hash runs a document of the list, and nothing else runs; registration is refused.

Every refusal is a `PersistedQueryRefused`: a GraphQL error with an `extensions.code` (Apollo's codes
where Apollo has one), and the HTTP status Apollo Server gives it under `application/json`. Under
`application/graphql-response+json` an answer without `data` must be 4xx, so a miss is 404 there (as
Apollo Router answers it) and "not supported" 400. The view renders it as GraphQL JSON.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.api.guards import TrustedDocuments, document_hash

CACHE_BYTES = 8 * 1024 * 1024
"""The UTF-8 bytes of document text APQ keeps per process, whatever `GATEWAY_APQ_CACHE_SIZE` allows:
without it, comment-padded documents at the body limit would take 64 MiB at the default count."""

DOCUMENT_BYTES = CACHE_BYTES // 256
"""The largest document APQ registers (32 KiB): a 256th of the budget, so one registration never
flushes the cache, and far above real documents (the gateway's own take under 1 KiB)."""


class PersistedQueryRefused(Exception):
    """The request's persisted query cannot run: `message` and `code` for the GraphQL error, `status`
    for HTTP under `application/json`, `spec_status` under `application/graphql-response+json`
    (where an answer without `data` must be 4xx; the same as `status` unless given)."""

    def __init__(self, status: int, code: str, message: str, *, spec_status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.spec_status = status if spec_status is None else spec_status
        self.code = code
        self.message = message


def not_found() -> PersistedQueryRefused:
    # 200 under application/json, as Apollo Server 4 and 5 answer it (Apollo's link retries with the
    # text on this code). Under graphql-response+json 404, as Apollo Router answers it: the link still
    # retries on the code, and its default `disable` check (400 or 500) does not switch hashing off.
    return PersistedQueryRefused(200, "PERSISTED_QUERY_NOT_FOUND", "PersistedQueryNotFound", spec_status=404)


def not_supported() -> PersistedQueryRefused:
    # 200 under application/json, as Apollo Server answers it: Apollo's link then stops hashing and
    # sends the text. Under graphql-response+json 400, which the link's `disable` check also reads.
    return PersistedQueryRefused(200, "PERSISTED_QUERY_NOT_SUPPORTED", "PersistedQueryNotSupported", spec_status=400)


def hash_mismatch() -> PersistedQueryRefused:
    # Apollo's message; a hash may never name another document's text (hash hijacking).
    return PersistedQueryRefused(400, "PERSISTED_QUERY_HASH_MISMATCH", "provided sha does not match query")


def not_in_list() -> PersistedQueryRefused:
    # The code Apollo's router gives a document that is not on its persisted query list.
    return PersistedQueryRefused(
        400,
        "PERSISTED_QUERY_NOT_IN_LIST",
        "only trusted documents run here, and this document is not one: send extensions.persistedQuery.sha256Hash "
        "of a trusted document",
    )


def too_large(size: int, limit: int) -> PersistedQueryRefused:
    # Refused rather than run unregistered: silently not keeping it would have the client miss and
    # re-register on every request. Apollo has no code for it, so the gateway names it.
    return PersistedQueryRefused(
        400,
        "PERSISTED_QUERY_TOO_LARGE",
        f"persisted queries register documents of at most {limit} bytes and this one has {size}: "
        "send it without extensions.persistedQuery",
    )


def bad_request(message: str) -> PersistedQueryRefused:
    return PersistedQueryRefused(400, "BAD_REQUEST", message)


class PersistedQueryCache:
    """Document texts by their hash, at most `size` of them and `budget` UTF-8 bytes of text, the
    least recently used dropped first; `max_document` says what `PersistedQueries` lets register."""

    def __init__(self, size: int, *, budget: int = CACHE_BYTES, max_document: int = DOCUMENT_BYTES) -> None:
        self.size = size
        self.budget = budget
        self.max_document = max_document
        self.bytes = 0
        self._texts: OrderedDict[str, str] = OrderedDict()

    def get(self, sha: str) -> str | None:
        text = self._texts.get(sha)
        if text is not None:
            self._texts.move_to_end(sha)
        return text

    def put(self, sha: str, text: str) -> None:
        if (previous := self._texts.pop(sha, None)) is not None:
            self.bytes -= _size(previous)
        self._texts[sha] = text
        self.bytes += _size(text)
        while len(self._texts) > self.size or (self.bytes > self.budget and len(self._texts) > 1):
            _, dropped = self._texts.popitem(last=False)
            self.bytes -= _size(dropped)

    def __contains__(self, sha: object) -> bool:
        return sha in self._texts

    def __len__(self) -> int:
        return len(self._texts)


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


@dataclass
class PersistedQueries:
    """Which document a request runs, given its `query` and `extensions`.

    `apq` is None when APQ is off; `valid(text)` says whether a document parses and validates (only
    a valid document is registered, as Apollo Server does).
    """

    trusted: TrustedDocuments | None
    apq: PersistedQueryCache | None
    valid: Callable[[str], bool]

    def resolve(self, query: str | None, extensions: Mapping[str, Any] | None) -> str | None:
        """The document to run (None: the request has none), or raise `PersistedQueryRefused`."""
        persisted = extensions.get("persistedQuery") if extensions else None
        if persisted is None:
            if self.trusted is not None and query is not None and document_hash(query) not in self.trusted.documents:
                raise not_in_list()
            return query
        if self.trusted is None and self.apq is None:
            raise not_supported()
        if not isinstance(persisted, dict) or persisted.get("version") != 1:
            raise bad_request("Unsupported persisted query version")
        sha = persisted.get("sha256Hash")
        if not isinstance(sha, str):
            raise bad_request("extensions.persistedQuery.sha256Hash must be a string")
        if query is None:
            return self._lookup(sha)
        if document_hash(query) != sha:
            raise hash_mismatch()
        if self.trusted is not None:
            if sha not in self.trusted.documents:
                raise not_in_list()  # no registration beside a list of trusted documents
            return query
        if self.apq is not None and self.apq.get(sha) is None:
            if (size := _size(query)) > self.apq.max_document:
                raise too_large(size, self.apq.max_document)
            if self.valid(query):
                self.apq.put(sha, query)
        return query

    def _lookup(self, sha: str) -> str:
        if self.trusted is not None:
            document = self.trusted.documents.get(sha.lower())
        else:
            document = self.apq.get(sha) if self.apq is not None else None
        if document is None:
            raise not_found()
        return document
