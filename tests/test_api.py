"""The GraphQL face and the REST face over real HTTP (uvicorn on loopback), SQLite and PostgreSQL.

For every union member the local engine can produce: the mutation's `__typename`, `code` and
`message`, and the REST face's status and errorCode for the same data.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.app import create_app
from gateway.domain import CAUSES, Attempt, Backend, Caller, Credentials, DeviceRef, ErrorCode, Readiness
from gateway.engine.tables import credentials
from gateway.settings import Settings
from tests.demo import DEMO_REFUSALS, READY_DEVICE, SUBJECT, bearer, regenerate, rest_path
from tests.utils import run_server

pytestmark = pytest.mark.anyio

TYPENAMES = {
    ErrorCode.STUDY_NOT_FOUND: "StudyNotFoundError",
    ErrorCode.MHEALTH_SETTINGS_NOT_FOUND: "MHealthSettingsNotFoundError",
    ErrorCode.INVALID_SUBJECT: "InvalidSubjectError",
    ErrorCode.INVALID_DEVICE: "InvalidDeviceError",
    ErrorCode.DEVICE_NOT_REGISTERED: "DeviceNotRegisteredError",
    ErrorCode.DEVICE_NOT_DISPENSED: "DeviceNotDispensedError",
    ErrorCode.DEVICE_DISPENSED_TO_ANOTHER_SUBJECT: "DeviceDispensedToAnotherSubjectError",
    ErrorCode.MISSING_CONNECTION_TYPE: "MissingConnectionTypeError",
    ErrorCode.MISSING_VENDOR_CODE: "MissingVendorCodeError",
    ErrorCode.NO_CONNECTION_DEVICE: "NoConnectionDeviceError",
    ErrorCode.INTERNAL_SERVER_ERROR: "InternalServerError",
}


@pytest.mark.parametrize(("overrides", "code"), DEMO_REFUSALS)
async def test_each_refusal_through_graphql_and_rest(
    client: httpx.AsyncClient, overrides: dict[str, Any], code: ErrorCode
) -> None:
    cause = CAUSES[code]
    result = await regenerate(client, **overrides)
    assert result == {"__typename": TYPENAMES[code], "code": code.value, "message": cause.message}

    response = await client.put(rest_path(**overrides))
    assert response.status_code == cause.http_status
    assert response.json() == {
        "status": "failure",
        "result": None,
        "version": 1,
        "errorData": {"errorCode": cause.rest_code, "errorMessage": cause.message, "details": None},
    }


@pytest.mark.parametrize("inventory_id", [READY_DEVICE, "DEMO-CLOUD-READY"])
async def test_bootstrap_credentials_through_graphql_and_rest(client: httpx.AsyncClient, inventory_id: str) -> None:
    result = await regenerate(client, inventoryId=inventory_id)
    assert result["__typename"] == "BootstrapCredentials"
    assert len(result["accessId"]) == 6
    assert len(result["otp"]) == 8
    assert len(result["id"]) == 32
    assert result["expiresAt"].endswith("+00:00")

    response = await client.put(rest_path(inventoryId=inventory_id))
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"accessId", "id", "otp"}
    assert body["id"] == result["id"]
    assert body["accessId"] != result["accessId"]


async def test_guids_are_normalised(client: httpx.AsyncClient) -> None:
    dashed_lower = "de305d54-75b4-431b-adb2-eb6b9e546014"
    subject = SUBJECT.lower()
    result = await regenerate(client, studyId=dashed_lower, subjectId=subject)
    assert result["__typename"] == "BootstrapCredentials"
    response = await client.put(rest_path(studyId=dashed_lower, subjectId=subject))
    assert response.status_code == 200


BAD_INPUTS = [
    pytest.param("studyId", "DE305D5475B4431BADB2EB6B9E54601", id="guid-too-short"),
    pytest.param("studyId", "DE305D5475B4431BADB2EB6B9E5460145", id="guid-too-long"),
    pytest.param("studyId", "XE305D5475B4431BADB2EB6B9E546014", id="guid-not-hex"),
    pytest.param("subjectId", "A1B2C3D4E5F6/718293A4B5C6D7E8F90", id="guid-slash"),
    pytest.param("subjectId", "", id="guid-empty"),
    pytest.param("inventoryId", "../DEMO-READY-01", id="dot-dot"),
    pytest.param("inventoryId", "DEMO/READY", id="slash"),
    pytest.param("inventoryId", "DEMO\x00READY", id="nul"),
    pytest.param("inventoryId", "DEMO\nREADY", id="newline"),
    pytest.param("inventoryId", "D" * 65, id="over-long"),
    pytest.param("inventoryId", "", id="empty"),
    pytest.param("inventoryId", "DEMO READY", id="space"),
    pytest.param("mSubjectId", "MSUBJECT-001?x=1", id="query"),
    pytest.param("mSubjectId", "MSUBJECT-001#x", id="fragment"),
    pytest.param("mSubjectId", "MSUBJECT-ÖÖ1", id="unicode"),
    pytest.param("mSubjectId", "%2F", id="percent"),
]


@pytest.mark.parametrize(("field", "value"), BAD_INPUTS)
async def test_malformed_input_names_the_field(client: httpx.AsyncClient, field: str, value: str) -> None:
    result = await regenerate(client, **{field: value})
    assert result["__typename"] == "InvalidInputError"
    assert result["code"] == "INVALID_INPUT"
    assert result["field"] == field
    assert result["message"].startswith(f"{field}: ")
    assert value not in result["message"] or not value


@pytest.mark.parametrize(
    ("path_overrides", "field"),
    [
        pytest.param({"studyId": "NOTAGUID"}, "studyId", id="studyId"),
        pytest.param({"mode": "PRODUCTION"}, "mode", id="mode"),
        pytest.param({"inventoryId": "..%2E"}, "inventoryId", id="inventoryId"),
        pytest.param({"mSubjectId": "a%20b"}, "mSubjectId", id="mSubjectId"),
    ],
)
async def test_rest_face_refuses_malformed_input(
    client: httpx.AsyncClient, path_overrides: dict[str, str], field: str
) -> None:
    response = await client.put(rest_path(**path_overrides))
    assert response.status_code == 400
    error = response.json()["errorData"]
    assert error["errorCode"] == CAUSES[ErrorCode.INVALID_INPUT].rest_code
    assert error["details"]["field"] == field


async def test_rest_face_requires_msubjectid(client: httpx.AsyncClient) -> None:
    response = await client.put(rest_path().split("?")[0])
    assert response.status_code == 400
    assert response.json()["errorData"]["details"]["field"] == "mSubjectId"


async def test_a_broken_store_is_an_internal_server_error(client: httpx.AsyncClient, settings: Settings) -> None:
    engine = create_async_engine(
        settings.store_url, execution_options={"schema_translate_map": {None: settings.database_schema or None}}
    )
    async with engine.begin() as conn:
        await conn.run_sync(credentials.drop)
    await engine.dispose()
    cause = CAUSES[ErrorCode.INTERNAL_SERVER_ERROR]
    result = await regenerate(client)
    assert result == {"__typename": "InternalServerError", "code": "INTERNAL_SERVER_ERROR", "message": cause.message}
    response = await client.put(rest_path())
    assert response.status_code == 500
    assert response.json()["errorData"]["errorCode"] == cause.rest_code


async def test_query_says_which_backend_serves(client: httpx.AsyncClient) -> None:
    response = await client.post("/graphql", json={"query": "{ gateway { version backend otpLifetimeSeconds } }"})
    assert response.json() == {
        "data": {"gateway": {"version": "0.1.0", "backend": "LOCAL", "otpLifetimeSeconds": 86400}}
    }


async def test_graphiql_and_health(client: httpx.AsyncClient) -> None:
    page = await client.get("/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200
    assert "graphiql" in page.text.lower()
    health = await client.get("/healthz")
    assert health.json() == {"status": "ok", "version": "0.1.0", "backend": "local"}


async def test_request_ids_are_echoed_or_made(client: httpx.AsyncClient) -> None:
    given = await client.get("/healthz", headers={"x-request-id": "trace-123"})
    assert given.headers["x-request-id"] == "trace-123"
    made = await client.get("/healthz", headers={"x-request-id": "bad id\twith junk"})
    assert len(made.headers["x-request-id"]) == 32


class ExplodingBackend:
    """A backend with a bug in it: the GraphQL face must mask what it raises."""

    name = "local"

    async def readiness(self) -> Readiness:

        return Readiness(True)

    async def regenerate(self, ref: DeviceRef, caller: Caller, attempt: Attempt) -> Credentials:
        raise RuntimeError("secret internals: /srv/db password=hunter2")


async def test_unexpected_exceptions_are_masked_and_logged(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    backend: Backend = ExplodingBackend()
    headers = {"Authorization": bearer(settings)}
    async with (
        run_server(create_app(settings, backend=backend)) as url,
        httpx.AsyncClient(base_url=url, headers=headers) as client,
    ):
        with caplog.at_level(logging.ERROR, logger="gateway"):
            response = await client.post(
                "/graphql",
                json={
                    "query": "mutation($i: RegenerateAccessCodeInput!) { regenerateAccessCode(input: $i) { "
                    "__typename } }",
                    "variables": {
                        "i": {
                            "studyId": "A" * 32,
                            "mode": "ACTIVE",
                            "subjectId": "B" * 32,
                            "inventoryId": "X",
                            "mSubjectId": "Y",
                        }
                    },
                },
                headers={"x-request-id": "req-43"},
            )
    body = response.json()
    assert body["data"] is None
    assert [error["message"] for error in body["errors"]] == [
        "Unexpected error. Quote the X-Request-ID response header when reporting it."
    ]
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    assert any("req-43" in record.getMessage() for record in caplog.records)


async def test_graphql_validation_errors_are_not_masked(client: httpx.AsyncClient) -> None:
    response = await client.post("/graphql", json={"query": "{ gateway { nope } }"})
    assert "nope" in response.json()["errors"][0]["message"]
