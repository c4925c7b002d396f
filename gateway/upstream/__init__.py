"""Upstream mode: the `Backend` that serves regenerations by calling Clinical One's REST endpoint.

- client.py:     `UpstreamClient` (the Backend) and the pooled httpx client it sends with.
- answers.py:    what an upstream answer means (read through `gateway.contract`), recognised from
                 `gateway.domain.CAUSES` alone.
- credentials.py: the Authorization header, an httpx.Auth per call: the caller's, forwarded, or a
                  service account's token.
- resilience.py: connect-only retries, the concurrency limit and the circuit breaker.
"""

from gateway.upstream.client import UpstreamClient, upstream_http_client

__all__ = ["UpstreamClient", "upstream_http_client"]
