"""`/healthz` (liveness) and `/readyz` (readiness): what an orchestrator asks of the gateway."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway import __version__
from gateway.state import state_of


async def healthz(request: Request) -> JSONResponse:
    """Liveness: the process answers. Reports the version and the backend."""
    backend = state_of(request)["backend"]
    return JSONResponse({"status": "ok", "version": __version__, "backend": backend.name})


async def readyz(request: Request) -> JSONResponse:
    """Readiness: can this instance serve a regeneration now? 200 when it can, 503 when it cannot,
    with what the backend reports (`Backend.readiness`: the store, or the breaker and the queue).
    From SIGTERM on, 503 with `"shutting_down": true`: the drain has begun, send nothing new here."""
    state = state_of(request)
    backend = state["backend"]
    if state["shutdown"].started:
        return JSONResponse(
            {"status": "unavailable", "backend": backend.name, "shutting_down": True},
            status_code=503,
            headers={"Cache-Control": "no-store"},
        )
    readiness = await backend.readiness()
    return JSONResponse(
        {"status": "ready" if readiness.ready else "unavailable", "backend": backend.name, **readiness.details},
        status_code=200 if readiness.ready else 503,
        headers={"Cache-Control": "no-store"},
    )


routes = [Route("/healthz", healthz, methods=["GET"]), Route("/readyz", readyz, methods=["GET"])]
