"""The plan's own variable coercion (`_Variables`), fuzzed against graphql-core's.

Whenever `_Variables.coerce` answers, its answer must be graphql-core's `get_variable_values`
(the same coerced values, of the same types, and the same sources); whenever graphql-core refuses,
it must answer None. Fuzzed on the gateway's schema (its one input type, through operations of
one or several variables) and on a schema of richer input types (nullable fields, defaults, other
scalars, out names, a custom scalar), since `_Variables` is written for any input object of leaves.
"""

from __future__ import annotations

import collections
import decimal
import math
import random
from typing import Any

import pytest
from graphql import (
    GraphQLArgument,
    GraphQLBoolean,
    GraphQLEnumType,
    GraphQLEnumValue,
    GraphQLField,
    GraphQLFloat,
    GraphQLID,
    GraphQLInputField,
    GraphQLInputObjectType,
    GraphQLInt,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLString,
    OperationDefinitionNode,
    parse,
)
from graphql.execution.values import VariableValues, get_variable_values
from graphql.pyutils import Undefined

from gateway.api import plans
from gateway.api import schema as schema_module
from tests.demo import REGENERATE

FIELDS = ["studyId", "mode", "subjectId", "inventoryId", "mSubjectId"]
NEAR_MISSES = [
    "studyid",
    "study_id",
    "StudyId",
    "studyId ",
    " studyId",
    "mSubjectID",
    "msubjectId",
    "MSubjectId",
    "stud\u0443Id",  # a Cyrillic u
    "",
    "__typename",
    "mode\u0000",
    "inventoryId\u200b",
]
VARIABLE_NEAR_MISSES = ["Input", "input ", "inputs", "INPUT", "in\u0440ut", "$input", ""]


def _strings(rng: random.Random) -> Any:
    return rng.choice(
        [
            "",
            "S",
            "DE305D5475B4431BADB2EB6B9E546014",
            "é ünïcode \u0000 \U0001f600",
            "\ud800",  # a lone surrogate: json.loads gives it
            "x" * rng.choice([1, 1000, 100_000]),
            "ACTIVE",
            "TEST",
            "TRAINING",
            "active",
            "Active",
            "ACTIVE ",
            " ACTIVE",
            "ACTIVE\u0000",
            "ACTİVE",
            "null",
            "true",
            "1",
        ]
    )


def _leaf(rng: random.Random) -> Any:
    return rng.choice(
        [
            None,
            True,
            False,
            0,
            1,
            -1,
            2**31 - 1,
            2**31,
            -(2**31),
            10**40,
            0.0,
            -0.0,
            1.0,
            1.5,
            1e308,
            math.inf,
            -math.inf,
            math.nan,
            _strings(rng),
            _strings(rng),
            _strings(rng),
        ]
    )


def _value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth > 3 or roll < 0.6:
        return _leaf(rng)
    if roll < 0.8:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(FIELDS + NEAR_MISSES): _value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _good_field(rng: random.Random, name: str) -> Any:
    if name == "mode":
        return rng.choice(["ACTIVE", "TEST", "TRAINING"])
    return _strings(rng)


def _input(rng: random.Random, fields: list[str]) -> Any:
    """Mostly near-valid objects with one or two things wrong, sometimes anything at all."""
    roll = rng.random()
    if roll < 0.05:
        return _value(rng)
    obj: dict[str, Any] = {name: _good_field(rng, name) for name in fields}
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        action = rng.random()
        name = rng.choice(fields)
        if action < 0.3:
            obj[name] = _value(rng)
        elif action < 0.5:
            obj.pop(name, None)
        elif action < 0.7:
            obj[rng.choice(NEAR_MISSES)] = _value(rng)
        elif action < 0.8:
            obj[name] = None
        else:
            obj = dict(reversed(list(obj.items())))  # another key order
    return obj


def _variables(rng: random.Random, names: list[str], fields: list[str]) -> dict[str, Any]:
    given: dict[str, Any] = {}
    for name in names:
        if rng.random() < 0.95:
            given[name] = _input(rng, fields)
    for _ in range(rng.choice([0, 0, 1, 2])):
        given[rng.choice([*VARIABLE_NEAR_MISSES, "unused", "x"])] = _value(rng)
    return given


def _same(ours: Any, theirs: Any) -> bool:
    """Equal, and of the same types all the way down (1 == 1.0 == True would hide a difference)."""
    if type(ours) is not type(theirs):
        return False
    if isinstance(ours, dict):
        return list(ours) == list(theirs) and all(_same(ours[key], theirs[key]) for key in ours)
    if isinstance(ours, list | tuple):
        return len(ours) == len(theirs) and all(_same(a, b) for a, b in zip(ours, theirs, strict=True))
    if isinstance(ours, float) and math.isnan(ours):
        return math.isnan(theirs)
    return bool(ours == theirs)


def _check(plan: plans.Plan, schema: GraphQLSchema, given: dict[str, Any]) -> str:
    assert plan.variables is not None
    definitions = plan.operation.variable_definitions or ()
    theirs = get_variable_values(schema, definitions, given, max_errors=50, hide_suggestions=True)
    ours = plan.variables.coerce(given)
    through_plan = plan.coerce(schema, given)
    if isinstance(theirs, list):
        assert ours is None, (given, ours)
        assert through_plan is None
        return "refused"
    assert isinstance(theirs, VariableValues)
    assert through_plan is not None
    assert _same(through_plan.coerced, theirs.coerced)
    if ours is None:
        return "left to graphql-core"
    assert isinstance(ours, VariableValues)
    assert _same(ours.coerced, theirs.coerced), (given, ours.coerced, theirs.coerced)
    assert list(ours.sources) == list(theirs.sources)
    for name, source in ours.sources.items():
        other = theirs.sources[name]
        assert source.value is other.value or _same(source.value, other.value)
        assert source.signature.name == other.signature.name
        assert str(source.signature.type) == str(other.signature.type)
        assert source.signature.default == other.signature.default
        assert source.signature.default_value is other.signature.default_value
    return "coerced"


def _gateway_plan(document: str) -> tuple[plans.Plan, GraphQLSchema]:
    gateway_schema = schema_module.build_schema()
    plan = plans.plan(gateway_schema, parse(document), None, schema_module.PLANNED)
    assert plan is not None
    return plan, gateway_schema._schema


TWO_ROOTS = """
mutation Two($a: RegenerateAccessCodeInput!, $b: RegenerateAccessCodeInput!) {
  x: regenerateAccessCode(input: $a) { __typename }
  y: regenerateAccessCode(input: $b) { __typename ... on Error { code } }
}
"""


@pytest.mark.parametrize(("document", "names"), [(REGENERATE, ["input"]), (TWO_ROOTS, ["a", "b"])], ids=["hot", "two"])
def test_fuzz_the_gateway_schema(document: str, names: list[str]) -> None:
    plan, schema = _gateway_plan(document)
    assert plan.variables is not None
    rng = random.Random(20261126)
    outcomes: collections.Counter[str] = collections.Counter()
    for _ in range(10_000):
        outcomes[_check(plan, schema, _variables(rng, names, FIELDS))] += 1
    assert outcomes["coerced"] > 1000
    assert outcomes["refused"] > 1000


def test_non_json_python_values_on_the_gateway_schema() -> None:
    """What a caller in process could pass (the REST face, tests): dict subclasses, tuples, bytes, enums."""
    from gateway.domain import StudyMode

    plan, schema = _gateway_plan(REGENERATE)
    good = {"studyId": "S", "mode": "ACTIVE", "subjectId": "U", "inventoryId": "D", "mSubjectId": "M"}
    odd: list[Any] = [
        collections.OrderedDict(good),
        collections.defaultdict(str, good),
        good | {"studyId": b"S"},
        good | {"studyId": ("S",)},
        good | {"studyId": decimal.Decimal(1)},
        good | {"mode": StudyMode.ACTIVE},
        good | {"mode": "active"},
        good | {"studyId": Undefined},
        good | {"extra": Undefined},
        good | {1: "S"},
        frozenset(good),
    ]
    for value in odd:
        _check(plan, schema, {"input": value})
    _check(plan, schema, collections.OrderedDict(input=good))


# A schema of richer input objects of leaves: what `_Variables` also claims to handle.

Shade = GraphQLEnumType("Shade", {"RED": GraphQLEnumValue("r"), "GREEN": GraphQLEnumValue(None), "BLUE": None})


def _parse_odd(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("odd:"):
        return value[4:]
    if value == "none":
        return None
    if value == "undefined":
        return Undefined
    if isinstance(value, list):
        return tuple(value)
    raise ValueError("not odd")


Odd = GraphQLScalarType("Odd", parse_value=_parse_odd)

Rich = GraphQLInputObjectType(
    "Rich",
    {
        "s": GraphQLInputField(GraphQLString),
        "sd": GraphQLInputField(GraphQLString, default_value="dflt"),
        "n": GraphQLInputField(GraphQLNonNull(GraphQLInt)),
        "nd": GraphQLInputField(GraphQLNonNull(GraphQLInt), default_value=7),
        "f": GraphQLInputField(GraphQLFloat),
        "b": GraphQLInputField(GraphQLBoolean, default_value=None),
        "i": GraphQLInputField(GraphQLID, out_name="identifier"),
        "e": GraphQLInputField(Shade, default_value="GREEN"),
        "en": GraphQLInputField(GraphQLNonNull(Shade)),
        "o": GraphQLInputField(Odd),
    },
    out_type=lambda values: ("Rich", tuple(sorted(values.items(), key=lambda item: item[0]))),
)
RICH_FIELDS = list(Rich.fields)

Query = GraphQLObjectType(
    "Query",
    {
        "rich": GraphQLField(
            GraphQLString,
            args={"r": GraphQLArgument(GraphQLNonNull(Rich)), "q": GraphQLArgument(Rich)},
            resolve=lambda *_args, **_kwargs: "x",
        )
    },
)
RICH_SCHEMA = GraphQLSchema(Query)


def _rich_value(rng: random.Random) -> Any:
    return rng.choice(
        [
            _leaf(rng),
            _leaf(rng),
            rng.choice(["RED", "GREEN", "BLUE", "r", "red"]),
            rng.choice(["odd:x", "none", "undefined", "odd:", "plain"]),
            [1, 2],
            ["odd:1"],
            {"n": 1},
            rng.randrange(-5, 5),
            rng.random(),
        ]
    )


_RICH_GOOD: dict[str, list[Any]] = {
    "s": ["s", "", "é", None],
    "sd": ["t", None],
    "n": [0, -3, 2**31 - 1, 1.0, 2.0],
    "nd": [1, 5.0],
    "f": [1.5, 2, -0.0, 1e308, None, True],
    "b": [True, False, None],
    "i": ["id", 12, None],
    "e": ["RED", "GREEN", "BLUE", None],
    "en": ["RED", "GREEN", "BLUE"],
    "o": ["odd:x", "none", ["odd:1"], None],
}


def _rich_input(rng: random.Random) -> Any:
    """Valid values of each field's type (some left out), then now and then one mutation."""
    if rng.random() < 0.03:
        return _value(rng)
    obj: dict[str, Any] = {}
    for name, good in _RICH_GOOD.items():
        if name in ("n", "en") or rng.random() < 0.6:
            obj[name] = rng.choice(good)
    for _ in range(rng.choice([0, 0, 0, 1, 2])):
        roll = rng.random()
        name = rng.choice(RICH_FIELDS)
        if roll < 0.5:
            obj[name] = _rich_value(rng)
        elif roll < 0.7:
            obj.pop(name, None)
        elif roll < 0.85:
            obj[name] = None
        else:
            obj[rng.choice(["N", "identifier", "x", ""])] = 1
    return obj


def test_fuzz_a_richer_schema() -> None:
    operation = parse("query Q($r: Rich!, $r2: Rich!) { a: rich(r: $r) b: rich(r: $r2) }").definitions[0]
    assert isinstance(operation, OperationDefinitionNode)
    compiled = plans._Variables.of(RICH_SCHEMA, operation)
    assert compiled is not None
    plan = plans.Plan(operation, "Query", (), compiled)
    rng = random.Random(7)
    outcomes: collections.Counter[str] = collections.Counter()
    for _ in range(30_000):
        given = {"r": _rich_input(rng), "r2": _rich_input(rng)}
        if rng.random() < 0.05:
            given.pop(rng.choice(["r", "r2"]))
        outcomes[_check(plan, RICH_SCHEMA, given)] += 1
    assert outcomes["coerced"] > 1000, outcomes
    assert outcomes["refused"] > 1000, outcomes


@pytest.mark.parametrize(
    "document",
    [
        "query Q($r: Rich) { rich(r: $r) }",  # nullable
        "query Q($r: Rich! = {n: 1, en: RED}) { rich(r: $r) }",  # a default of its own
        "query Q($r: Rich! @deprecated) { rich(r: $r) }",  # a directive
        "query Q($r: [Rich!]!) { rich(r: $r) }",  # a list
        "query Q($r: Unknown!) { rich(r: $r) }",  # not in the schema
        "query Q($r: String!) { rich(r: {n: 1, en: RED}, q: null) }",
    ],
)
def test_other_shapes_are_left_to_graphql_core(document: str) -> None:
    operation = parse(document).definitions[0]
    assert isinstance(operation, OperationDefinitionNode)
    assert plans._Variables.of(RICH_SCHEMA, operation) is None


def test_no_variables_at_all() -> None:
    operation = parse("query Q { rich(r: {n: 1, en: RED}) }").definitions[0]
    assert isinstance(operation, OperationDefinitionNode)
    compiled = plans._Variables.of(RICH_SCHEMA, operation)
    assert compiled is not None
    plan = plans.Plan(operation, "Query", (), compiled)
    cases: list[dict[str, Any]] = [{}, {"x": 1}, {"r": None}]
    for given in cases:
        _check(plan, RICH_SCHEMA, given)
