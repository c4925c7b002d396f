"""Who is asking: the `Caller` of an HTTP request, built the same way for every face."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from gateway.auth import principal_of
from gateway.domain import Caller


def caller_of(connection: HTTPConnection) -> Caller:
    """The request's id (set by the request-id middleware), its Authorization header (forwarded
    upstream in forward mode) and the principal on `request.user` (None when authentication is off)."""
    return Caller(
        request_id=connection.state.request_id,
        authorization=connection.headers.get("authorization"),
        principal=principal_of(connection),
    )
