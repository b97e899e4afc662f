"""JWT → Principal. Pure: no I/O except reading/creating the generated secret at start-up.

DESIGN §4: the `sub` claim is the user id; `exp` is required; `aud`/`iss` are checked when
configured; an optional `chats` claim (list of chat ids) grants access to those chats.
HS256 with a shared secret by default; RS256/ES256 with a public key when configured.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path

import jwt
import msgspec

from gurukul_fast.config import Config

__all__ = ["AuthError", "Principal", "TokenVerifier", "load_or_create_secret", "mint_token"]

logger = logging.getLogger(__name__)

MAX_USER_ID_LENGTH = 128


class AuthError(Exception):
    """The token is missing, malformed, badly signed or expired; `reason` is safe to send."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Principal(msgspec.Struct, frozen=True, gc=False):
    """Who a connection is: the user id and what their token grants."""

    user_id: str
    chats: frozenset[str]  # chats granted by the token's `chats` claim
    expires_at: float  # seconds since the epoch


class TokenVerifier:
    """Verifies tokens with one key; construct once from the Config and the resolved secret."""

    def __init__(self, config: Config, secret: str | None) -> None:
        if config.jwt_public_key:
            self._key: str = Path(config.jwt_public_key).read_text()
            self._algorithms = [a for a in config.jwt_algorithms if not a.startswith("HS")]
            if not self._algorithms:
                self._algorithms = ["RS256", "ES256"]
        else:
            if not secret:
                raise ValueError("an HS256 secret is required when no public key is configured")
            self._key = secret
            self._algorithms = [a for a in config.jwt_algorithms if a.startswith("HS")] or ["HS256"]
        self._audience = config.jwt_audience
        self._issuer = config.jwt_issuer

    def verify(self, token: str | None) -> Principal:
        """Return the token's Principal or raise AuthError; costs one signature check."""
        if not token:
            raise AuthError("Authentication failed")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("Token expired") from None
        except jwt.PyJWTError:
            raise AuthError("Authentication failed") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > MAX_USER_ID_LENGTH:
            raise AuthError("Authentication failed")
        if subject == "assistant":
            # "assistant" is the agents' identity; a user must not impersonate it.
            raise AuthError("Authentication failed")
        raw_chats = claims.get("chats") or []
        if not isinstance(raw_chats, list) or not all(isinstance(c, str) for c in raw_chats):
            raise AuthError("Authentication failed")
        return Principal(
            user_id=subject, chats=frozenset(raw_chats), expires_at=float(claims["exp"])
        )


def mint_token(
    secret: str,
    user_id: str,
    *,
    ttl_s: float = 3600.0,
    chats: list[str] | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    now: float | None = None,
) -> str:
    """Create an HS256 token for `user_id` (used by `gurukul-fast token` and the tests)."""
    issued = time.time() if now is None else now
    claims: dict[str, object] = {"sub": user_id, "iat": int(issued), "exp": int(issued + ttl_s)}
    if chats:
        claims["chats"] = chats
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")


def load_or_create_secret(config: Config) -> tuple[str | None, bool]:
    """Resolve the HS256 secret: the configured one, else one kept in the data directory.

    Returns (secret, generated). Called once at start-up; the generated secret is created
    with mode 0600 so that `gurukul-fast token` on the same data dir mints valid tokens.
    """
    if config.jwt_public_key:
        return None, False
    if config.jwt_secret:
        return config.jwt_secret, False
    path = config.secret_file
    if path.exists():
        return path.read_text().strip(), True
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another worker created it first
        return path.read_text().strip(), True
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret)
    return secret, True
