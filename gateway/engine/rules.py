"""The rule book of the local engine: facts in, the first failing rule's cause (or nothing) out.

Pure: no store, no clock, no I/O. `judge` is run by the engine inside the attempt's unit of work,
with the device row locked, so the pair it issues was issued against facts that still hold.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.domain import DeviceRef, ErrorCode
from gateway.engine.registry import ConnectionType, Device


@dataclass(frozen=True)
class DeviceFacts:
    """What the store knows about a `DeviceRef`, for the rules to judge."""

    study_mode_known: bool
    mhealth_configured: bool
    subject_m_subject_id: str | None
    """The subject's mHealth id, or None when the subject is unknown in the study and mode."""
    device: Device | None
    """The registry's entry for the device; None when it is unknown in the study and mode."""


def judge(ref: DeviceRef, facts: DeviceFacts) -> ErrorCode | None:
    """The first rule that fails decides; None means a new pair may be issued.

    1. study unknown, or not available in that mode          → STUDY_NOT_FOUND
    2. the study's mHealth settings missing for that mode     → MHEALTH_SETTINGS_NOT_FOUND
    3. subject unknown there, or mSubjectId not the subject's → INVALID_SUBJECT
    4. device unknown in the study and mode                   → INVALID_DEVICE
    5. device not registered with mHealth                     → DEVICE_NOT_REGISTERED
    6. dispensed to nobody                                    → DEVICE_NOT_DISPENSED
       dispensed to another subject                           → DEVICE_DISPENSED_TO_ANOTHER_SUBJECT
    7. no connection type                                     → MISSING_CONNECTION_TYPE
       NO_CONNECTION                                          → NO_CONNECTION_DEVICE
       CLOUD_TO_CLOUD without a vendor code                   → MISSING_VENDOR_CODE
    """
    if not facts.study_mode_known:
        return ErrorCode.STUDY_NOT_FOUND
    if not facts.mhealth_configured:
        return ErrorCode.MHEALTH_SETTINGS_NOT_FOUND
    if facts.subject_m_subject_id is None or facts.subject_m_subject_id != ref.m_subject_id:
        return ErrorCode.INVALID_SUBJECT
    device = facts.device
    if device is None:
        return ErrorCode.INVALID_DEVICE
    if not device.registered:
        return ErrorCode.DEVICE_NOT_REGISTERED
    if device.dispensed_to is None:
        return ErrorCode.DEVICE_NOT_DISPENSED
    if device.dispensed_to != ref.subject_id:
        return ErrorCode.DEVICE_DISPENSED_TO_ANOTHER_SUBJECT
    if device.connection_type is None:
        return ErrorCode.MISSING_CONNECTION_TYPE
    if device.connection_type is ConnectionType.NO_CONNECTION:
        return ErrorCode.NO_CONNECTION_DEVICE
    if device.connection_type is ConnectionType.CLOUD_TO_CLOUD and not device.vendor_code:
        return ErrorCode.MISSING_VENDOR_CODE
    return None
