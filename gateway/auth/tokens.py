"""Bearer tokens: an Authorization header verified with PyJWT and its claims turned into a `Principal`.

`Authenticator` checks the signature (against a JWKS's keys, chosen by `kid`, or against an HS256
secret), `alg` from a fixed allow-list matched to the key (never `none`, never the token's own
choice), and `iss`, `aud`, `exp`, `sub` required, with a small leeway. The `rights` claim becomes
`Principal.rights`; a claim of the wrong shape is a bad token. `open_authenticator` builds the one
the settings describe. A token never reaches a log line, an error message or a repr.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping
from contextlib import AsyncExitStack
from typing import Any

import anyio.to_thread
import httpx
import jwt

from gateway.auth.development import signing_secret
from gateway.auth.errors import InvalidToken, MissingToken
from gateway.auth.keys import JwksKeys, KeySource, SecretKey
from gateway.domain import InvalidInput, Principal, StudyMode, parse_guid
from gateway.settings import AuthSettings

log = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 8192
_BEARER = re.compile(r"Bearer +([A-Za-z0-9._~+/-]+=*) *", re.IGNORECASE)


def parse_rights(value: object) -> dict[str, dict[str, frozenset[str]]]:
    """The `rights` claim, `{"<STUDYID or *>": {"<mode or *>": ["DeviceActionsPost", ...]}}`, checked.

    Study ids are normalised like every GUID (upper case, no dashes), modes to lower case; a
    missing claim grants nothing. Raises `InvalidToken` when the claim has another shape.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidToken("the rights claim must be an object of studies")
    rights: dict[str, dict[str, frozenset[str]]] = {}
    for study, modes in value.items():
        try:
            study_key = study if study == "*" else parse_guid(study, "study")
        except InvalidInput:
            raise InvalidToken("the rights claim names a study that is not a GUID or *") from None
        if not isinstance(modes, dict):
            raise InvalidToken("the rights claim must map each study to an object of modes")
        for mode, names in modes.items():
            mode_key = mode.lower() if isinstance(mode, str) else ""
            if mode_key != "*" and mode_key not in {m.value for m in StudyMode}:
                raise InvalidToken("the rights claim names a mode other than active, test, training or *")
            if not isinstance(names, list) or not all(isinstance(name, str) and name for name in names):
                raise InvalidToken("the rights claim must list each mode's rights as strings")
            granted = rights.setdefault(study_key, {})
            granted[mode_key] = granted.get(mode_key, frozenset()) | frozenset(names)
    return rights


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise InvalidToken("the sub claim must be a non-empty string")
    client_id = claims.get("client_id", claims.get("azp"))
    if client_id is not None and not isinstance(client_id, str):
        raise InvalidToken("the client_id claim must be a string")
    return Principal(subject=subject, client_id=client_id, rights=parse_rights(claims.get("rights")))


_CLAIM_ERRORS: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidIssuerError, "the token's issuer is not accepted"),
    (jwt.InvalidAudienceError, "the token is meant for another audience"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not accepted"),
)


class Authenticator:
    """Turns an Authorization header into a `Principal`, or raises `AuthenticationError`."""

    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str,
        audience: str,
        algorithms: Collection[str],
        leeway: float = 30,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.algorithms = frozenset(algorithms) - {"none"}
        self.leeway = leeway

    async def authenticate(self, authorization: str | None) -> Principal:
        if authorization is None or not authorization.strip():
            raise MissingToken("send Authorization: Bearer <token>")
        match = _BEARER.fullmatch(authorization.strip())
        if match is None:
            raise InvalidToken("the Authorization header must be: Bearer <token>")
        token = match.group(1)
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("the token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidToken("the token is malformed") from None
        alg = header.get("alg")
        # The allow-list decides, never the token: `none` and anything unlisted are refused here.
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken("the token's algorithm is not accepted")
        key = await self.keys.key_for(header)
        if alg not in key.algorithms:
            raise InvalidToken("the token's algorithm does not fit its key")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.MissingRequiredClaimError as error:
            raise InvalidToken(f"the token has no {error.claim} claim") from None
        except jwt.InvalidTokenError as error:
            for kind, description in _CLAIM_ERRORS:
                if isinstance(error, kind):
                    raise InvalidToken(description) from None
            raise InvalidToken("the token is malformed") from None
        return principal_from_claims(claims)


async def open_authenticator(settings: AuthSettings, data_dir: str, resources: AsyncExitStack) -> Authenticator | None:
    """The authenticator the settings describe (None when authentication is switched off).

    With a JWKS its httpx client goes on `resources`, which the lifespan closes; without one, the
    development secret is kept in `data_dir`.
    """
    if settings.insecure_disable_auth:
        log.warning("AUTHENTICATION IS OFF (GATEWAY_INSECURE_DISABLE_AUTH=true): every caller is let in")
        return None
    keys: KeySource
    if settings.jwks_url:
        http = await resources.enter_async_context(
            httpx.AsyncClient(timeout=settings.jwks_timeout_seconds, follow_redirects=False)
        )
        keys = JwksKeys(settings.jwks_url, http, max_age=settings.jwks_cache_seconds)
    else:
        secret = await anyio.to_thread.run_sync(signing_secret, settings, data_dir)
        assert secret is not None
        keys = SecretKey(secret)
    return Authenticator(
        keys,
        issuer=settings.issuer,
        audience=settings.audience,
        algorithms=settings.allowed_algorithms,
        leeway=settings.leeway_seconds,
    )
