"""The scenarios of `scripts/bench`, as data: which server, what it is sent, what it is compared with.

Every scenario sends the same `regenerateAccessCode` request body (the study and the device vary),
rotating over `DEVICES` seeded ready devices so that no device rate limit or device lock is hot.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypedDict

from benchmarks.checks import Check, CostBelow, KdfShare, P50Within, RatioAtLeast, RssGrowthWithin, SideP99Below

STUDY = "BE0C4A1F2D3E4F5061728394A5B6C7D8"
UNKNOWN_STUDY = "0BADBADBADBADBADBADBADBADBADBAD0"
DEVICES = 500
MUTATION = (
    "mutation Regenerate($input: RegenerateAccessCodeInput!) { regenerateAccessCode(input: $input) "
    "{ __typename ... on BootstrapCredentials { accessId otp id } ... on Error { code message } } }"
)
SUCCESS = "BootstrapCredentials"
REFUSAL = "StudyNotFoundError"


class Server(StrEnum):
    PLAIN = "plain"
    """`benchmarks.peers.plain` under uvicorn."""
    GATEWAY = "gateway"
    """`python -m gateway serve`."""
    APOLLO = "apollo"
    """`benchmarks/peers/apollo` under Node."""


class Need(StrEnum):
    NGINX = "nginx"
    NODE = "node"
    POSTGRES = "postgres"


@dataclass(frozen=True)
class Scenario:
    """One server under one load. `env` values may name `{upstream_url}`, `{hs256_secret}`,
    `{postgres_url}` and `{postgres_schema}`, filled in when the server starts."""

    key: str
    title: str
    server: Server
    path: str = "/graphql"
    study: str = STUDY
    expect: str = SUCCESS
    """Text every good response body contains."""
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    baseline: str | None = None
    checks: tuple[Check, ...] = ()
    needs: frozenset[Need] = frozenset()
    authenticated: bool = False
    """Send a valid bearer token (from `gateway token`)."""
    kdf_reference: bool = False
    """Measure the KDF's own rate in each round and load /healthz beside the main load."""

    @property
    def group(self) -> str:
        """What `--only` selects it by: `5` for 5, 5p and 5a."""
        match = re.match(r"\d+", self.key)
        return match.group() if match else self.key

    @property
    def seeded(self) -> bool:
        """A local-engine gateway: seed the bench registry into its store before it starts."""
        return self.server is Server.GATEWAY and self.env.get("GATEWAY_BACKEND") != "upstream"


def _env(**values: str) -> Mapping[str, str]:
    return MappingProxyType(values)


class _Workload(TypedDict):
    study: str
    expect: str


_REFUSAL = _Workload(study=UNKNOWN_STUDY, expect=REFUSAL)
_RSS = RssGrowthWithin(0.10)
_UPSTREAM = _env(GATEWAY_BACKEND="upstream", GATEWAY_UPSTREAM_URL="{upstream_url}")

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("1", "plain Starlette route (JSON in, secrets, JSON out)", Server.PLAIN),
    Scenario(
        "2",
        "gateway, local engine, StudyNotFoundError, audit + limits on",
        Server.GATEWAY,
        **_REFUSAL,
        baseline="1",
        checks=(RatioAtLeast("1", 0.20), _RSS),
    ),
    Scenario(
        "3",
        "gateway, local engine, success, KDF cost 4",
        Server.GATEWAY,
        env=_env(GATEWAY_KDF_COST="4"),
        baseline="1",
        checks=(RatioAtLeast("1", 0.12), _RSS),
    ),
    Scenario(
        "4",
        "gateway, local engine, success, default KDF (cost 14)",
        Server.GATEWAY,
        # Each regeneration pays its hash: with an OTP reserve, a round would first drain what was
        # hashed between rounds, on this core, during the next scenario's round.
        env=_env(GATEWAY_OTP_RESERVE="0"),
        kdf_reference=True,
        checks=(KdfShare(0.9), SideP99Below(5.0), _RSS),
    ),
    Scenario(
        "5p",
        "plain Starlette + httpx proxy route to nginx",
        Server.PLAIN,
        path="/proxy",
        env=_env(BENCH_UPSTREAM_URL="{upstream_url}"),
        needs=frozenset({Need.NGINX}),
    ),
    Scenario(
        "5a",
        "Apollo Server 5 + RESTDataSource (Node) to nginx",
        Server.APOLLO,
        env=_env(UPSTREAM_URL="{upstream_url}", NODE_ENV="production"),
        baseline="5p",
        needs=frozenset({Need.NGINX, Need.NODE}),
    ),
    Scenario(
        "5",
        "gateway, upstream mode, to nginx",
        Server.GATEWAY,
        env=_UPSTREAM,
        baseline="5p",
        checks=(RatioAtLeast("5a", 1.0), P50Within("5p", 1.0), _RSS),
        needs=frozenset({Need.NGINX}),
    ),
    Scenario(
        "6",
        "scenario 2 with authentication on (HS256 bearer token)",
        Server.GATEWAY,
        **_REFUSAL,
        env=_env(GATEWAY_INSECURE_DISABLE_AUTH="false", GATEWAY_AUTH_HS256_SECRET="{hs256_secret}"),
        authenticated=True,
        baseline="2",
        checks=(CostBelow("2", 0.10, "authentication"), _RSS),
    ),
    Scenario(
        "7",
        "scenario 2 on PostgreSQL",
        Server.GATEWAY,
        **_REFUSAL,
        env=_env(GATEWAY_DATABASE_URL="{postgres_url}", GATEWAY_DATABASE_SCHEMA="{postgres_schema}"),
        baseline="1",
        checks=(_RSS,),
        needs=frozenset({Need.POSTGRES}),
    ),
)
GROUPS = ("1", "2", "3", "4", "5", "6", "7", "fanout")
"""What `--only` accepts: scenario numbers (5 is the gateway with both its peers) and `fanout`."""


def select(groups: Iterable[str]) -> tuple[Scenario, ...]:
    """The scenarios of `groups` and, transitively, the baselines they are compared with, in table order."""
    by_key = {s.key: s for s in SCENARIOS}
    chosen = {s.key for s in SCENARIOS if s.group in set(groups)}
    pending = list(chosen)
    while pending:
        baseline = by_key[pending.pop()].baseline
        if baseline is not None and baseline not in chosen:
            chosen.add(baseline)
            pending.append(baseline)
    return tuple(s for s in SCENARIOS if s.key in chosen)


def subject_id(index: int) -> str:
    return f"5B{index:030X}"


def inventory_id(index: int) -> str:
    return f"BENCH-{index}"


def registry(devices: int = DEVICES) -> dict[str, Any]:
    """A `gateway seed` file: one study with `devices` subjects, each with one ready device-to-cloud device."""
    return {
        "studies": [{"id": STUDY, "modes": ["active"], "mhealthSettings": ["active"]}],
        "subjects": [
            {"id": subject_id(i), "studyId": STUDY, "mode": "active", "mSubjectId": inventory_id(i)}
            for i in range(devices)
        ],
        "devices": [
            {
                "inventoryId": inventory_id(i),
                "studyId": STUDY,
                "mode": "active",
                "instanceId": f"{i:032X}",
                "connectionType": "DEVICE_TO_CLOUD",
                "vendorCode": None,
                "registered": True,
                "dispensedTo": subject_id(i),
            }
            for i in range(devices)
        ],
    }


def request_body(study: str, index: int) -> str:
    """The GraphQL POST body for device `index` (compact JSON: one line)."""
    fields = {
        "studyId": study,
        "mode": "ACTIVE",
        "subjectId": subject_id(index),
        "inventoryId": inventory_id(index),
        "mSubjectId": inventory_id(index),
    }
    return json.dumps({"query": MUTATION, "variables": {"input": fields}}, separators=(",", ":"))


def request_bodies(study: str, devices: int = DEVICES) -> str:
    """wrk's body file for `study`: one request body per line, one line per device."""
    return "".join(request_body(study, i) + "\n" for i in range(devices))
