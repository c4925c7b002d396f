"""GraphQL over HTTP: the media type a GraphQL response is sent as, chosen from the request's Accept.

The GraphQL-over-HTTP spec's `application/graphql-response+json` when the client prefers it, else
`application/json`, as every GraphQL client understands:

- no Accept header, `*/*` or `application/*`: `application/json` (the spec's rule for clients that
  predate its media type);
- the higher q-value wins (`application/graphql-response+json, application/json;q=0.9`, what Apollo
  Client 4 sends, gets the former); at equal preference `application/json`;
- a header that accepts neither (`text/html`, `application/xml`, both with `q=0`): None, which the
  view answers with 406 Not Acceptable, as the spec recommends.

python-mimeparse reads the header (q-values, wildcards, parameters); the choice for each distinct
header is remembered, so a request pays for a dictionary lookup.
"""

from __future__ import annotations

from functools import lru_cache

import mimeparse  # type: ignore[import-untyped]  # one module without annotations

GRAPHQL_RESPONSE_JSON = "application/graphql-response+json"
JSON = "application/json"

_SUPPORTED = (GRAPHQL_RESPONSE_JSON, JSON)
"""In this order, mimeparse's tie-break (the last one wins) chooses `application/json` at equal preference."""
_USUAL = frozenset({"*/*", JSON})


CACHED_HEADER_CHARACTERS = 256
"""Longer headers are read each time, never remembered: the memory stays bounded whatever callers send."""


@lru_cache(maxsize=256)
def _remembered(accept: str) -> str | None:
    return _best(accept)


def _best(accept: str) -> str | None:
    try:
        chosen: str = mimeparse.best_match(_SUPPORTED, accept)
    except mimeparse.MimeTypeParseException:
        return JSON  # a header that cannot be read is treated as none at all, as before this rule
    return chosen or None


def response_media_type(accept: str | None) -> str | None:
    """The media type of the response to a request with this Accept header; None: not acceptable."""
    if not accept or accept in _USUAL:  # the usual headers, without a lookup
        return JSON
    return _remembered(accept) if len(accept) <= CACHED_HEADER_CHARACTERS else _best(accept)
