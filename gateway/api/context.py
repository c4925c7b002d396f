"""What every resolver receives: the backend that serves and who is asking."""

from __future__ import annotations

from dataclasses import dataclass

from strawberry.types import Info as StrawberryInfo

from gateway.domain import Backend, Caller
from gateway.settings import Settings


@dataclass(frozen=True)
class Context:
    backend: Backend
    caller: Caller
    settings: Settings


Info = StrawberryInfo[Context, None]
