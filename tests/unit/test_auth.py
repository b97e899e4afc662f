"""Unit tests of JWT → Principal (DESIGN §4): what is accepted, what is refused and why."""

from __future__ import annotations

import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from gurukul_fast.auth import (
    AuthError,
    Principal,
    TokenVerifier,
    load_or_create_secret,
    mint_token,
)
from gurukul_fast.config import Config

SECRET = "unit-test-secret-" + "0123456789abcdef" * 4  # long enough for HS512 too
OTHER_SECRET = "another-secret-with-enough-bytes-for-hs256-11111"


def verifier(**settings: Any) -> TokenVerifier:
    return TokenVerifier(Config(jwt_secret=SECRET, **settings), SECRET)


def raw_token(claims: dict[str, Any], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def refused(check: TokenVerifier, token: str | None) -> str:
    with pytest.raises(AuthError) as caught:
        check.verify(token)
    return caught.value.reason


def test_valid_token_gives_principal() -> None:
    before = time.time()
    principal = verifier().verify(mint_token(SECRET, "user-456", ttl_s=600))
    assert isinstance(principal, Principal)
    assert principal.user_id == "user-456"
    assert principal.chats == frozenset()
    assert before + 590 <= principal.expires_at <= time.time() + 601


@pytest.mark.parametrize("token", [None, ""])
def test_missing_token(token: str | None) -> None:
    assert refused(verifier(), token) == "Authentication failed"


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "eyJ.eyJ.sig"])
def test_malformed_token(token: str) -> None:
    assert refused(verifier(), token) == "Authentication failed"


def test_bad_signature() -> None:
    assert refused(verifier(), mint_token(OTHER_SECRET, "u1")) == "Authentication failed"


def test_tampered_payload_is_refused() -> None:
    header, _, signature = mint_token(SECRET, "u1").split(".")
    forged_payload = jwt.utils.base64url_encode(
        b'{"sub":"admin","exp":%d}' % (int(time.time()) + 600)
    ).decode()
    assert refused(verifier(), f"{header}.{forged_payload}.{signature}") == (
        "Authentication failed"
    )


def test_expired_token_says_token_expired() -> None:
    token = mint_token(SECRET, "u1", ttl_s=60, now=time.time() - 3600)
    assert refused(verifier(), token) == "Token expired"


def test_missing_exp_is_refused() -> None:
    assert refused(verifier(), raw_token({"sub": "u1"})) == "Authentication failed"


def test_missing_sub_is_refused() -> None:
    token = raw_token({"exp": int(time.time()) + 600})
    assert refused(verifier(), token) == "Authentication failed"


@pytest.mark.parametrize("subject", ["", 42, None, ["u1"], "x" * 129])
def test_unusable_sub_is_refused(subject: Any) -> None:
    token = raw_token({"sub": subject, "exp": int(time.time()) + 600})
    assert refused(verifier(), token) == "Authentication failed"


def test_sub_at_max_length_is_accepted() -> None:
    assert verifier().verify(mint_token(SECRET, "x" * 128)).user_id == "x" * 128


def test_assistant_cannot_be_impersonated() -> None:
    assert refused(verifier(), mint_token(SECRET, "assistant")) == "Authentication failed"


def test_alg_none_is_refused() -> None:
    token = jwt.encode({"sub": "u1", "exp": int(time.time()) + 600}, None, algorithm="none")
    assert refused(verifier(), token) == "Authentication failed"


def test_unlisted_hmac_algorithm_is_refused() -> None:
    token = raw_token({"sub": "u1", "exp": int(time.time()) + 600}, algorithm="HS512")
    assert refused(verifier(), token) == "Authentication failed"
    allowed = verifier(jwt_algorithms=("HS256", "HS512"))
    assert allowed.verify(token).user_id == "u1"


def test_chats_claim_grants_chats() -> None:
    token = mint_token(SECRET, "u1", chats=["chat-1", "chat-2", "chat-1"])
    assert verifier().verify(token).chats == frozenset({"chat-1", "chat-2"})


@pytest.mark.parametrize("chats", ["chat-1", [1, 2], {"chat-1": True}, ["ok", None]])
def test_malformed_chats_claim_is_refused(chats: Any) -> None:
    token = raw_token({"sub": "u1", "exp": int(time.time()) + 600, "chats": chats})
    assert refused(verifier(), token) == "Authentication failed"


def test_audience_checked_when_configured() -> None:
    check = verifier(jwt_audience="gurukul")
    assert check.verify(mint_token(SECRET, "u1", audience="gurukul")).user_id == "u1"
    assert refused(check, mint_token(SECRET, "u1", audience="elsewhere")) == (
        "Authentication failed"
    )
    assert refused(check, mint_token(SECRET, "u1")) == "Authentication failed"


def test_audience_ignored_when_not_configured() -> None:
    assert verifier().verify(mint_token(SECRET, "u1", audience="anything")).user_id == "u1"


def test_issuer_checked_when_configured() -> None:
    check = verifier(jwt_issuer="https://auth.example")
    token = mint_token(SECRET, "u1", issuer="https://auth.example")
    assert check.verify(token).user_id == "u1"
    assert refused(check, mint_token(SECRET, "u1", issuer="https://evil.example")) == (
        "Authentication failed"
    )
    assert refused(check, mint_token(SECRET, "u1")) == "Authentication failed"


def test_hs_verifier_requires_a_secret() -> None:
    with pytest.raises(ValueError, match="secret"):
        TokenVerifier(Config(), None)


def test_mint_token_claims() -> None:
    token = mint_token(
        SECRET, "u1", ttl_s=100, chats=["c"], audience="a", issuer="i", now=1_700_000_000
    )
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims == {
        "sub": "u1",
        "iat": 1_700_000_000,
        "exp": 1_700_000_100,
        "chats": ["c"],
        "aud": "a",
        "iss": "i",
    }
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


# ---------------------------------------------------------------- secret resolution


def test_configured_secret_wins(tmp_path: Path) -> None:
    config = Config(jwt_secret="configured", data_dir=str(tmp_path))
    assert load_or_create_secret(config) == ("configured", False)
    assert not config.secret_file.exists()


def test_generated_secret_is_private_and_reused(tmp_path: Path) -> None:
    config = Config(data_dir=str(tmp_path / "data"))
    secret, generated = load_or_create_secret(config)
    assert generated
    assert secret
    assert len(secret) >= 32
    assert stat.S_IMODE(config.secret_file.stat().st_mode) == 0o600
    assert load_or_create_secret(config) == (secret, True)
    # Tokens minted with it (as `gurukul-fast token` does) verify.
    assert TokenVerifier(config, secret).verify(mint_token(secret, "u1")).user_id == "u1"


def test_public_key_mode_needs_no_secret(tmp_path: Path) -> None:
    config = Config(jwt_public_key=str(tmp_path / "key.pem"), data_dir=str(tmp_path))
    assert load_or_create_secret(config) == (None, False)
    assert not config.secret_file.exists()
