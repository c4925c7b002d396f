"""The gateway's vocabulary: value types, the one table of causes, the refusals and the `Backend` seam.

Every face reads from here. The GraphQL union members, the REST face's error bodies and the
upstream client's recognition of error responses all come from `CAUSES`; nothing else spells
out a cause's status, prose or code.

Every exception class of the gateway, with the module it lives in. A `Refusal` is an answer,
which every face renders by its type (a union member, an `ORSResponse`); each of the others is
turned into its HTTP answer or its message at the one edge that raises it.

    Exception
    ├── Refusal                     domain          a cause as it is: the rule book's, PERMISSION_DENIED,
    │   │                                           INTERNAL_SERVER_ERROR, or UPSTREAM_UNAVAILABLE that spares
    │   │                                           the breaker (it is open, or the queue is full)
    │   ├── InvalidInput            domain          INVALID_INPUT (field, message)
    │   ├── RateLimited             domain          RATE_LIMITED (retry_after_seconds)
    │   ├── UnrecognizedUpstream    domain          UNRECOGNIZED_UPSTREAM_ERROR (upstream_status, upstream_code)
    │   └── UpstreamFailure         domain          UPSTREAM_UNAVAILABLE that counts against the breaker (reason)
    ├── starlette.authentication.AuthenticationError
    │   └── AuthenticationError     auth.errors     401 with a WWW-Authenticate challenge
    │       ├── MissingToken        auth.errors     no Authorization header
    │       ├── InvalidToken        auth.errors     malformed, forged, expired or meant for another
    │       └── KeysUnavailable     auth.errors     503: the JWKS could not be fetched
    ├── BodyTooLarge                http            413: a request body past the limit
    ├── UntrustedDocument           api.guards      a GraphQL document outside the trusted set
    ├── ValueError
    │   ├── SettingsError           settings        a GATEWAY_* variable the gateway cannot use
    │   └── RegistryError           engine.registry a registry file that breaks a rule
    └── aiohttp.ClientError
        └── _MayHaveBeenSent        upstream.transport  a connection lost once the request may have gone out
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The wall clock, in UTC: the default `Clock` everywhere."""
    return datetime.now(UTC)


class StudyMode(enum.Enum):
    """A study's mode; the value is the upstream's path segment."""

    ACTIVE = "active"
    TEST = "test"
    TRAINING = "training"


class ErrorCode(enum.Enum):
    """One value per error type of the `RegenerateAccessCodeResult` union."""

    INVALID_SUBJECT = "INVALID_SUBJECT"
    DEVICE_NOT_DISPENSED = "DEVICE_NOT_DISPENSED"
    DEVICE_DISPENSED_TO_ANOTHER_SUBJECT = "DEVICE_DISPENSED_TO_ANOTHER_SUBJECT"
    INVALID_DEVICE = "INVALID_DEVICE"
    DEVICE_NOT_REGISTERED = "DEVICE_NOT_REGISTERED"
    MISSING_CONNECTION_TYPE = "MISSING_CONNECTION_TYPE"
    MISSING_VENDOR_CODE = "MISSING_VENDOR_CODE"
    NO_CONNECTION_DEVICE = "NO_CONNECTION_DEVICE"
    STUDY_NOT_FOUND = "STUDY_NOT_FOUND"
    MHEALTH_SETTINGS_NOT_FOUND = "MHEALTH_SETTINGS_NOT_FOUND"
    INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"
    INVALID_INPUT = "INVALID_INPUT"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RATE_LIMITED = "RATE_LIMITED"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    UNRECOGNIZED_UPSTREAM_ERROR = "UNRECOGNIZED_UPSTREAM_ERROR"


@dataclass(frozen=True)
class Cause:
    """Why a regeneration was refused, as every face describes it."""

    code: ErrorCode
    http_status: int
    message: str
    """The documented prose: the upstream's errorMessage and the GraphQL `message`."""
    rest_code: str
    """The `errorData.errorCode` the REST face answers with (published in the README)."""
    documented: bool
    """True for the upstream's own causes; False for the ones the gateway adds."""


def _causes(*causes: Cause) -> Mapping[ErrorCode, Cause]:
    return {cause.code: cause for cause in causes}


# The one table. Order: the upstream's documented 400s, its 404, its 500s, then the gateway's own.
CAUSES: Mapping[ErrorCode, Cause] = _causes(
    Cause(ErrorCode.INVALID_SUBJECT, 400, "Invalid subject ID", "C1-DEV-4001", True),
    Cause(ErrorCode.DEVICE_NOT_DISPENSED, 400, "Device is not dispensed to the subject", "C1-DEV-4002", True),
    Cause(
        ErrorCode.DEVICE_DISPENSED_TO_ANOTHER_SUBJECT,
        400,
        "Device is dispensed to a different subject",
        "C1-DEV-4003",
        True,
    ),
    Cause(ErrorCode.INVALID_DEVICE, 400, "Invalid device ID", "C1-DEV-4004", True),
    Cause(ErrorCode.DEVICE_NOT_REGISTERED, 400, "mHealth device is not registered", "C1-DEV-4005", True),
    Cause(ErrorCode.MISSING_CONNECTION_TYPE, 400, "Device does not have any connection type", "C1-DEV-4006", True),
    Cause(
        ErrorCode.MISSING_VENDOR_CODE,
        400,
        "Vendor code is missing for cloud-to-cloud connection type devices",
        "C1-DEV-4007",
        True,
    ),
    Cause(ErrorCode.NO_CONNECTION_DEVICE, 400, "Device has a no-connection connection type", "C1-DEV-4008", True),
    Cause(ErrorCode.STUDY_NOT_FOUND, 404, "Invalid study ID or version", "C1-DEV-4041", True),
    Cause(ErrorCode.MHEALTH_SETTINGS_NOT_FOUND, 500, "mHealth settings are not found", "C1-DEV-5001", True),
    Cause(ErrorCode.INTERNAL_SERVER_ERROR, 500, "Internal server error", "C1-DEV-5000", True),
    Cause(ErrorCode.INVALID_INPUT, 400, "Invalid input", "C1-GW-4000", False),
    Cause(ErrorCode.PERMISSION_DENIED, 403, "Permission denied", "C1-GW-4030", False),
    Cause(ErrorCode.RATE_LIMITED, 429, "Too many requests", "C1-GW-4290", False),
    Cause(ErrorCode.UPSTREAM_UNAVAILABLE, 503, "Upstream service unavailable", "C1-GW-5030", False),
    Cause(ErrorCode.UNRECOGNIZED_UPSTREAM_ERROR, 502, "Unrecognized upstream error", "C1-GW-5020", False),
)


_CARRY_FACTS = frozenset({ErrorCode.INVALID_INPUT, ErrorCode.RATE_LIMITED, ErrorCode.UNRECOGNIZED_UPSTREAM_ERROR})
"""The causes a face cannot render without their facts: raised only as their own subclass."""


class Refusal(Exception):
    """A backend's (or the service's) expected "no": one cause of `CAUSES`, which every face renders.

    `message` defaults to the cause's documented prose; it never holds a secret or echoes input.
    A cause that needs facts to be rendered is raised as its subclass, which requires them.
    """

    def __init__(self, code: ErrorCode, message: str | None = None) -> None:
        if type(self) is Refusal and code in _CARRY_FACTS:
            raise TypeError(f"{code.value} is raised as its Refusal subclass, with the facts it carries")
        self.cause = CAUSES[code]
        self.message = message or self.cause.message
        super().__init__(f"{code.value}: {self.message}")

    @property
    def code(self) -> ErrorCode:
        return self.cause.code


class InvalidInput(Refusal):
    """Malformed input, refused before any backend sees it; names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(ErrorCode.INVALID_INPUT, f"{field}: {message}")
        self.field = field
        """The input field at fault, as the caller named it (`studyId`, …)."""


class RateLimited(Refusal):
    """Too many attempts: here (a rate limit of the service) or upstream (its 429)."""

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(ErrorCode.RATE_LIMITED)
        self.retry_after_seconds = retry_after_seconds
        """When to come back, in whole seconds (0: now, as an upstream may say)."""


class UnrecognizedUpstream(Refusal):
    """The upstream answered with an error no documented cause matches: its status and code go to the caller."""

    def __init__(self, upstream_status: int, upstream_code: str | None) -> None:
        super().__init__(ErrorCode.UNRECOGNIZED_UPSTREAM_ERROR)
        self.upstream_status = upstream_status
        self.upstream_code = upstream_code
        """The upstream's errorCode when it was code-shaped: never a stray piece of body."""


class UpstreamFailure(Refusal):
    """The upstream gave no usable answer: unreachable, timed out, 502/503/504 or an unreadable body.

    Rendered like any `UPSTREAM_UNAVAILABLE`; unlike the answers the upstream meant (a 400, a 429)
    and the refusals that spare it (an open breaker, a full queue), it counts against the circuit
    breaker. `reason` is for logs: a fixed phrase, never a body, a token or an OTP.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(ErrorCode.UPSTREAM_UNAVAILABLE)
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# Input parsing: every id is checked and normalised here, once, for every face.

_GUID = re.compile(r"[0-9A-Fa-f]{32}|[0-9A-Fa-f]{8}(?:-[0-9A-Fa-f]{4}){3}-[0-9A-Fa-f]{12}")
# Free-form ids (inventory, mHealth subject): letters, digits and . _ - only, so that no value can
# reach outside its path segment or query parameter; a leading dot and ".." are refused too.
_TOKEN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
MAX_ID_LENGTH = 64


def parse_guid(value: str, field: str) -> str:
    """A 32-character hexadecimal GUID in canonical form: upper case, no dashes."""
    if len(value) > 36 or not _GUID.fullmatch(value):
        raise InvalidInput(field, "must be a 32-character hexadecimal GUID (dashes allowed)")
    return value.replace("-", "").upper()


def parse_token(value: str, field: str) -> str:
    """A free-form id: 1 to 64 of A-Z a-z 0-9 . _ -, no leading dot and no '..'.

    Values shaped like a GUID are normalised like one, so that case and dashes never split a device.
    """
    if not value:
        raise InvalidInput(field, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(field, f"must be at most {MAX_ID_LENGTH} characters")
    if not _TOKEN.fullmatch(value) or ".." in value:
        raise InvalidInput(field, "may hold only letters, digits, '.', '_' and '-', with no leading dot or '..'")
    if _GUID.fullmatch(value):
        return value.replace("-", "").upper()
    return value


ANY = "*"
"""A grant's wildcard: every study, or every mode."""


def parse_study_grant(value: str, field: str) -> str:
    """The study a right is granted for: a GUID (normalised) or `*`; raises `InvalidInput`."""
    return value if value == ANY else parse_guid(value, field)


def parse_mode_grant(value: str, field: str) -> str:
    """The mode a right is granted in: `active`, `test`, `training` (any case) or `*`; raises `InvalidInput`."""
    return value if value == ANY else parse_mode(value, field).value


def parse_mode(value: str, field: str = "mode") -> StudyMode:
    """The path segment `active`, `test` or `training` (any case)."""
    try:
        return StudyMode(value.lower())
    except ValueError:
        raise InvalidInput(field, "must be one of active, test, training") from None


@dataclass(frozen=True)
class DeviceRef:
    """Which device of which subject, in which study and mode: validated and normalised."""

    study_id: str
    mode: StudyMode
    subject_id: str
    inventory_id: str
    m_subject_id: str

    @classmethod
    def parse(
        cls, *, study_id: str, mode: StudyMode, subject_id: str, inventory_id: str, m_subject_id: str
    ) -> DeviceRef:
        """Check every field (raising `InvalidInput` naming the first bad one) and normalise GUIDs.

        Field names are the public ones (`studyId`, …) so that the error names what the caller sent.
        """
        return cls(
            study_id=parse_guid(study_id, "studyId"),
            mode=mode,
            subject_id=parse_guid(subject_id, "subjectId"),
            inventory_id=parse_token(inventory_id, "inventoryId"),
            m_subject_id=parse_token(m_subject_id, "mSubjectId"),
        )


@dataclass(frozen=True)
class Credentials:
    """A bootstrap device's new access ID and one-time password. The OTP is kept out of `repr`."""

    access_id: str
    otp: str = field(repr=False)
    device_id: str
    """The device instance id."""
    expires_at: datetime | None
    """When the OTP stops working; None when the upstream does not say."""


DEVICE_ACTIONS_POST = "DeviceActionsPost"
"""The right the access-code PUT needs, granted per study and mode."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the token's subject, client and rights.

    `rights` is the token's `rights` claim: `{"<STUDYID or *>": {"<mode or *>": ["DeviceActionsPost", ...]}}`.
    """

    subject: str
    client_id: str | None = None
    rights: Mapping[str, Mapping[str, frozenset[str]]] = field(default_factory=dict)

    def may(self, right: str, study_id: str, mode: StudyMode) -> bool:
        """True when `right` is granted for this study (or `*`) in this mode (or `*`)."""
        for study in (study_id, ANY):
            modes = self.rights.get(study, {})
            for mode_key in (mode.value, ANY):
                if right in modes.get(mode_key, frozenset()):
                    return True
        return False


@dataclass(frozen=True)
class Caller:
    """Who is asking, as far as the faces know: passed through to the backend.

    `principal` is None only when authentication is switched off (an insecure development setting).
    """

    request_id: str
    authorization: str | None = field(default=None, repr=False)
    principal: Principal | None = None


Change = Callable[[Any], T]
"""A backend's writes, run inside the attempt's unit of work (a function of `gateway.store.UnitOfWork`)."""


class Attempt(Protocol):
    """One regeneration attempt's unit of work, handed by the service to the backend, which
    makes it durable once, before anything it does becomes visible:

    - `commit(change)` (the local engine): the attempt's rate-limit counts, the change and the
      attempt's audit row commit in one transaction, or none of them does; a `Refusal` the change
      raises (before it writes) commits the counts and the refusal's audit row;
    - `begin()` (a backend that asks elsewhere, before its call): the counts and an audit row
      saying the call is under way are durable first; the outcome row follows when it ends.

    Both raise `RateLimited` (committed too, counting nothing) when the attempt is over a limit.
    `screen(change)` is for a backend about to do costly work before its unit of work (the engine's
    KDF hash): a unit of its own that refuses the attempt over a limit, or when `change` raises a
    `Refusal`, as `commit` would, and otherwise writes and counts nothing.
    """

    async def screen(self, change: Change[None]) -> None:
        """Refuse now, as `commit` would, an attempt over a limit or one `change` refuses (raising
        `Refusal`, before it writes); otherwise commit nothing and count nothing."""

    async def commit(self, change: Change[T]) -> T:
        """Run `change` in the attempt's unit of work and commit it; return what it returned."""

    async def begin(self) -> None:
        """Commit the attempt as under way, before a call whose outcome is recorded after it."""


@dataclass(frozen=True)
class Readiness:
    """Whether a backend can serve a regeneration now, and what it says about itself (for `/readyz`)."""

    ready: bool
    details: Mapping[str, object] = field(default_factory=dict)


class Backend(Protocol):
    """The one seam: the local credential engine and the upstream client both implement it."""

    name: str
    """`local` or `upstream`."""

    async def readiness(self) -> Readiness:
        """Can this backend serve now (the store answers; the upstream's breaker is not open)?"""
        ...

    async def regenerate(self, ref: DeviceRef, caller: Caller, attempt: Attempt) -> Credentials:
        """New credentials for the device, or raise `Refusal`; `attempt.commit` is called before
        any change is made."""
        ...
