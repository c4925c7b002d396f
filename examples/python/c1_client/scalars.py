"""The schema's custom scalar as Python sees it: `DateTime` (ISO 8601 on the wire) as an aware
`datetime.datetime`. ariadne-codegen copies this file into the generated package."""

from __future__ import annotations

from datetime import datetime


def parse_datetime(value: str) -> datetime:
    """The gateway sends `2026-11-27T09:30:00+00:00`; `fromisoformat` reads it (and a `Z`) on 3.11."""
    return datetime.fromisoformat(value)


def serialize_datetime(value: datetime) -> str:
    return value.isoformat()
