"""An operation's plan answers exactly as graphql-core's executor does (`gateway.api.plans`).

Over real HTTP (uvicorn, the app's lifespan, a SQLite store with the demo data): a document's
first request is a cache miss and runs through Strawberry and graphql-core; the same text again is
a hit and runs by its plan. Every case sends a fresh text twice and compares the two answers:
every union member the local engine gives, aliases, named and inline fragments on the union, the
`Error` interface and the types, literals instead of variables, `__typename` at every level, two
root fields, operation names; variables that do not fit and documents with directives (which have
no plan) go the executor's way both times; a resolver's failure is masked the same way.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.api import schema as schema_module
from gateway.api.documents import DocumentCache
from gateway.api.schema import MASKED_MESSAGE
from gateway.api.types import InvalidDeviceError
from gateway.app import create_app
from gateway.engine.registry import DEMO_REGISTRY, load_registry
from gateway.engine.tables import seed
from gateway.store import Store
from tests.demo import ALL_TABLES, DEMO_REFUSALS, READY_DEVICE, REGENERATE, bearer, device_input
from tests.security import sqlite_settings
from tests.test_graphql_guards import ExplodingBackend, schema_of
from tests.utils import run_server

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Served:
    client: httpx.AsyncClient
    documents: DocumentCache

    async def twice(self, document: str, variables: dict[str, Any] | None = None, **extra: Any) -> list[Any]:
        """The answers to a fresh text of `document` sent twice: (status, body) by the executor, then
        by the plan (asserted: the second is a planned hit, the first is not)."""
        text = f"# {uuid.uuid4().hex}\n{document}"
        payload = {"query": text, "variables": variables, **extra}
        answers = []
        for planned in (False, True):
            before = self.documents.info().planned
            response = await self.client.post("/graphql", json=payload)
            answers.append((response.status_code, response.json()))
            assert self.documents.info().planned == before + planned, (planned, answers[-1])
        return answers

    async def unplanned_twice(self, document: str, variables: dict[str, Any] | None = None) -> list[Any]:
        """Like `twice`, for a document or variables the plan hands back to the executor."""
        text = f"# {uuid.uuid4().hex}\n{document}"
        before = self.documents.info().planned
        answers = []
        for _ in range(2):
            response = await self.client.post("/graphql", json={"query": text, "variables": variables})
            answers.append((response.status_code, response.json()))
        assert self.documents.info().planned == before
        return answers


@pytest.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Served]:
    folder = tmp_path_factory.mktemp("plans")
    settings = sqlite_settings(folder, rate_limit_device=0, rate_limit_caller=0)
    store = await Store.open(settings.store_url, tables=ALL_TABLES)
    await seed(store, load_registry(DEMO_REGISTRY))
    await store.close()
    app = create_app(settings)
    async with (
        run_server(app) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": bearer(settings)}) as client,
    ):
        yield Served(client, schema_of(app).documents)


EVERY_FIELD = REGENERATE
"""The demo's document: every union member's fields, through the `Error` interface and each type."""

FRAGMENTS = """
mutation Regenerate($input: RegenerateAccessCodeInput!) {
  result: regenerateAccessCode(input: $input) { ...Result again: __typename }
}
fragment Result on RegenerateAccessCodeResult {
  kind: __typename
  ...Failure
  ... on StudyNotFoundError { ...Failure text: message }
  ... on BootstrapCredentials { ...Credentials }
  ... { __typename }
}
fragment Failure on Error { code message code }
fragment Credentials on BootstrapCredentials { otp accessId expiresAt id id2: id }
"""

LITERALS = """
mutation {
  first: __typename
  regenerateAccessCode(input: {studyId: "%s", mode: %s, subjectId: "%s", inventoryId: "%s", mSubjectId: "%s"}) {
    ... on Error { __typename message code }
    ... on BootstrapCredentials { __typename id }
  }
  last: __typename
}
"""

SHAPES = [
    pytest.param(EVERY_FIELD, id="every-member-field"),
    pytest.param(FRAGMENTS, id="named-fragments-aliases"),
]

_OTP_FIELDS = {"otp", "accessId", "expiresAt"}


def _comparable(body: Any) -> Any:
    """A body with each new pair's values replaced by their shape (every success draws a new one)."""
    if isinstance(body, dict):
        return {k: _shape(v) if k in _OTP_FIELDS else _comparable(v) for k, v in body.items()}
    if isinstance(body, list | tuple):
        return [_comparable(v) for v in body]
    return body


def _shape(value: Any) -> str:
    if value is None:
        return "null"
    if re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", value):
        return "datetime"
    return f"{len(value)} characters"


@pytest.mark.parametrize("document", SHAPES)
@pytest.mark.parametrize(("overrides", "code"), [*DEMO_REFUSALS, pytest.param({}, None, id="success")])
async def test_the_plan_answers_as_the_executor(
    served: Served, document: str, overrides: dict[str, Any], code: object
) -> None:
    by_executor, by_plan = await served.twice(document, {"input": device_input(**overrides)})
    if code is None:  # a new pair each time: compare the shapes of its values
        by_executor, by_plan = _comparable(by_executor), _comparable(by_plan)
    assert by_plan == by_executor
    assert "errors" not in by_plan[1]


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"studyId": "not-a-guid"}, id="invalid-input"),
        pytest.param({"inventoryId": "DEMO-UNKNOWN"}, id="refusal"),
        pytest.param({"inventoryId": READY_DEVICE}, id="success"),
    ],
)
async def test_literals_and_root_typename(served: Served, overrides: dict[str, Any]) -> None:
    values = device_input(**overrides)
    fields = (values["studyId"], values["mode"], values["subjectId"], values["inventoryId"], values["mSubjectId"])
    by_executor, by_plan = await served.twice(LITERALS % fields)
    assert by_plan == by_executor
    assert list(by_plan[1]["data"]) == ["first", "regenerateAccessCode", "last"]


async def test_two_root_fields_run_in_order(served: Served) -> None:
    document = """
    mutation Two($a: RegenerateAccessCodeInput!, $b: RegenerateAccessCodeInput!) {
      b: regenerateAccessCode(input: $b) { __typename }
      a: regenerateAccessCode(input: $a) { __typename ... on BootstrapCredentials { id } }
    }
    """
    variables = {"a": device_input(), "b": device_input(mode="TEST")}
    by_executor, by_plan = await served.twice(document, variables)
    assert by_plan == by_executor
    assert list(by_plan[1]["data"]) == ["b", "a"]
    assert by_plan[1]["data"]["b"] == {"__typename": "MHealthSettingsNotFoundError"}


async def test_the_operation_named(served: Served) -> None:
    document = EVERY_FIELD + " query Version { gateway { version } }"
    variables = {"input": device_input(studyId="0" * 32)}
    by_executor, by_plan = await served.twice(document, variables, operationName="Regenerate")
    assert by_plan == by_executor
    # No name for a document of two operations: the executor's request error, each time.
    first, second = await served.unplanned_twice(document)
    assert first == second
    assert first[1]["errors"][0]["message"] == "Must provide operation name if query contains multiple operations."


@pytest.mark.parametrize(
    ("document", "variables"),
    [
        pytest.param(EVERY_FIELD, {"input": device_input(mode="BOGUS")}, id="enum-value-unknown"),
        pytest.param(EVERY_FIELD, {"input": {**device_input(), "extra": 1}}, id="field-unknown"),
        pytest.param(EVERY_FIELD, {"input": device_input(studyId=None)}, id="required-null"),
        pytest.param(EVERY_FIELD, {}, id="variable-missing"),
        pytest.param(
            EVERY_FIELD.replace("__typename", "__typename @include(if: true)"),
            {"input": device_input(studyId="0" * 32)},
            id="directive",
        ),
        pytest.param("{ gateway { version backend } }", None, id="no-planned-resolver"),
    ],
)
async def test_what_has_no_plan_goes_the_executors_way(
    served: Served, document: str, variables: dict[str, Any] | None
) -> None:
    first, second = await served.unplanned_twice(document, variables)
    assert first == second


async def test_a_resolvers_failure_is_masked_the_same_way(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path, rate_limit_device=0, rate_limit_caller=0)
    app = create_app(settings, backend=ExplodingBackend())
    async with (
        run_server(app) as url,
        httpx.AsyncClient(base_url=url, headers={"Authorization": bearer(settings)}) as client,
    ):
        served = Served(client, schema_of(app).documents)
        by_executor, by_plan = await served.twice(EVERY_FIELD, {"input": device_input()})
    assert by_plan == by_executor
    status, body = by_plan
    assert status == 200
    assert body == {
        "data": None,
        "errors": [
            {"message": MASKED_MESSAGE, "locations": [{"line": 4, "column": 3}], "path": ["regenerateAccessCode"]}
        ],
    }


async def test_a_member_subclass_and_a_null_leaf_answer_as_the_executor(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither happens with today's backends; if one did, both paths would still agree."""

    class Narrower(InvalidDeviceError):
        pass

    variables = {"input": device_input(inventoryId="DEMO-UNKNOWN")}
    monkeypatch.setattr(schema_module, "render_refusal", lambda refusal: Narrower(code=refusal.code, message="m"))
    by_executor, by_plan = await served.twice(EVERY_FIELD, variables)
    assert by_plan == by_executor
    assert by_plan[1]["data"]["regenerateAccessCode"]["__typename"] == "InvalidDeviceError"

    monkeypatch.setattr(schema_module, "render_refusal", lambda refusal: InvalidDeviceError(code=None, message="m"))  # type: ignore[arg-type]
    by_executor, by_plan = await served.twice(EVERY_FIELD, variables)
    assert by_plan == by_executor
    assert by_plan[1]["data"] is None
    assert by_plan[1]["errors"][0]["message"] == MASKED_MESSAGE


async def test_an_apq_registration_is_validated_once(served: Served) -> None:
    """A registration takes Strawberry's path alone: the plan does not check its document first."""
    text = "query { " + " ".join(f"a{i}: __typename" for i in range(300)) + " }"  # over the alias limit, uncacheable
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": hashlib.sha256(text.encode()).hexdigest()}}
    before = served.documents.info()
    response = await served.client.post("/graphql", json={"query": text, "extensions": extensions})
    assert "aliases" in response.json()["errors"][0]["message"]
    after = served.documents.info()
    assert after.misses - before.misses == 2  # registering checks it once, executing it once more
    assert after.planned == before.planned


_VALID = {"studyId": "S", "mode": "ACTIVE", "subjectId": "U", "inventoryId": "D", "mSubjectId": "M"}
_WELL_FORMED: list[dict[str, Any]] = [
    {"input": _VALID},
    {"input": _VALID, "unused": [1, 2]},
    {"input": _VALID | {"studyId": "é ünïcode \u0000", "subjectId": ""}},
    {"input": _VALID | {"mode": "TEST"}},
]
_NOT_FITTING: list[dict[str, Any]] = [
    {"input": _VALID | {"mode": "active"}},  # an enum's value, not its name
    {"input": _VALID | {"mode": "NOPE"}},
    {"input": _VALID | {"mode": 1}},
    {"input": _VALID | {"studyId": 7}},
    {"input": _VALID | {"studyId": 7.5}},
    {"input": _VALID | {"studyId": True}},
    {"input": _VALID | {"studyId": None}},
    {"input": _VALID | {"studyId": ["S"]}},
    {"input": _VALID | {"studyId": {"S": 1}}},
    {"input": _VALID | {"extra": "x"}},
    {"input": {k: v for k, v in _VALID.items() if k != "mSubjectId"}},
    {"input": {}},
    {"input": None},
    {"input": "S"},
    {"input": [_VALID]},
    {},
]


def _hot_plan() -> tuple[Any, Any]:
    from graphql import parse

    from gateway.api import plans

    gateway_schema = schema_module.build_schema()
    plan = plans.plan(gateway_schema, parse(REGENERATE), None, schema_module.PLANNED)
    assert plan is not None
    assert plan.variables is not None
    return plan, gateway_schema._schema


@pytest.mark.parametrize("variables", _WELL_FORMED)
def test_the_plan_coerces_well_formed_variables_as_graphql_core_does(variables: dict[str, Any]) -> None:
    """The plan's own coercion (`_Variables`) of the hot mutation's input gives graphql-core's result:
    the same coerced values and the same sources."""
    from graphql.execution.values import VariableValues, get_variable_values

    plan, core = _hot_plan()
    ours = plan.variables.coerce(variables)
    theirs = get_variable_values(core, plan.operation.variable_definitions, variables, hide_suggestions=True)
    assert isinstance(ours, VariableValues)
    assert isinstance(theirs, VariableValues)
    assert ours.coerced == theirs.coerced
    assert [(k, s.value, s.signature.name, str(s.signature.type)) for k, s in ours.sources.items()] == [
        (k, s.value, s.signature.name, str(s.signature.type)) for k, s in theirs.sources.items()
    ]
    assert plan.coerce(core, variables) is not None


@pytest.mark.parametrize("variables", _NOT_FITTING)
def test_variables_that_do_not_fit_are_left_to_graphql_core(variables: dict[str, Any]) -> None:
    """Anything the plan's coercion is not sure of gives None; each of these graphql-core refuses
    (the executor's path then answers with its errors)."""
    from graphql.execution.values import get_variable_values

    plan, core = _hot_plan()
    assert plan.variables.coerce(variables) is None
    refused = get_variable_values(core, plan.operation.variable_definitions, variables, hide_suggestions=True)
    assert isinstance(refused, list)
    assert refused
    assert plan.coerce(core, variables) is None
