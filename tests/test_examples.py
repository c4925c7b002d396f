"""The generated Python client (examples/python/c1_client, made by ariadne-codegen from the committed
schema) against a live `gateway serve`: every union member the local engine can produce parses into
its own generated class, `DateTime` into an aware `datetime`. (scripts/check-examples proves the
committed client is what ariadne-codegen makes today.)"""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import c1_client
import pytest
from c1_client import ErrorCode, GatewayClient, RegenerateAccessCodeInput, StudyMode
from graphql import GraphQLUnionType, build_schema

from gateway.settings import Settings
from tests.demo import STUDY, SUBJECT, TEST_HS256_SECRET, bearer
from tests.secret_watch import keep, watch
from tests.utils import free_port, serving

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent

UPSTREAM_ONLY = {"UpstreamUnavailableError", "UnrecognizedUpstreamError"}
"""Members only an upstream can cause (the local engine has none behind it)."""

DEVICE_LIMIT = 3
"""The test's own per-device limit (not the default), reached on a device of its own."""

# Each member the local engine answers for the demo data: its __typename and the input's changes.
DEMO_INPUTS: list[tuple[str, dict[str, Any]]] = [
    ("BootstrapCredentials", {"inventory_id": "DEMO-READY-02"}),
    ("InvalidSubjectError", {"m_subject_id": "MSUBJECT-999"}),
    ("DeviceNotDispensedError", {"inventory_id": "DEMO-IN-STOCK"}),
    ("DeviceDispensedToAnotherSubjectError", {"inventory_id": "DEMO-OTHER-SUBJECT"}),
    ("InvalidDeviceError", {"inventory_id": "DEMO-UNKNOWN"}),
    ("DeviceNotRegisteredError", {"inventory_id": "DEMO-UNREGISTERED"}),
    ("MissingConnectionTypeError", {"inventory_id": "DEMO-NO-TYPE"}),
    ("MissingVendorCodeError", {"inventory_id": "DEMO-CLOUD-NO-VENDOR"}),
    ("NoConnectionDeviceError", {"inventory_id": "DEMO-NO-CONNECTION"}),
    ("StudyNotFoundError", {"mode": StudyMode.TRAINING}),
    ("MHealthSettingsNotFoundError", {"mode": StudyMode.TEST}),
    ("InvalidInputError", {"study_id": "123"}),
]


def union_members() -> set[str]:
    """Every member of `RegenerateAccessCodeResult` in the committed schema."""
    result = build_schema((ROOT / "schema.graphql").read_text(encoding="utf-8")).type_map["RegenerateAccessCodeResult"]
    assert isinstance(result, GraphQLUnionType)
    return {member.name for member in result.types}


def device(**changes: Any) -> RegenerateAccessCodeInput:
    values: dict[str, Any] = {
        "study_id": STUDY,
        "mode": StudyMode.ACTIVE,
        "subject_id": SUBJECT,
        "inventory_id": "DEMO-READY-01",
        "m_subject_id": "MSUBJECT-001",
    }
    return RegenerateAccessCodeInput(**{**values, **changes})


def member_class(typename: str) -> type[Any]:
    """The class ariadne-codegen generated for one member of the mutation's result."""
    generated: type[Any] = getattr(c1_client, f"RegenerateAccessCodeRegenerateAccessCode{typename}")
    return generated


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    return {
        **base,
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_KDF_COST": "4",
        "GATEWAY_ENV_FILE": "",
        "GATEWAY_AUTH_HS256_SECRET": TEST_HS256_SECRET,
        "GATEWAY_RATE_LIMIT_DEVICE": str(DEVICE_LIMIT),
    }


async def test_the_generated_client_parses_every_member_the_local_engine_gives(env: dict[str, str]) -> None:
    settings = Settings()
    everything = {"Authorization": bearer(settings)}
    training_only = {"Authorization": bearer(settings, {STUDY: {"training": ["DeviceActionsPost"]}})}
    port = free_port()
    seen: dict[str, Any] = {}
    with serving(env, port, log_apart=True) as served:
        url = f"http://127.0.0.1:{port}/graphql"
        async with GatewayClient(url=url, headers=everything) as client:
            for typename, changes in DEMO_INPUTS:
                seen[typename] = (await client.regenerate_access_code(device(**changes))).regenerate_access_code
            flood = device(inventory_id="DEMO-FLOOD")  # a device of its own: its budget is the test's
            for _ in range(DEVICE_LIMIT + 1):
                seen["RateLimitedError"] = (await client.regenerate_access_code(flood)).regenerate_access_code
            # The store fails under the engine: its table of pairs is gone.
            with sqlite3.connect(Path(env["GATEWAY_DATA_DIR"]) / "gateway.sqlite3") as database:
                database.execute("DROP TABLE credentials")
            broken = await client.regenerate_access_code(device(inventory_id="DEMO-READY-03"))
            seen["InternalServerError"] = broken.regenerate_access_code
        async with GatewayClient(url=url, headers=training_only) as client:
            seen["PermissionDeniedError"] = (await client.regenerate_access_code(device())).regenerate_access_code
    keep(served.log.splitlines())

    assert set(seen) == union_members() - UPSTREAM_ONLY
    for typename, result in seen.items():
        assert isinstance(result, member_class(typename)), (typename, result)
        assert result.typename__ == typename
    credentials = seen["BootstrapCredentials"]
    watch(credentials.otp)
    assert isinstance(credentials.expires_at, datetime)
    assert credentials.expires_at.utcoffset() is not None
    assert seen["InvalidInputError"].field == "studyId"
    assert seen["RateLimitedError"].retry_after_seconds > 0
    codes = {typename: result.code for typename, result in seen.items() if typename != "BootstrapCredentials"}
    assert all(isinstance(code, ErrorCode) for code in codes.values())
    assert len(set(codes.values())) == len(codes)  # one code per member
