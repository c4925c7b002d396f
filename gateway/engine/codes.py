"""Making and checking credentials: the alphabet, the draw, and the OTP's salted scrypt hash.

Hashing is deliberately slow; callers on the event loop use `hash_otp_async`/`verify_otp_async`,
which run it in a worker thread.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import anyio.to_thread

# Upper case letters and digits without the look-alikes 0/O and 1/I/L: 31 symbols.
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
ACCESS_ID_LENGTH = 6
OTP_LENGTH = 8
_R, _P = 8, 1
_SALT_BYTES = 16


def draw(length: int) -> str:
    """`length` symbols of `ALPHABET`, each from `secrets`."""
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def new_access_id() -> str:
    return draw(ACCESS_ID_LENGTH)


def new_otp() -> str:
    return draw(OTP_LENGTH)


def _scrypt(otp: str, salt: bytes, cost: int) -> bytes:
    n = 1 << cost
    return hashlib.scrypt(otp.encode(), salt=salt, n=n, r=_R, p=_P, maxmem=256 * n * _R, dklen=32)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_otp(otp: str, cost: int) -> str:
    """`scrypt$<log2 N>$<r>$<p>$<salt>$<hash>`: self-describing, so the cost can change later."""
    salt = secrets.token_bytes(_SALT_BYTES)
    return f"scrypt${cost}${_R}${_P}${_b64(salt)}${_b64(_scrypt(otp, salt, cost))}"


def verify_otp(otp: str, encoded: str) -> bool:
    """Constant-time check of `otp` against a `hash_otp` value."""
    try:
        scheme, cost, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt" or (int(r), int(p)) != (_R, _P):
            return False
        candidate = _scrypt(otp, base64.b64decode(salt), int(cost))
    except ValueError:
        return False
    return hmac.compare_digest(candidate, base64.b64decode(digest))


async def hash_otp_async(otp: str, cost: int) -> str:
    return await anyio.to_thread.run_sync(hash_otp, otp, cost)


async def verify_otp_async(otp: str, encoded: str) -> bool:
    return await anyio.to_thread.run_sync(verify_otp, otp, encoded)
