"""What an upstream answer means: a 2xx becomes `Credentials`, anything else a `Refusal`.

The status decides where it can (401/403, 404, 429, 502/503/504). Other bodies are read through
`gateway.contract` (the `ORSResponse` envelope, the success DTO) and an error's cause is recognised
from `gateway.domain.CAUSES`, the only description of the causes: by the row's `rest_code` when
the upstream sends a code we know, otherwise by the row's documented prose found anywhere in
`errorMessage` or `details` (case, punctuation and surrounding words do not matter). What matches
no row is `UnrecognizedUpstream`, carrying the upstream's status and code; what cannot be read is
an `UpstreamFailure`. Nothing of a body (and so no OTP) is copied into a message.
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from gateway import contract
from gateway.domain import (
    CAUSES,
    Cause,
    Credentials,
    ErrorCode,
    RateLimited,
    Refusal,
    UnrecognizedUpstream,
    UpstreamFailure,
)

MAX_BODY_BYTES = 1 << 20
"""A larger answer is not an access-code response; it is refused unread rather than buffered."""
DEFAULT_RETRY_AFTER_SECONDS = 1
"""A 429 that says nothing usable about when to come back."""
MAX_RETRY_AFTER_SECONDS = 24 * 60 * 60
_SAFE_CODE = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@dataclass(frozen=True)
class Answer:
    """An upstream HTTP response, read whole (status, headers, body)."""

    status: int
    headers: Mapping[str, str]
    body: bytes = field(repr=False)


# --------------------------------------------------------------------------------------------
# Recognition, derived from the cause table: only the upstream's own (documented) causes.

_UPSTREAM_CAUSES = tuple(cause for cause in CAUSES.values() if cause.documented)
_BY_CODE = {cause.rest_code.casefold(): cause for cause in _UPSTREAM_CAUSES}


def _words(text: str) -> tuple[str, ...]:
    return tuple(re.findall(r"[0-9a-z]+", text.casefold()))


# Longest prose first, so "Internal server error: mHealth settings are not found" is the specific cause.
_BY_PROSE = sorted(((_words(cause.message), cause) for cause in _UPSTREAM_CAUSES), key=lambda pair: -len(pair[0]))


def _contains(words: tuple[str, ...], phrase: tuple[str, ...]) -> bool:
    return any(words[i : i + len(phrase)] == phrase for i in range(len(words) - len(phrase) + 1))


def recognise(status: int, code: str | None, texts: Sequence[str]) -> Cause | None:
    """The documented cause an error means, or None.

    Only causes documented with this HTTP status are candidates (a 200 whose envelope says failure
    may be any of them): a known code under the wrong status is a different, unknown error.
    """
    candidates = [cause for cause in _UPSTREAM_CAUSES if status in (200, cause.http_status)]
    if code is not None:
        known = _BY_CODE.get(code.strip().casefold())
        if known in candidates:
            return known
    for text in texts:
        words = _words(text)
        for phrase, cause in _BY_PROSE:
            if cause in candidates and _contains(words, phrase):
                return cause
    return None


# --------------------------------------------------------------------------------------------
# Reading an answer.


def read_answer(answer: Answer, *, now: datetime) -> Credentials:
    """New credentials from a 2xx answer, or raise the `Refusal` the answer means."""
    status = answer.status
    if status in (401, 403):
        raise Refusal(ErrorCode.PERMISSION_DENIED)
    if status == 404:
        raise Refusal(ErrorCode.STUDY_NOT_FOUND)
    if status == 429:
        raise RateLimited(_retry_after(answer, now))
    if status in (502, 503, 504):
        raise UpstreamFailure(f"HTTP {status}")
    if 300 <= status < 400:
        # A redirect (often with no body): the upstream answered, with something no member means.
        raise UnrecognizedUpstream(status, None)
    try:
        document = contract.decode(answer.body)
    except ValueError:
        # Not JSON, or cut short: an HTML error page, a proxy's text, a connection closed mid-body.
        raise UpstreamFailure(f"HTTP {status} with a body that is not JSON") from None
    if not 200 <= status < 300:
        raise _error(status, contract.read_error(document))
    if not isinstance(document, dict):
        raise UpstreamFailure(f"HTTP {status} with a body that is not an object")
    dto = contract.read_success(document)
    if isinstance(dto, contract.ErrorReading):
        raise _error(status, dto)
    missing = [name for name, value in dto.items() if not value]
    if missing:
        # Possibly a pair was made upstream, but we cannot hand it on: an upstream fault, never a success.
        raise UpstreamFailure(f"HTTP {status} success body without {', '.join(missing)}")
    return Credentials(
        access_id=dto["accessId"],
        otp=dto["otp"],
        device_id=dto["id"],
        expires_at=None,  # the upstream does not say
    )


def _error(status: int, error: contract.ErrorReading) -> Refusal:
    code = error.code.strip() if error.code is not None else None
    cause = recognise(status, code, error.texts)
    if cause is not None:
        return Refusal(cause.code)
    # Carried to the client, so only a code-shaped value: never a stray piece of body.
    return UnrecognizedUpstream(status, code if code is not None and _SAFE_CODE.fullmatch(code) else None)


def _retry_after(answer: Answer, now: datetime) -> int:
    """Seconds from `Retry-After` (delta-seconds or an HTTP date), else from the body's `details`, else a default.

    The body is decoded here only, and only when the header says nothing usable.
    """
    seconds = parse_retry_after(answer.headers.get("retry-after"), now)
    if seconds is None:
        try:
            seconds = contract.read_error(contract.decode(answer.body)).retry_after_seconds
        except ValueError:
            seconds = None
    return DEFAULT_RETRY_AFTER_SECONDS if seconds is None else min(seconds, MAX_RETRY_AFTER_SECONDS)


def parse_retry_after(value: str | None, now: datetime) -> int | None:
    """RFC 9110 `Retry-After`: whole seconds, or an HTTP date (seconds from `now`, rounded up)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(int(value), MAX_RETRY_AFTER_SECONDS)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(math.ceil((when - now).total_seconds()), 0), MAX_RETRY_AFTER_SECONDS)
