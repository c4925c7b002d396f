"""Logging: the format (`GATEWAY_LOG_FORMAT`), the request id on every record, the access line.

- `RequestLog`: what the access line of one request reports. The request-id middleware
  (`gateway.http`) opens one per request in a context variable; the GraphQL resolver notes the
  union member's `__typename`, the upstream client's response hook the upstream status.
- `RequestIdFilter`: copies the current request's id onto every record (`record.request_id`),
  whichever logger made it; nobody passes the id by hand.
- `JsonFormatter`: one JSON object a line, with the record's `extra` fields.
- `configure(settings)`: the root handler on stderr, the gateway's level, libraries from INFO up,
  httpx's request lines (the full upstream URL, subject ids in it) off, uvicorn's access log off
  (the gateway writes its own).
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from gateway.settings import Settings

ACCESS_LOGGER = "gateway.access"


@dataclass
class RequestLog:
    """The access line of one request, filled in as the request goes (a mutable holder: code that
    runs in a copied context still reaches the same one)."""

    request_id: str
    outcome: str | None = None
    upstream_status: int | None = None


current: ContextVar[RequestLog | None] = ContextVar("gateway_request_log", default=None)


def note_outcome(member: object) -> None:
    """The request's outcome for the access line: the GraphQL union member's `__typename` (its
    Strawberry definition's name, else its class's)."""
    entry = current.get()
    if entry is not None:
        definition = getattr(type(member), "__strawberry_definition__", None)
        entry.outcome = definition.name if definition is not None else type(member).__name__


async def note_upstream_response(response: httpx.Response) -> None:
    """httpx response hook: the upstream status for the access line."""
    entry = current.get()
    if entry is not None:
        entry.upstream_status = response.status_code


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (`-` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        entry = current.get()
        record.request_id = entry.request_id if entry is not None else "-"
        return True


# What every LogRecord has: anything else on a record came from `extra=` and goes into the JSON.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request id, `extra` fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        line.update({key: value for key, value in vars(record).items() if key not in _STANDARD and key not in line})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"


def log_format(settings: Settings) -> Literal["json", "text"]:
    """`GATEWAY_LOG_FORMAT`; unset (`auto`): text when stderr is a terminal, JSON otherwise."""
    if settings.log_format != "auto":
        return settings.log_format
    return "text" if sys.stderr.isatty() else "json"


def configure(settings: Settings) -> None:
    """GATEWAY_LOG_LEVEL sets the gateway's own loggers; libraries log from INFO up (aiosqlite's DEBUG
    lines, one per database call, would drown everything else). One handler on stderr, the root's."""
    level = logging.getLevelName(settings.log_level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if log_format(settings) == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "gateway", False)]:
        root.removeHandler(old)
    handler.gateway = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(max(level, logging.INFO))
    logging.getLogger("gateway").setLevel(level)
    # httpx logs every request at INFO with its full URL: the upstream's carries subject ids.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # uvicorn's own access log is replaced by the gateway's (`gateway.http.RequestIdMiddleware`).
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True
