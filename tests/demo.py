"""The demo data's ids, the test settings' values and the helpers tests share (conftest.py holds
fixtures only): what a request for a demo device looks like, a token the test gateway accepts,
a check of a pair against the store."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from gateway.app import store_tables
from gateway.auth import mint_token
from gateway.domain import DEVICE_ACTIONS_POST, DeviceRef, ErrorCode, StudyMode
from gateway.engine import otp as otp_module
from gateway.engine import tables as engine_tables
from gateway.engine.engine import CredentialEngine
from gateway.regeneration import DeviceRequest
from gateway.settings import Settings

POSTGRES_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


TEST_KDF_COST = 4  # scrypt N = 16: the hash's shape is what the tests check, not its cost


TEST_AUDIT_KEY = bytes(range(32))  # an obviously fake MAC key for the audit trail


TEST_HS256_SECRET = "test-only-hs256-secret-not-for-any-real-gateway"  # an obviously fake value


STUDY = "DE305D5475B4431BADB2EB6B9E546014"


SUBJECT = "A1B2C3D4E5F60718293A4B5C6D7E8F90"


OTHER_SUBJECT = "B2C3D4E5F60718293A4B5C6D7E8F90A1"


READY_DEVICE = "DEMO-READY-01"


ALL_TABLES = store_tables(Settings(backend="local"))


@dataclass(frozen=True)
class Database:
    """Where a test's store lives: a URL and, for PostgreSQL, the test's own schema."""

    url: str
    schema: str = ""

    @property
    def kind(self) -> str:
        return "postgres" if self.url.startswith("postgresql") else "sqlite"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


ALL_RIGHTS: dict[str, dict[str, list[str]]] = {"*": {"*": [DEVICE_ACTIONS_POST]}}


def bearer(
    settings: Settings,
    rights: Mapping[str, Mapping[str, Collection[str]]] | None = None,
    *,
    subject: str = "test-user",
    ttl_seconds: int = 600,
) -> str:
    """An `Authorization` header value the gateway under `settings` accepts: a token signed with
    the test secret, granting `rights` (default: DeviceActionsPost for every study and mode)."""
    token = mint_token(
        TEST_HS256_SECRET.encode(),
        issuer=settings.auth.issuer,
        audience=settings.auth.audience,
        subject=subject,
        rights=ALL_RIGHTS if rights is None else rights,
        ttl_seconds=ttl_seconds,
    )
    return f"Bearer {token}"


# Every refusal the local engine gives for the demo data: GraphQL input overrides → the cause.
DEMO_REFUSALS = [
    pytest.param({"studyId": "0" * 32}, ErrorCode.STUDY_NOT_FOUND, id="unknown-study"),
    pytest.param({"mode": "TRAINING"}, ErrorCode.STUDY_NOT_FOUND, id="study-not-in-mode"),
    pytest.param({"mode": "TEST"}, ErrorCode.MHEALTH_SETTINGS_NOT_FOUND, id="no-mhealth-settings"),
    pytest.param({"subjectId": "F" * 32}, ErrorCode.INVALID_SUBJECT, id="unknown-subject"),
    pytest.param({"mSubjectId": "MSUBJECT-999"}, ErrorCode.INVALID_SUBJECT, id="unknown-msubject"),
    pytest.param({"mSubjectId": "MSUBJECT-002"}, ErrorCode.INVALID_SUBJECT, id="another-subjects-msubject"),
    pytest.param({"inventoryId": "DEMO-UNKNOWN"}, ErrorCode.INVALID_DEVICE, id="unknown-device"),
    pytest.param({"inventoryId": "DEMO-UNREGISTERED"}, ErrorCode.DEVICE_NOT_REGISTERED, id="unregistered"),
    pytest.param({"inventoryId": "DEMO-IN-STOCK"}, ErrorCode.DEVICE_NOT_DISPENSED, id="not-dispensed"),
    pytest.param(
        {"inventoryId": "DEMO-OTHER-SUBJECT"}, ErrorCode.DEVICE_DISPENSED_TO_ANOTHER_SUBJECT, id="other-subject"
    ),
    pytest.param({"inventoryId": "DEMO-NO-TYPE"}, ErrorCode.MISSING_CONNECTION_TYPE, id="no-connection-type"),
    pytest.param({"inventoryId": "DEMO-CLOUD-NO-VENDOR"}, ErrorCode.MISSING_VENDOR_CODE, id="no-vendor-code"),
    pytest.param({"inventoryId": "DEMO-NO-CONNECTION"}, ErrorCode.NO_CONNECTION_DEVICE, id="no-connection"),
]


def ref_for(**overrides: Any) -> DeviceRef:
    """The `DeviceRef` a backend receives for `device_input(**overrides)`."""
    values = device_input(**overrides)
    return DeviceRequest(
        study_id=values["studyId"],
        mode=values["mode"].lower(),
        subject_id=values["subjectId"],
        inventory_id=values["inventoryId"],
        m_subject_id=values["mSubjectId"],
    ).parse()


READY_REF = DeviceRef.parse(
    study_id=STUDY, mode=StudyMode.ACTIVE, subject_id=SUBJECT, inventory_id=READY_DEVICE, m_subject_id="MSUBJECT-001"
)


"""The demo's ready device, as a backend receives it."""


REGENERATE = """
mutation Regenerate($input: RegenerateAccessCodeInput!) {
  regenerateAccessCode(input: $input) {
    __typename
    ... on BootstrapCredentials { accessId otp id expiresAt }
    ... on Error { code message }
    ... on InvalidInputError { field }
    ... on RateLimitedError { retryAfterSeconds }
    ... on UnrecognizedUpstreamError { upstreamStatus upstreamCode }
  }
}
"""


def device_input(**overrides: Any) -> dict[str, Any]:
    """GraphQL input for the demo's ready device, with some fields changed."""
    values = {
        "studyId": STUDY,
        "mode": "ACTIVE",
        "subjectId": SUBJECT,
        "inventoryId": READY_DEVICE,
        "mSubjectId": "MSUBJECT-001",
    }
    values.update(overrides)
    return values


async def regenerate(client: httpx.AsyncClient, **overrides: Any) -> dict[str, Any]:
    """Run the mutation over HTTP; return the union member as JSON."""
    response = await client.post(
        "/graphql", json={"query": REGENERATE, "variables": {"input": device_input(**overrides)}}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    result: dict[str, Any] = body["data"]["regenerateAccessCode"]
    return result


def rest_path(**overrides: Any) -> str:
    """The REST face's PUT path (with query) for the same input as `device_input`."""
    values = device_input(**overrides)
    return (
        f"/ec-ors-svc/rest/v1.0/studies/{values['studyId']}/{values['mode'].lower()}/subjects/{values['subjectId']}"
        f"/devices/{values['inventoryId']}/access-code?mSubjectId={values['mSubjectId']}"
    )


async def pair_works(engine: CredentialEngine, access_id: str, otp: str) -> bool:
    """True when (access_id, otp) is a device's current pair, unexpired, unused and unlocked: a look
    at the store that spends and counts nothing (what a device's bootstrap would find)."""
    pair = await engine.store.read(lambda conn: engine_tables.find_pair(conn, access_id))
    if pair is None or pair.used_at or pair.locked_at or engine.clock() >= pair.expires_at:
        return False
    return otp_module.verify_otp(otp, pair.otp_hash)


def errors(body: dict[str, Any]) -> list[str]:
    """The messages of a GraphQL answer that must have no data."""
    assert body.get("data") is None, body
    return [error["message"] for error in body["errors"]]
