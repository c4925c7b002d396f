"""Input parsing, the cause table and the refusals."""

from __future__ import annotations

import pytest

from gateway.domain import CAUSES, ErrorCode, InvalidInput, Refusal, parse_guid, parse_token


def test_guids_are_normalised() -> None:
    assert parse_guid("de305d54-75b4-431b-adb2-eb6b9e546014", "studyId") == "DE305D5475B4431BADB2EB6B9E546014"


@pytest.mark.parametrize(
    "value", ["de305d5475b4431badb2eb6b9e54601", "de305d54-75b4-431b-adb2-eb6b9e546014-", "-" * 36]
)
def test_bad_guids_name_the_field(value: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_guid(value, "subjectId")
    assert caught.value.field == "subjectId"


def test_guid_shaped_tokens_are_normalised_others_kept() -> None:
    assert parse_token("b1b8327a-faa6-4122-8710-6192ab5984ef", "inventoryId") == "B1B8327AFAA6412287106192AB5984EF"
    assert parse_token("Kit.42_a-b", "inventoryId") == "Kit.42_a-b"


def test_the_cause_table_is_consistent() -> None:
    assert len({cause.rest_code for cause in CAUSES.values()}) == len(CAUSES)
    documented = [cause for cause in CAUSES.values() if cause.documented]
    assert sorted(cause.http_status for cause in documented) == [400] * 8 + [404] + [500] * 2


@pytest.mark.parametrize(
    "code", [ErrorCode.INVALID_INPUT, ErrorCode.RATE_LIMITED, ErrorCode.UNRECOGNIZED_UPSTREAM_ERROR]
)
def test_a_cause_with_facts_is_raised_only_with_them(code: ErrorCode) -> None:
    with pytest.raises(TypeError):
        Refusal(code)
