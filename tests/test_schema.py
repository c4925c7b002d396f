"""The GraphQL schema: the committed file, the contract's names, descriptions everywhere."""

from __future__ import annotations

from pathlib import Path

from graphql import GraphQLEnumType, GraphQLInputObjectType, GraphQLInterfaceType, GraphQLObjectType, GraphQLUnionType

from gateway.api.schema import schema
from gateway.api.types import ERROR_TYPES
from gateway.cli import exported_schema
from gateway.domain import CAUSES, ErrorCode

ROOT = Path(__file__).resolve().parent.parent


def test_committed_schema_is_what_the_code_exports() -> None:
    assert (ROOT / "schema.graphql").read_text(encoding="utf-8") == exported_schema()


def test_every_cause_has_one_error_type_in_the_union() -> None:
    assert set(ERROR_TYPES) == set(ErrorCode) == set(CAUSES)
    union = schema._schema.get_type("RegenerateAccessCodeResult")
    assert isinstance(union, GraphQLUnionType)
    members = [member.name for member in union.types]
    assert members[0] == "BootstrapCredentials"
    assert len(members) == 17
    error = schema._schema.get_type("Error")
    for member in union.types[1:]:
        assert error in member.interfaces
        assert member.name.endswith("Error")


def test_every_type_field_and_argument_is_described() -> None:
    for name, graphql_type in schema._schema.type_map.items():
        if name.startswith("__") or name in {"String", "Int", "Boolean", "Float", "ID"}:
            continue
        assert graphql_type.description, name
        if isinstance(graphql_type, GraphQLObjectType | GraphQLInterfaceType | GraphQLInputObjectType):
            for field_name, field in graphql_type.fields.items():
                assert field.description, f"{name}.{field_name}"
        if isinstance(graphql_type, GraphQLEnumType):
            assert graphql_type.values


def test_the_contracts_input_names() -> None:
    input_type = schema._schema.get_type("RegenerateAccessCodeInput")
    assert isinstance(input_type, GraphQLInputObjectType)
    assert list(input_type.fields) == ["studyId", "mode", "subjectId", "inventoryId", "mSubjectId"]
