"""The GraphQL types: the input, the credentials, the `Error` interface and one type per cause.

Each error type is tied to its row of `gateway.domain.CAUSES` by `cause`; its code, message and
the documented prose in its description come from that row. `ERROR_TYPES` maps every
`ErrorCode` to its type, and a test checks the mapping is complete.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated, ClassVar

import strawberry

from gateway import domain
from gateway.domain import CAUSES, Credentials, InvalidInput, RateLimited, Refusal, UnrecognizedUpstream
from gateway.regeneration import DeviceRequest

# The domain's enums are the GraphQL enums: registered here, annotated by their domain names.
strawberry.enum(
    domain.StudyMode,
    name="StudyMode",
    description="The mode of a study: ACTIVE is production; TEST and TRAINING hold mock data.",
)
strawberry.enum(
    domain.ErrorCode,
    name="ErrorCode",
    description="Machine-readable code of an error result; one value per error type.",
)


@strawberry.input(description="Which device's access code to recreate.")
class RegenerateAccessCodeInput:
    study_id: str = strawberry.field(
        description="The study: a 32-character hexadecimal GUID (any case; dashes allowed)."
    )
    mode: domain.StudyMode = strawberry.field(description="The study mode the subject and device belong to.")
    subject_id: str = strawberry.field(
        description="The subject (patient): a 32-character hexadecimal GUID (any case; dashes allowed)."
    )
    inventory_id: str = strawberry.field(
        description="The device's inventory id: 1 to 64 letters, digits, '.', '_' or '-'."
    )
    m_subject_id: str = strawberry.field(
        name="mSubjectId", description="The subject's id in mHealth, for example MSUBJECT-001."
    )

    def to_request(self) -> DeviceRequest:
        return DeviceRequest(
            study_id=self.study_id,
            mode=self.mode.value,
            subject_id=self.subject_id,
            inventory_id=self.inventory_id,
            m_subject_id=self.m_subject_id,
        )


@strawberry.type(description="The device's new bootstrap credentials (the upstream's 200 response).")
class BootstrapCredentials:
    access_id: str = strawberry.field(description="The new access ID the device bootstraps with (user name).")
    otp: str = strawberry.field(
        description="The new one-time password. Shown once: the gateway never logs, caches or stores it in clear."
    )
    id: str = strawberry.field(description="The device instance id.")
    expires_at: datetime | None = strawberry.field(
        description="When the OTP stops working; null when the upstream does not say."
    )

    @classmethod
    def from_domain(cls, credentials: Credentials) -> BootstrapCredentials:
        return cls(
            access_id=credentials.access_id,
            otp=credentials.otp,
            id=credentials.device_id,
            expires_at=credentials.expires_at,
        )


@strawberry.interface(description="What every error result has: a code to branch on and a message to show.")
class Error:
    code: domain.ErrorCode = strawberry.field(description="The error's code; one value per error type.")
    message: str = strawberry.field(description="Human-readable text: the documented prose of the cause.")

    cause: ClassVar[domain.ErrorCode]


def _describe(code: domain.ErrorCode, meaning: str) -> str:
    cause = CAUSES[code]
    if cause.documented:
        return f'HTTP {cause.http_status} "{cause.message}" from the service: {meaning}'
    return f"Added by the gateway: {meaning}"


@strawberry.type(
    description=_describe(
        domain.ErrorCode.INVALID_SUBJECT,
        "the subject is unknown in the study and mode, or mSubjectId is not that subject's.",
    )
)
class InvalidSubjectError(Error):
    cause = domain.ErrorCode.INVALID_SUBJECT


@strawberry.type(
    description=_describe(domain.ErrorCode.DEVICE_NOT_DISPENSED, "the device is not dispensed to any subject.")
)
class DeviceNotDispensedError(Error):
    cause = domain.ErrorCode.DEVICE_NOT_DISPENSED


@strawberry.type(
    description=_describe(
        domain.ErrorCode.DEVICE_DISPENSED_TO_ANOTHER_SUBJECT, "the device belongs to another subject."
    )
)
class DeviceDispensedToAnotherSubjectError(Error):
    cause = domain.ErrorCode.DEVICE_DISPENSED_TO_ANOTHER_SUBJECT


@strawberry.type(
    description=_describe(domain.ErrorCode.INVALID_DEVICE, "no device with this inventory id in the study and mode.")
)
class InvalidDeviceError(Error):
    cause = domain.ErrorCode.INVALID_DEVICE


@strawberry.type(
    description=_describe(domain.ErrorCode.DEVICE_NOT_REGISTERED, "the device is not registered with mHealth.")
)
class DeviceNotRegisteredError(Error):
    cause = domain.ErrorCode.DEVICE_NOT_REGISTERED


@strawberry.type(
    description=_describe(domain.ErrorCode.MISSING_CONNECTION_TYPE, "the device's kit defines no connection type.")
)
class MissingConnectionTypeError(Error):
    cause = domain.ErrorCode.MISSING_CONNECTION_TYPE


@strawberry.type(
    description=_describe(domain.ErrorCode.MISSING_VENDOR_CODE, "a cloud-to-cloud device has no vendor code.")
)
class MissingVendorCodeError(Error):
    cause = domain.ErrorCode.MISSING_VENDOR_CODE


@strawberry.type(
    description=_describe(domain.ErrorCode.NO_CONNECTION_DEVICE, "the device never connects, so it has no credentials.")
)
class NoConnectionDeviceError(Error):
    cause = domain.ErrorCode.NO_CONNECTION_DEVICE


@strawberry.type(
    description=_describe(domain.ErrorCode.STUDY_NOT_FOUND, "the study is unknown, or not available in this mode.")
)
class StudyNotFoundError(Error):
    cause = domain.ErrorCode.STUDY_NOT_FOUND


@strawberry.type(
    description=_describe(
        domain.ErrorCode.MHEALTH_SETTINGS_NOT_FOUND, "the study's mHealth connection is not configured for this mode."
    )
)
class MHealthSettingsNotFoundError(Error):
    cause = domain.ErrorCode.MHEALTH_SETTINGS_NOT_FOUND


@strawberry.type(
    description=_describe(
        domain.ErrorCode.INTERNAL_SERVER_ERROR,
        "the service failed; nothing was changed that the caller can rely on. Retrying later may work.",
    )
)
class InternalServerError(Error):
    cause = domain.ErrorCode.INTERNAL_SERVER_ERROR


@strawberry.type(description=_describe(domain.ErrorCode.INVALID_INPUT, "a malformed argument; nothing was sent on."))
class InvalidInputError(Error):
    cause = domain.ErrorCode.INVALID_INPUT
    field: str = strawberry.field(description="The input field at fault, as named in the schema (e.g. studyId).")


@strawberry.type(
    description=_describe(
        domain.ErrorCode.PERMISSION_DENIED, "the caller lacks DeviceActionsPost for this study and mode."
    )
)
class PermissionDeniedError(Error):
    cause = domain.ErrorCode.PERMISSION_DENIED


@strawberry.type(
    description=_describe(domain.ErrorCode.RATE_LIMITED, "too many regenerations; try again after retryAfterSeconds.")
)
class RateLimitedError(Error):
    cause = domain.ErrorCode.RATE_LIMITED
    retry_after_seconds: int = strawberry.field(description="Seconds to wait before trying again.")


@strawberry.type(
    description=_describe(
        domain.ErrorCode.UPSTREAM_UNAVAILABLE,
        "the upstream was unreachable, timed out, answered 502/503/504 or sent an unreadable body. "
        "The request may or may not have reached it; it was not resent.",
    )
)
class UpstreamUnavailableError(Error):
    cause = domain.ErrorCode.UPSTREAM_UNAVAILABLE


@strawberry.type(
    description=_describe(
        domain.ErrorCode.UNRECOGNIZED_UPSTREAM_ERROR, "the upstream answered with an error no other member matches."
    )
)
class UnrecognizedUpstreamError(Error):
    cause = domain.ErrorCode.UNRECOGNIZED_UPSTREAM_ERROR
    upstream_status: int = strawberry.field(description="The upstream's HTTP status.")
    upstream_code: str | None = strawberry.field(description="The upstream's errorCode, when it sent one.")


RegenerateAccessCodeResult = Annotated[
    BootstrapCredentials
    | InvalidSubjectError
    | DeviceNotDispensedError
    | DeviceDispensedToAnotherSubjectError
    | InvalidDeviceError
    | DeviceNotRegisteredError
    | MissingConnectionTypeError
    | MissingVendorCodeError
    | NoConnectionDeviceError
    | StudyNotFoundError
    | MHealthSettingsNotFoundError
    | InternalServerError
    | InvalidInputError
    | PermissionDeniedError
    | RateLimitedError
    | UpstreamUnavailableError
    | UnrecognizedUpstreamError,
    strawberry.union(
        "RegenerateAccessCodeResult",
        description="The new credentials, or the one error that prevented them. Branch on __typename.",
    ),
]

ERROR_TYPES: dict[domain.ErrorCode, type[Error]] = {
    cls.cause: cls
    for cls in (
        InvalidSubjectError,
        DeviceNotDispensedError,
        DeviceDispensedToAnotherSubjectError,
        InvalidDeviceError,
        DeviceNotRegisteredError,
        MissingConnectionTypeError,
        MissingVendorCodeError,
        NoConnectionDeviceError,
        StudyNotFoundError,
        MHealthSettingsNotFoundError,
        InternalServerError,
        InvalidInputError,
        PermissionDeniedError,
        RateLimitedError,
        UpstreamUnavailableError,
        UnrecognizedUpstreamError,
    )
}


def render_refusal(refusal: Refusal) -> Error:
    """The union member for a refusal: by its type where it carries facts, by its cause otherwise."""
    code, message = refusal.code, refusal.message
    match refusal:
        case InvalidInput(field=field):
            return InvalidInputError(code=code, message=message, field=field)
        case RateLimited(retry_after_seconds=seconds):
            return RateLimitedError(code=code, message=message, retry_after_seconds=seconds)
        case UnrecognizedUpstream(upstream_status=status, upstream_code=upstream_code):
            return UnrecognizedUpstreamError(
                code=code, message=message, upstream_status=status, upstream_code=upstream_code
            )
    return ERROR_TYPES[code](code=code, message=message)


@strawberry.enum(description="The backends a gateway can run on.")
class BackendKind(enum.Enum):
    LOCAL = strawberry.enum_value("local", description="The gateway's own credential engine and store.")
    UPSTREAM = strawberry.enum_value("upstream", description="The Clinical One REST endpoint, called over HTTP.")


@strawberry.type(description="Facts about this gateway that clients use to adapt.")
class GatewayInfo:
    version: str = strawberry.field(description="The gateway's version.")
    backend: BackendKind = strawberry.field(description="Which backend serves regenerateAccessCode.")
    otp_lifetime_seconds: int | None = strawberry.field(
        description="How long a new OTP works, when this gateway decides it (local backend); null otherwise."
    )
