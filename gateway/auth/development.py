"""The development secret and the tokens it signs (`gateway token`), and what `gateway serve` says about auth.

With no auth settings (and not in production) tokens are signed with a development secret kept in
the data folder; `gateway token` signs with the same secret (`mint_token`), and so do the tests.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Collection, Mapping
from pathlib import Path

import jwt

from gateway.domain import DEVICE_ACTIONS_POST, InvalidInput, parse_mode_grant, parse_study_grant
from gateway.keyfiles import private_file
from gateway.settings import AuthSettings

DEV_SECRET_FILE = "auth-dev-secret"  # noqa: S105 - a file name, not a secret
"""The development HS256 secret's file in the data folder (mode 0600, made on first use)."""


def development_secret(data_dir: str | Path) -> bytes:
    """The development HS256 secret in `data_dir`, made (random, mode 0600) on first use
    (`gateway.keyfiles.private_file`: two processes starting at once end up with the same one)."""
    path = private_file(Path(data_dir) / DEV_SECRET_FILE, lambda: secrets.token_urlsafe(48))
    secret = path.read_text(encoding="ascii").strip()
    if len(secret) < 32:
        raise ValueError(f"{path} holds a secret shorter than 32 characters: delete it to make a new one")
    return secret.encode("ascii")


def signing_secret(settings: AuthSettings, data_dir: str | Path) -> bytes | None:
    """The HS256 secret tokens are signed with: the configured one, else (no JWKS) the development one
    in `data_dir`."""
    if configured := settings.hs256_secret.get_secret_value():
        return configured.encode("utf-8")
    if settings.jwks_url:
        return None
    return development_secret(data_dir)


def mint_token(
    secret: bytes,
    *,
    issuer: str,
    audience: str,
    subject: str = "developer",
    rights: Mapping[str, Mapping[str, Collection[str]]],
    ttl_seconds: int = 3600,
    client_id: str = "gateway-token",
    now: float | None = None,
) -> str:
    """An HS256 token with the claims the gateway checks: iss, aud, sub, iat, exp, client_id and rights."""
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "client_id": client_id,
        "iat": issued,
        "exp": issued + ttl_seconds,
        "rights": {study: {mode: sorted(names) for mode, names in modes.items()} for study, modes in rights.items()},
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def development_token(
    settings: AuthSettings, data_dir: str | Path, *, study: str, mode: str, ttl_seconds: int, subject: str
) -> str:
    """What `gateway token` prints: DeviceActionsPost for one study (or `*`) in one mode (or `*`)."""
    secret = signing_secret(settings, data_dir)
    if secret is None:
        raise ValueError(
            "this gateway checks tokens against GATEWAY_AUTH_JWKS_URL: get a token from that identity provider"
        )
    try:
        study_key = parse_study_grant(study, "--study")
    except InvalidInput:
        raise ValueError("--study must be a 32-character hexadecimal GUID or *") from None
    try:
        mode_key = parse_mode_grant(mode, "--mode")
    except InvalidInput:
        raise ValueError("--mode must be active, test, training or *") from None
    return mint_token(
        secret,
        issuer=settings.issuer,
        audience=settings.audience,
        subject=subject,
        rights={study_key: {mode_key: [DEVICE_ACTIONS_POST]}},
        ttl_seconds=ttl_seconds,
    )


def serve_hint(settings: AuthSettings, command: str = "gateway") -> str:
    """The line `gateway serve` prints about authentication; `command` is how this gateway was run."""
    if settings.insecure_disable_auth:
        return "Auth: OFF (GATEWAY_INSECURE_DISABLE_AUTH=true): anyone who reaches this port can regenerate credentials"
    if settings.jwks_url:
        return (
            f"Auth: bearer tokens from your identity provider (keys: {settings.jwks_url}, "
            f"issuer {settings.issuer}, audience {settings.audience})"
        )
    return (
        f"Auth: every call needs a bearer token. Get one with: {command} token --study '*' --mode '*'  "
        'then paste {"Authorization": "Bearer <token>"} into GraphiQL\'s Headers pane (and re-fetch the schema)'
    )
