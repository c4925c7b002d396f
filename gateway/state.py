"""What the lifespan hands every request: the app's resources, typed.

Starlette copies the mapping the lifespan yields into each request's `scope["state"]`; the faces
read it through `state_of`, never through untyped attributes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict, cast

from starlette.requests import HTTPConnection

if TYPE_CHECKING:
    from gateway.auth import Authenticator
    from gateway.device import DeviceBootstrap
    from gateway.domain import Backend
    from gateway.regeneration import RegenerationService
    from gateway.settings import Settings
    from gateway.shutdown import ShutdownSignal


class AppState(TypedDict):
    settings: Settings
    authenticator: Authenticator | None
    backend: Backend
    device: DeviceBootstrap | None
    """The device bootstrap endpoint's collaborators when the local engine serves, else None."""
    service: RegenerationService
    shutdown: ShutdownSignal
    """Raised on SIGTERM, before the drain: `/readyz` answers 503 from then on."""


def state_of(connection: HTTPConnection) -> AppState:
    return cast(AppState, connection.scope["state"])
