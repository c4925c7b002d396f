"""Authentication over real HTTP: bearer JWTs against a loopback JWKS server or an HS256 secret.

Every forged, expired or misdirected token is refused with 401 (503 when the JWKS cannot be
fetched) before any resolver runs: `RecordingBackend` proves nobody reached the backend.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.auth import (
    DEV_SECRET_FILE,
    Authenticator,
    InvalidToken,
    JwksKeys,
    KeysUnavailable,
    SecretKey,
    development_secret,
    development_token,
    parse_rights,
)
from gateway.cli import main
from gateway.domain import DEVICE_ACTIONS_POST, Principal, StudyMode
from gateway.settings import Settings, SettingsError
from tests.demo import REGENERATE, STUDY, TEST_HS256_SECRET, bearer, device_input, rest_path
from tests.security import (
    AUDIENCE,
    ISSUER,
    JwksServer,
    RecordingBackend,
    claims,
    ec_key,
    forge,
    public_jwk,
    public_pem,
    rsa_key,
    sign,
    sqlite_settings,
)
from tests.utils import free_port, run_server

pytestmark = pytest.mark.anyio

OTHER_STUDY = "0123456789ABCDEF0123456789ABCDEF"


@dataclass
class Gateway:
    """A served gateway, a client without credentials, and the backend behind it."""

    client: httpx.AsyncClient
    backend: RecordingBackend
    settings: Settings

    async def regenerate(self, token: str | None) -> httpx.Response:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return await self.client.post(
            "/graphql", json={"query": REGENERATE, "variables": {"input": device_input()}}, headers=headers
        )


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[Gateway]:
    backend = RecordingBackend()
    async with run_server(create_app(settings, backend=backend)) as url, httpx.AsyncClient(base_url=url) as client:
        yield Gateway(client, backend, settings)


def jwks_settings(tmp_path: Path, jwks_url: str) -> Settings:
    return sqlite_settings(
        tmp_path,
        auth_hs256_secret="",
        auth_jwks_url=jwks_url,
        auth_issuer=ISSUER,
        auth_audience=AUDIENCE,
        rate_limit_device=0,  # one gateway serves many cases: rate limits are not under test here
        rate_limit_caller=0,
    )


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module-wide, so that one JWKS server and one gateway serve the many token cases."""
    return "asyncio"


@pytest.fixture(scope="module")
async def jwks() -> AsyncIterator[JwksServer]:
    """The identity provider's JWKS, served on loopback: one RSA key and one P-256 key."""
    server = JwksServer([public_jwk(rsa_key("a"), "key-a"), public_jwk(ec_key("e"), "key-e")])
    async with run_server(server.app) as url:
        server.url = f"{url}/.well-known/jwks.json"
        yield server


@pytest.fixture(scope="module")
async def jwks_gateway(jwks: JwksServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Gateway]:
    async with serve(jwks_settings(tmp_path_factory.mktemp("jwks-gateway"), jwks.url)) as served:
        yield served


@pytest.fixture
def gateway(jwks_gateway: Gateway) -> Gateway:
    """The gateway checking tokens against `jwks` (allow-list: RS256, ES256); no caller recorded yet."""
    jwks_gateway.backend.callers.clear()
    return jwks_gateway


def assert_refused(response: httpx.Response, backend: RecordingBackend, *, invalid: bool = True) -> None:
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert ('error="invalid_token"' in challenge) is invalid
    assert response.headers["cache-control"] == "no-store"
    assert backend.callers == []


# ---------------------------------------------------------------------------------------------
# Valid tokens


@pytest.mark.parametrize(
    ("key", "kid", "alg"),
    [pytest.param("rsa", "key-a", "RS256", id="RS256"), pytest.param("ec", "key-e", "ES256", id="ES256")],
)
async def test_a_valid_token_reaches_the_backend_with_its_principal(
    gateway: Gateway, key: str, kid: str, alg: str
) -> None:
    private = rsa_key("a") if key == "rsa" else ec_key("e")
    response = await gateway.regenerate(sign(claims(), private, kid=kid, alg=alg))
    assert response.status_code == 200, response.text
    assert response.json()["data"]["regenerateAccessCode"]["__typename"] == "BootstrapCredentials"
    [caller] = gateway.backend.callers
    assert caller.principal == Principal(
        subject="alice", client_id="site-portal", rights={STUDY: {"active": frozenset({DEVICE_ACTIONS_POST})}}
    )


async def test_the_leeway_forgives_a_few_seconds_of_clock_skew(gateway: Gateway) -> None:
    token = sign(claims(exp=int(time.time()) - 10), rsa_key("a"), kid="key-a")
    assert (await gateway.regenerate(token)).status_code == 200


async def test_keys_are_cached(gateway: Gateway, jwks: JwksServer) -> None:
    hits = jwks.hits
    for _ in range(3):
        assert (await gateway.regenerate(sign(claims(), rsa_key("a"), kid="key-a"))).status_code == 200
    assert jwks.hits == hits <= 1


# ---------------------------------------------------------------------------------------------
# Forged and misdirected tokens


def _forged(case: str) -> str:
    key = rsa_key("a")
    now = int(time.time())
    if case == "alg-none":
        return forge({"alg": "none", "typ": "JWT", "kid": "key-a"}, claims())
    if case == "alg-none-capitalised":
        return forge({"alg": "None", "kid": "key-a"}, claims())
    if case == "hs256-signed-with-the-rsa-public-key":
        return forge({"alg": "HS256", "typ": "JWT", "kid": "key-a"}, claims(), hmac_key=public_pem(key))
    if case == "hs256-signed-with-the-jwk-modulus":
        return forge({"alg": "HS256", "kid": "key-a"}, claims(), hmac_key=public_jwk(key, "key-a")["n"].encode())
    if case == "signed-by-another-key-under-a-known-kid":
        return sign(claims(), rsa_key("attacker"), kid="key-a")
    if case == "es256-header-on-the-rsa-key":
        return sign(claims(), ec_key("attacker"), kid="key-a", alg="ES256")
    if case == "rs512-not-on-the-allow-list":
        return sign(claims(), key, kid="key-a", alg="RS512")
    if case == "unknown-kid":
        return sign(claims(), rsa_key("attacker"), kid="key-z")
    if case == "no-kid":
        return sign(claims(), key, kid=None)
    if case == "wrong-issuer":
        return sign(claims(iss="https://evil.example/"), key, kid="key-a")
    if case == "wrong-audience":
        return sign(claims(aud="some-other-api"), key, kid="key-a")
    if case == "no-audience":
        return sign(claims(aud=None), key, kid="key-a")
    if case == "expired":
        return sign(claims(iat=now - 900, exp=now - 120), key, kid="key-a")
    if case == "missing-exp":
        return sign(claims(exp=None), key, kid="key-a")
    if case == "not-yet-valid":
        return sign(claims(nbf=now + 600), key, kid="key-a")
    if case == "missing-sub":
        return sign(claims(sub=None), key, kid="key-a")
    if case == "rights-not-an-object":
        return sign(claims(rights=[DEVICE_ACTIONS_POST]), key, kid="key-a")
    if case == "rights-with-an-unknown-mode":
        return sign(claims(rights={STUDY: {"production": [DEVICE_ACTIONS_POST]}}), key, kid="key-a")
    if case == "tampered-payload":
        header, _, signature = sign(claims(), key, kid="key-a").split(".")
        payload = forge({}, claims(rights={"*": {"*": [DEVICE_ACTIONS_POST]}})).split(".")[1]
        return f"{header}.{payload}.{signature}"
    assert case == "garbage"
    return "not.a.token"


FORGED = [
    "alg-none",
    "alg-none-capitalised",
    "hs256-signed-with-the-rsa-public-key",
    "hs256-signed-with-the-jwk-modulus",
    "signed-by-another-key-under-a-known-kid",
    "es256-header-on-the-rsa-key",
    "rs512-not-on-the-allow-list",
    "unknown-kid",
    "no-kid",
    "wrong-issuer",
    "wrong-audience",
    "no-audience",
    "expired",
    "missing-exp",
    "not-yet-valid",
    "missing-sub",
    "rights-not-an-object",
    "rights-with-an-unknown-mode",
    "tampered-payload",
    "garbage",
]


@pytest.mark.parametrize("case", FORGED)
async def test_forged_tokens_are_refused_before_any_resolver(gateway: Gateway, case: str) -> None:
    response = await gateway.regenerate(_forged(case))
    assert_refused(response, gateway.backend)
    assert response.json()["error"] == "invalid_token"


@pytest.mark.parametrize("case", ["alg-none", "hs256-signed-with-the-rsa-public-key", "expired"])
async def test_the_rest_face_refuses_them_too(gateway: Gateway, case: str) -> None:
    response = await gateway.client.put(rest_path(), headers={"Authorization": f"Bearer {_forged(case)}"})
    assert_refused(response, gateway.backend)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(None, id="no-header"),
        pytest.param("", id="empty"),
    ],
)
async def test_a_missing_token_gets_a_plain_challenge(gateway: Gateway, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = await gateway.client.post("/graphql", json={"query": "{ gateway { version } }"}, headers=headers)
    assert_refused(response, gateway.backend, invalid=False)
    assert response.headers["www-authenticate"] == 'Bearer realm="gateway"'
    put = await gateway.client.put(rest_path())
    assert_refused(put, gateway.backend, invalid=False)


@pytest.mark.parametrize(
    "header",
    ["Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer two tokens", "bearer " + "x" * 9000],
    ids=["basic", "bearer-alone", "two-words", "over-long"],
)
async def test_malformed_authorization_headers_are_refused(gateway: Gateway, header: str) -> None:
    response = await gateway.client.post(
        "/graphql", json={"query": "{ gateway { version } }"}, headers={"Authorization": header}
    )
    assert_refused(response, gateway.backend)


async def test_get_queries_need_a_token_but_the_graphiql_page_does_not(gateway: Gateway) -> None:
    query = await gateway.client.get("/graphql", params={"query": "{ gateway { version } }"})
    assert_refused(query, gateway.backend, invalid=False)
    page = await gateway.client.get("/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200
    assert (await gateway.client.get("/healthz")).status_code == 200
    assert (await gateway.client.get("/no/such/route")).status_code == 401


async def test_no_token_reaches_the_logs(gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    tokens = [_forged("expired"), _forged("alg-none"), sign(claims(), rsa_key("a"), kid="key-a")]
    with caplog.at_level("DEBUG"):
        for token in tokens:
            await gateway.regenerate(token)
    logged = caplog.text
    for token in tokens:
        assert token not in logged
        assert token.split(".")[2] not in logged or not token.split(".")[2]


# ---------------------------------------------------------------------------------------------
# The JWKS: unreachable, stopped, rotated


async def test_an_unreachable_jwks_refuses_every_token(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}/.well-known/jwks.json"
    async with serve(jwks_settings(tmp_path, nowhere)) as gateway:
        response = await gateway.regenerate(sign(claims(), rsa_key("a"), kid="key-a"))
        assert response.status_code == 503
        assert response.json()["error"] == "temporarily_unavailable"
        assert response.headers["retry-after"]
        assert gateway.backend.callers == []
        # The forged ones are still refused as forged, without waiting for keys.
        assert (await gateway.regenerate(_forged("alg-none"))).status_code == 401


async def test_a_stopped_jwks_keeps_known_keys_and_refuses_unknown_ones(tmp_path: Path) -> None:
    server = JwksServer([public_jwk(rsa_key("a"), "key-a")])
    async with run_server(server.app) as url:
        settings = jwks_settings(tmp_path, f"{url}/.well-known/jwks.json")
        async with serve(settings) as gateway:
            assert (await gateway.regenerate(sign(claims(), rsa_key("a"), kid="key-a"))).status_code == 200
    # The JWKS server is gone; the gateway was restarted on the same settings: no key known, none fetchable.
    async with serve(settings) as gateway:
        response = await gateway.regenerate(sign(claims(), rsa_key("a"), kid="key-a"))
        assert response.status_code == 503
        assert gateway.backend.callers == []


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_unknown_kids_refetch_at_most_once_a_minute_and_rotation_works() -> None:
    server = JwksServer([public_jwk(rsa_key("a"), "key-a")])
    clock = FakeClock()
    async with (
        run_server(server.app) as url,
        httpx.AsyncClient() as http,
        JwksKeys(f"{url}/.well-known/jwks.json", http, clock=clock) as keys,
    ):
        assert await keys.key_for({"kid": "key-a"})
        assert server.hits == 1
        for _ in range(5):  # random kids cannot hammer the provider: within a minute, no refetch
            with pytest.raises(InvalidToken, match="unknown key"):
                await keys.key_for({"kid": "key-b"})
        assert server.hits == 1
        clock.now += 60
        for _ in range(5):  # a minute later: one refetch, still unknown
            with pytest.raises(InvalidToken, match="unknown key"):
                await keys.key_for({"kid": "key-b"})
        assert server.hits == 2
        server.keys.append(public_jwk(rsa_key("b"), "key-b"))  # the provider rotates
        clock.now += 30
        with pytest.raises(InvalidToken):
            await keys.key_for({"kid": "key-b"})
        assert server.hits == 2
        clock.now += 30
        assert await keys.key_for({"kid": "key-b"})
        assert server.hits == 3
        assert await keys.key_for({"kid": "key-a"})
        assert server.hits == 3


async def test_old_keys_are_refreshed_and_kept_when_the_refresh_fails() -> None:
    server = JwksServer([public_jwk(rsa_key("a"), "key-a")])
    clock = FakeClock()
    port = free_port()
    url = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    async with httpx.AsyncClient() as http, JwksKeys(url, http, max_age=300, clock=clock) as keys:
        async with run_server(server.app, port=port):
            await keys.key_for({"kid": "key-a"})
            clock.now += 301
            await keys.key_for({"kid": "key-a"})  # answered at once, the refresh in the background
            assert await keys.settled()
            assert server.hits == 2
        clock.now += 301
        assert await keys.key_for({"kid": "key-a"})  # the provider is down: the known key still verifies
        assert keys.fetches == 3
        with pytest.raises(KeysUnavailable):
            await keys.key_for({"kid": "key-new"})


async def test_a_jwks_that_is_down_is_retried_after_a_pause() -> None:
    clock = FakeClock()
    nowhere = f"http://127.0.0.1:{free_port()}/jwks"
    async with httpx.AsyncClient() as http, JwksKeys(nowhere, http, retry_after_failure=10, clock=clock) as keys:
        for _ in range(3):
            with pytest.raises(KeysUnavailable):
                await keys.key_for({"kid": "key-a"})
        assert keys.fetches == 1
        clock.now += 10
        with pytest.raises(KeysUnavailable):
            await keys.key_for({"kid": "key-a"})
        assert keys.fetches == 2


@pytest.mark.parametrize(
    "jwks_document",
    [
        pytest.param({"keys": [{"kty": "oct", "kid": "key-a", "k": "c2VjcmV0"}]}, id="symmetric-key"),
        pytest.param({"keys": [{**public_jwk(rsa_key("a"), "key-a"), "use": "enc"}]}, id="encryption-key"),
        pytest.param({"keys": [{**public_jwk(rsa_key("a"), "key-a"), "alg": "HS256"}]}, id="alg-does-not-fit"),
    ],
)
async def test_unusable_jwks_entries_are_left_out(jwks_document: dict[str, Any]) -> None:
    server = JwksServer(jwks_document["keys"])
    async with (
        run_server(server.app) as url,
        httpx.AsyncClient() as http,
        JwksKeys(f"{url}/.well-known/jwks.json", http) as keys,
    ):
        with pytest.raises(InvalidToken, match="unknown key"):
            await keys.key_for({"kid": "key-a"})


# ---------------------------------------------------------------------------------------------
# The rights claim


def test_the_rights_claim_is_parsed_and_normalised() -> None:
    lower_dashed = "de305d54-75b4-431b-adb2-eb6b9e546014"
    rights = parse_rights({lower_dashed: {"ACTIVE": ["DeviceActionsPost"]}, "*": {"*": ["Other"]}})
    assert rights == {STUDY: {"active": frozenset({"DeviceActionsPost"})}, "*": {"*": frozenset({"Other"})}}
    principal = Principal("bob", rights=rights)
    assert principal.may(DEVICE_ACTIONS_POST, STUDY, StudyMode.ACTIVE)
    assert not principal.may(DEVICE_ACTIONS_POST, STUDY, StudyMode.TEST)
    assert parse_rights(None) == {}


@pytest.mark.parametrize(
    "claim",
    [
        ["DeviceActionsPost"],
        {"not-a-guid": {"active": ["DeviceActionsPost"]}},
        {STUDY: ["DeviceActionsPost"]},
        {STUDY: {"live": ["DeviceActionsPost"]}},
        {STUDY: {"active": "DeviceActionsPost"}},
        {STUDY: {"active": [1]}},
        {STUDY: {"active": [""]}},
    ],
    ids=["list", "bad-study", "modes-a-list", "bad-mode", "rights-a-string", "right-a-number", "empty-right"],
)
def test_a_rights_claim_of_another_shape_is_a_bad_token(claim: object) -> None:
    with pytest.raises(InvalidToken, match="rights claim"):
        parse_rights(claim)


# ---------------------------------------------------------------------------------------------
# The embedded default: a development secret in the data folder, and `gateway token`


def test_the_development_secret_is_made_once_and_private(tmp_path: Path) -> None:
    first = development_secret(tmp_path / "data")
    assert development_secret(tmp_path / "data") == first
    assert len(first) >= 32
    path = tmp_path / "data" / DEV_SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [DEV_SECRET_FILE]


async def test_the_embedded_default_accepts_development_tokens(tmp_path: Path) -> None:
    settings = sqlite_settings(tmp_path, auth_hs256_secret="")
    async with serve(settings) as gateway:
        token = development_token(
            settings.auth, settings.data_dir, study=STUDY, mode="active", ttl_seconds=60, subject="dev"
        )
        response = await gateway.regenerate(token)
        assert response.status_code == 200, response.text
        assert gateway.backend.callers[0].principal == Principal(
            "dev", "gateway-token", {STUDY: {"active": frozenset({DEVICE_ACTIONS_POST})}}
        )
        # A token signed with another secret (here: the test one) is refused.
        assert (await gateway.regenerate(bearer(settings).removeprefix("Bearer "))).status_code == 401


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [name for name in os.environ if name.startswith("GATEWAY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("GATEWAY_ENV_FILE", "")
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.mark.parametrize(
    ("study", "mode", "granted", "refused"),
    [
        pytest.param(STUDY.lower(), "active", [(STUDY, StudyMode.ACTIVE)], [(STUDY, StudyMode.TEST)], id="one"),
        pytest.param(
            "*", "*", [(STUDY, StudyMode.TEST), (OTHER_STUDY, StudyMode.TRAINING)], [], id="every-study-and-mode"
        ),
        pytest.param(STUDY, "*", [(STUDY, StudyMode.TEST)], [(OTHER_STUDY, StudyMode.ACTIVE)], id="every-mode"),
    ],
)
async def test_gateway_token_prints_a_token_the_gateway_accepts(
    cli_env: Path,
    capsys: pytest.CaptureFixture[str],
    study: str,
    mode: str,
    granted: list[tuple[str, StudyMode]],
    refused: list[tuple[str, StudyMode]],
) -> None:
    assert main(["token", "--study", study, "--mode", mode, "--ttl", "120"]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert '{"Authorization": "Bearer ' + token + '"}' in err
    settings = Settings.from_env()
    authenticator = Authenticator(
        SecretKey(development_secret(cli_env)),
        issuer=settings.auth.issuer,
        audience=settings.auth.audience,
        algorithms=["HS256"],
    )
    principal = await authenticator.authenticate(f"Bearer {token}")
    assert principal.subject == "developer"
    for study_id, study_mode in granted:
        assert principal.may(DEVICE_ACTIONS_POST, study_id, study_mode)
    for study_id, study_mode in refused:
        assert not principal.may(DEVICE_ACTIONS_POST, study_id, study_mode)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--study", "NOPE", "--mode", "active"], {}, "--study must be a 32-character hexadecimal GUID"),
        (["--study", "*", "--mode", "live"], {}, "--mode must be active, test, training or *"),
        (["--study", "*", "--mode", "*", "--ttl", "5"], {}, "--ttl must be between"),
        (
            ["--study", "*", "--mode", "*"],
            {"GATEWAY_AUTH_JWKS_URL": "https://idp.example/jwks"},
            "get a token from that identity provider",
        ),
        (
            ["--study", "*", "--mode", "*"],
            {"GATEWAY_PRODUCTION": "true", "GATEWAY_AUTH_HS256_SECRET": TEST_HS256_SECRET},
            "refused when GATEWAY_PRODUCTION=true",
        ),
    ],
    ids=["bad-study", "bad-mode", "short-ttl", "jwks", "production"],
)
def test_gateway_token_refusals(
    cli_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    env: dict[str, str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["token", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert message in err


# ---------------------------------------------------------------------------------------------
# Switching authentication off, and production


async def test_auth_can_be_switched_off_only_by_its_insecure_setting(tmp_path: Path) -> None:
    async with serve(sqlite_settings(tmp_path, insecure_disable_auth=True)) as gateway:
        response = await gateway.client.post("/graphql", json={"query": "{ gateway { version } }"})
        assert response.status_code == 200
        assert response.json() == {"data": {"gateway": {"version": "0.1.0"}}}


async def test_production_turns_introspection_and_graphiql_off(tmp_path: Path) -> None:
    introspection = {"query": "{ __schema { queryType { name } } }"}
    async with serve(sqlite_settings(tmp_path / "dev")) as gateway:
        headers = {"Authorization": bearer(gateway.settings)}
        allowed = await gateway.client.post("/graphql", json=introspection, headers=headers)
        assert allowed.json() == {"data": {"__schema": {"queryType": {"name": "Query"}}}}
    async with serve(sqlite_settings(tmp_path / "prod", production=True)) as gateway:
        headers = {"Authorization": bearer(gateway.settings)}
        refused = await gateway.client.post("/graphql", json=introspection, headers=headers)
        assert refused.json()["data"] is None
        assert "introspection" in refused.json()["errors"][0]["message"].lower()
        page = await gateway.client.get("/graphql", headers={"accept": "text/html"})
        assert page.status_code == 404
        ordinary = await gateway.client.post("/graphql", json={"query": "{ gateway { version } }"}, headers=headers)
        assert ordinary.json() == {"data": {"gateway": {"version": "0.1.0"}}}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GATEWAY_PRODUCTION": "true", "GATEWAY_INSECURE_DISABLE_AUTH": "true"}, "GATEWAY_INSECURE_DISABLE_AUTH"),
        ({"GATEWAY_PRODUCTION": "true"}, "the development secret file is refused in production"),
        (
            {"GATEWAY_PRODUCTION": "true", "GATEWAY_AUTH_JWKS_URL": "http://idp.example/jwks"},
            "must use https when GATEWAY_PRODUCTION=true",
        ),
        (
            {"GATEWAY_AUTH_JWKS_URL": "https://idp.example/jwks", "GATEWAY_AUTH_HS256_SECRET": "s" * 32},
            "not both",
        ),
        ({"GATEWAY_AUTH_ALGORITHMS": "HS256,none"}, "must not allow 'none'"),
        ({"GATEWAY_AUTH_ALGORITHMS": "RS1"}, "'RS1' is not one of"),
        (
            {"GATEWAY_AUTH_JWKS_URL": "https://idp.example/jwks", "GATEWAY_AUTH_ALGORITHMS": "RS256,HS256"},
            "must not list HS* algorithms",
        ),
        ({"GATEWAY_AUTH_ALGORITHMS": "RS256"}, "may list only HS* algorithms"),
        ({"GATEWAY_AUTH_HS256_SECRET": "short"}, "at least 32 characters"),
        ({"GATEWAY_AUTH_ISSUER": " "}, "must not be empty"),
        ({"GATEWAY_MAX_BODY_BYTES": "10"}, "GATEWAY_MAX_BODY_BYTES must be between"),
        ({"GATEWAY_TRUSTED_DOCUMENTS": "/no/such/file.json"}, "must name a readable file"),
    ],
    ids=[
        "production-without-auth",
        "production-dev-secret",
        "production-plain-http-jwks",
        "jwks-and-secret",
        "none",
        "unknown-alg",
        "hmac-with-jwks",
        "rsa-with-secret",
        "short-secret",
        "empty-issuer",
        "tiny-body-limit",
        "missing-trusted-documents",
    ],
)
def test_auth_settings_are_checked(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("*", r"\*")):
        Settings.from_env({"GATEWAY_ENV_FILE": "", **env})


def test_auth_settings_defaults() -> None:
    settings = Settings.from_env({"GATEWAY_ENV_FILE": ""})
    assert settings.auth.allowed_algorithms == ("HS256",)
    assert not settings.production
    assert not settings.auth.insecure_disable_auth
    jwks = Settings.from_env({"GATEWAY_ENV_FILE": "", "GATEWAY_AUTH_JWKS_URL": "https://idp.example/jwks"})
    assert jwks.auth.allowed_algorithms == ("RS256", "ES256")
    production = Settings.from_env(
        {"GATEWAY_ENV_FILE": "", "GATEWAY_PRODUCTION": "yes", "GATEWAY_AUTH_JWKS_URL": "https://idp.example/jwks"}
    )
    assert production.production
    secret = "a-secret-that-must-never-be-printed-anywhere"
    assert secret not in repr(Settings.from_env({"GATEWAY_ENV_FILE": "", "GATEWAY_AUTH_HS256_SECRET": secret}))
