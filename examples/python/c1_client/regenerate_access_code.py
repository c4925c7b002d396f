from datetime import datetime
from typing import Annotated, Literal, Optional, Union

from pydantic import BeforeValidator, Field

from .base_model import BaseModel
from .enums import ErrorCode
from .scalars import parse_datetime


class RegenerateAccessCode(BaseModel):
    regenerate_access_code: Union[
        "RegenerateAccessCodeRegenerateAccessCodeBootstrapCredentials",
        "RegenerateAccessCodeRegenerateAccessCodeInvalidSubjectError",
        "RegenerateAccessCodeRegenerateAccessCodeDeviceNotDispensedError",
        "RegenerateAccessCodeRegenerateAccessCodeDeviceDispensedToAnotherSubjectError",
        "RegenerateAccessCodeRegenerateAccessCodeInvalidDeviceError",
        "RegenerateAccessCodeRegenerateAccessCodeDeviceNotRegisteredError",
        "RegenerateAccessCodeRegenerateAccessCodeMissingConnectionTypeError",
        "RegenerateAccessCodeRegenerateAccessCodeMissingVendorCodeError",
        "RegenerateAccessCodeRegenerateAccessCodeNoConnectionDeviceError",
        "RegenerateAccessCodeRegenerateAccessCodeStudyNotFoundError",
        "RegenerateAccessCodeRegenerateAccessCodeMHealthSettingsNotFoundError",
        "RegenerateAccessCodeRegenerateAccessCodeInternalServerError",
        "RegenerateAccessCodeRegenerateAccessCodeInvalidInputError",
        "RegenerateAccessCodeRegenerateAccessCodePermissionDeniedError",
        "RegenerateAccessCodeRegenerateAccessCodeRateLimitedError",
        "RegenerateAccessCodeRegenerateAccessCodeUpstreamUnavailableError",
        "RegenerateAccessCodeRegenerateAccessCodeUnrecognizedUpstreamError",
    ] = Field(alias="regenerateAccessCode", discriminator="typename__")


class RegenerateAccessCodeRegenerateAccessCodeBootstrapCredentials(BaseModel):
    typename__: Literal["BootstrapCredentials"] = Field(alias="__typename")
    access_id: str = Field(alias="accessId")
    otp: str
    id: str
    expires_at: Optional[Annotated[datetime, BeforeValidator(parse_datetime)]] = Field(
        alias="expiresAt"
    )


class RegenerateAccessCodeRegenerateAccessCodeInvalidSubjectError(BaseModel):
    typename__: Literal["InvalidSubjectError"] = Field(alias="__typename")
    code: ErrorCode
    message: str


class RegenerateAccessCodeRegenerateAccessCodeDeviceNotDispensedError(BaseModel):
    typename__: Literal["DeviceNotDispensedError"] = Field(alias="__typename")
    code: ErrorCode
    message: str


class RegenerateAccessCodeRegenerateAccessCodeDeviceDispensedToAnotherSubjectError(
    BaseModel
):
    typename__: Literal["DeviceDispensedToAnotherSubjectError"] = Field(
        alias="__typename"
    )
    code: ErrorCode
    message: str


class RegenerateAccessCodeRegenerateAccessCodeInvalidDeviceError(BaseModel):
    typename__: Literal["InvalidDeviceError"] = Field(alias="__typename")
    code: ErrorCode
    message: str


class RegenerateAccessCodeRegenerateAccessCodeDeviceNotRegisteredError(BaseModel):
    typename__: Literal["DeviceNotRegisteredError"] = Field(alias="__typename")
    code: ErrorCode
    message: str


class RegenerateAccessCodeRegenerateAccessCodeMissingConnectionTypeError(BaseModel):
    typename__: Literal["MissingConnectionTypeError"] = Field(alias="__typename")
    code: ErrorCode
    message: str


class RegenerateAccessCodeRegenerateAccessCodeMissingVendorCodeError(BaseModel):
    typename__: Literal["MissingVendorCodeError"] = Field(alias="__typename")
    code: ErrorCode
    message: str


class RegenerateAccessCodeRegenerateAccessCodeNoConnectionDeviceError(BaseModel):
    typename__: Literal["NoConnectionDeviceError"] = Field(alias="__typename")
    code: ErrorCode
    message: str


class RegenerateAccessCodeRegenerateAccessCodeStudyNotFoundError(BaseModel):
    typename__: Literal["StudyNotFoundError"] = Field(alias="__typename")
    code: ErrorCode
    message: str


class RegenerateAccessCodeRegenerateAccessCodeMHealthSettingsNotFoundError(BaseModel):
    typename__: Literal["MHealthSettingsNotFoundError"] = Field(alias="__typename")
    code: ErrorCode
    message: str


class RegenerateAccessCodeRegenerateAccessCodeInternalServerError(BaseModel):
    typename__: Literal["InternalServerError"] = Field(alias="__typename")
    code: ErrorCode
    message: str


class RegenerateAccessCodeRegenerateAccessCodeInvalidInputError(BaseModel):
    typename__: Literal["InvalidInputError"] = Field(alias="__typename")
    code: ErrorCode
    message: str
    field: str


class RegenerateAccessCodeRegenerateAccessCodePermissionDeniedError(BaseModel):
    typename__: Literal["PermissionDeniedError"] = Field(alias="__typename")
    code: ErrorCode
    message: str


class RegenerateAccessCodeRegenerateAccessCodeRateLimitedError(BaseModel):
    typename__: Literal["RateLimitedError"] = Field(alias="__typename")
    code: ErrorCode
    message: str
    retry_after_seconds: int = Field(alias="retryAfterSeconds")


class RegenerateAccessCodeRegenerateAccessCodeUpstreamUnavailableError(BaseModel):
    typename__: Literal["UpstreamUnavailableError"] = Field(alias="__typename")
    code: ErrorCode
    message: str


class RegenerateAccessCodeRegenerateAccessCodeUnrecognizedUpstreamError(BaseModel):
    typename__: Literal["UnrecognizedUpstreamError"] = Field(alias="__typename")
    code: ErrorCode
    message: str
    upstream_status: int = Field(alias="upstreamStatus")
    upstream_code: Optional[str] = Field(alias="upstreamCode")


RegenerateAccessCode.model_rebuild()
