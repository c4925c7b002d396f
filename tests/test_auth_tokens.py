"""The authenticator's own rules beyond PyJWT's: NumericDates only, a bounded lifetime, and a
verified token remembered briefly (by a digest) instead of checked again on every request."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from gateway.auth import InvalidToken
from gateway.auth.development import mint_token
from gateway.auth.keys import SecretKey
from gateway.auth.tokens import VERIFIED_FOR, Authenticator
from tests.demo import TEST_HS256_SECRET

pytestmark = pytest.mark.anyio

SECRET = TEST_HS256_SECRET.encode()
ISSUER, AUDIENCE = "test-issuer", "test-audience"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def authenticator(clock: Clock, **options: Any) -> Authenticator:
    return Authenticator(
        SecretKey(SECRET), issuer=ISSUER, audience=AUDIENCE, algorithms=["HS256"], clock=clock, **options
    )


def signed(**claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "someone", "iat": now, "exp": now + 600, **claims}
    return "Bearer " + jwt.encode(body, SECRET, algorithm="HS256")


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
async def test_dates_are_numbers_not_strings(claim: str) -> None:
    now = int(time.time())
    value = str(now + 600 if claim == "exp" else now - 10)
    with pytest.raises(InvalidToken, match=f"the {claim} claim must be a number"):
        await authenticator(Clock()).authenticate(signed(**{claim: value}))


async def test_a_token_that_lives_too_long_is_refused() -> None:
    now = int(time.time())
    gate = authenticator(Clock(), max_lifetime=3600)
    await gate.authenticate(signed(iat=now, exp=now + 3600))
    with pytest.raises(InvalidToken, match="lives longer than 3600 s"):
        await gate.authenticate(signed(iat=now, exp=now + 7200))
    without_iat = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "someone", "exp": now + 7200}, SECRET, algorithm="HS256"
    )
    with pytest.raises(InvalidToken, match="lives longer"):
        await gate.authenticate(f"Bearer {without_iat}")


async def test_a_verified_token_is_remembered_briefly(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    gate = authenticator(clock)
    decoded: list[str] = []
    decode = jwt.decode

    def counting(*args: Any, **kwargs: Any) -> Any:
        decoded.append("once")
        return decode(*args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    token = "Bearer " + mint_token(SECRET, issuer=ISSUER, audience=AUDIENCE, rights={}, ttl_seconds=600)
    first = await gate.authenticate(token)
    for _ in range(5):
        assert await gate.authenticate(token) == first
    assert len(decoded) == 1
    clock.now += VERIFIED_FOR + 1
    await gate.authenticate(token)
    assert len(decoded) == 2, "a remembered token is checked again after VERIFIED_FOR"
    clock.now += 600  # past the token's exp by the authenticator's clock: never served from memory then
    await gate.authenticate(token)  # (PyJWT checks exp against the real time, which has not moved)
    assert len(decoded) == 3
