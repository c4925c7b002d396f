"""What every resolver receives: the regeneration service (and its backend) and who is asking."""

from __future__ import annotations

from dataclasses import dataclass

from strawberry.types import Info as StrawberryInfo

from gateway.domain import Caller
from gateway.regeneration import RegenerationService
from gateway.settings import Settings


@dataclass(frozen=True)
class Context:
    service: RegenerationService
    caller: Caller
    settings: Settings


Info = StrawberryInfo[Context, None]
