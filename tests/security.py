"""Doubles for the authentication and hardening tests: signing keys, hand-forged tokens, a real
loopback JWKS server, a backend that records who reached it, and SQLite-only settings."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.domain import DEVICE_ACTIONS_POST, Attempt, Caller, Credentials, DeviceRef, Readiness
from gateway.settings import Settings
from tests.demo import STUDY, TEST_AUDIT_KEY, TEST_HS256_SECRET, TEST_KDF_COST

ISSUER = "https://idp.example.test/"
AUDIENCE = "clinical-one-gateway-test"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@cache
def rsa_key(name: str) -> rsa.RSAPrivateKey:
    """A 2048-bit RSA key per name, made once per test run."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def ec_key(name: str) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: PrivateKey, kid: str) -> dict[str, Any]:
    """The key's public half as a JWK, as an identity provider publishes it."""
    if isinstance(key, rsa.RSAPrivateKey):
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        alg = "RS256"
    else:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        alg = "ES256"
    return {**jwk, "kid": kid, "use": "sig", "alg": alg}


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def claims(**overrides: Any) -> dict[str, Any]:
    """Claims the JWKS-backed test gateway accepts; `None` values are dropped."""
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "azp": "site-portal",
        "iat": now,
        "exp": now + 300,
        "rights": {STUDY: {"active": [DEVICE_ACTIONS_POST]}},
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def sign(payload: dict[str, Any], key: PrivateKey, *, kid: str | None, alg: str = "RS256") -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def forge(header: dict[str, Any], payload: dict[str, Any], *, hmac_key: bytes | None = None) -> str:
    """A token built by hand, as an attacker would: unsigned, or HMAC-signed with any key."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if hmac_key is None:
        return signing_input + "."
    signature = hmac.new(hmac_key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


@dataclass
class JwksServer:
    """A tiny identity provider's JWKS endpoint; `keys` can change between requests."""

    keys: list[dict[str, Any]]
    hits: int = 0
    url: str = ""
    app: Starlette = field(init=False)

    def __post_init__(self) -> None:
        async def jwks(request: Request) -> Response:
            self.hits += 1
            return JSONResponse({"keys": self.keys})

        self.app = Starlette(routes=[Route("/.well-known/jwks.json", jwks)])


class RecordingBackend:
    """A backend that answers every request with the same credentials and remembers each caller:
    proof of whether a request reached the backend at all."""

    name = "local"

    def __init__(self) -> None:
        self.callers: list[Caller] = []

    async def readiness(self) -> Readiness:

        return Readiness(True)

    async def regenerate(self, ref: DeviceRef, caller: Caller, attempt: Attempt) -> Credentials:
        self.callers.append(caller)
        return Credentials(access_id="ABC234", otp="ABCD2345", device_id="F" * 32, expires_at=None)


@dataclass
class ServedGateway:
    """A gateway served on loopback over a `RecordingBackend`, and a client with a valid token."""

    client: httpx.AsyncClient
    backend: RecordingBackend

    async def graphql(self, document: str, **extra: Any) -> dict[str, Any]:
        response = await self.client.post("/graphql", json={"query": document, **extra})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def sqlite_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Settings for one test: its own SQLite store and data folder, the test HS256 secret, checked."""
    key_file = tmp_path / "audit.key"  # production wants the audit key outside the data folder
    tmp_path.mkdir(parents=True, exist_ok=True)
    key_file.write_text(TEST_AUDIT_KEY.hex())
    values: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'store.sqlite3'}",
        "data_dir": str(tmp_path / "data"),
        "kdf_cost": TEST_KDF_COST,
        "auth_hs256_secret": TEST_HS256_SECRET,
        "audit_key_file": str(key_file),
    }
    values.update(overrides)
    return Settings().replace(**values)
