"""JWT verification: every way a token can be wrong is refused with its own reason."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jwt
import pytest

from shared.auth import TokenError, TokenVerifier, mint_token
from shared.settings import Settings

KEY = "unit-test-secret-" + "z" * 32


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(
        {"DATA_DIR": str(tmp_path), "SECRET_KEY": KEY, "INTERNAL_TOKEN": "i" * 32}
    )


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_valid_token_yields_user(settings: Settings) -> None:
    """A token minted with SECRET_KEY verifies and names its user."""
    user = uuid.uuid4()
    identity = await TokenVerifier(settings).verify(mint_token(settings, user, 60))
    assert identity.user_id == user
    assert identity.expires_at > time.time()


async def _reason(settings: Settings, token: str | None) -> str:
    with pytest.raises(TokenError) as info:
        await TokenVerifier(settings).verify(token)
    return info.value.reason


async def test_refusals_have_distinct_reasons(settings: Settings) -> None:
    """Missing, malformed, expired, alg none, wrong key, missing/non-UUID sub, missing exp."""
    now = int(time.time())
    sub = str(uuid.uuid4())
    reasons = {
        "missing": await _reason(settings, None),
        "malformed": await _reason(settings, "not-a-jwt"),
        "expired": await _reason(settings, jwt.encode({"sub": sub, "exp": now - 10}, KEY)),
        "alg_none": await _reason(
            settings,
            _b64({"alg": "none", "typ": "JWT"}) + "." + _b64({"sub": sub, "exp": now + 60}) + ".",
        ),
        "wrong_key": await _reason(settings, jwt.encode({"sub": sub, "exp": now + 60}, "w" * 40)),
        "no_sub": await _reason(settings, jwt.encode({"exp": now + 60}, KEY)),
        "bad_sub": await _reason(settings, jwt.encode({"sub": "alice", "exp": now + 60}, KEY)),
        "no_exp": await _reason(settings, jwt.encode({"sub": sub}, KEY)),
    }
    assert reasons == {
        "missing": "token missing",
        "malformed": "token malformed",
        "expired": "token expired",
        "alg_none": "token algorithm not allowed",
        "wrong_key": "token signature invalid",
        "no_sub": "token missing claim sub",
        "bad_sub": "token subject not a UUID",
        "no_exp": "token missing claim exp",
    }


async def test_tampered_payload_is_refused(settings: Settings) -> None:
    """Changing the payload of a signed token (another sub) breaks its signature."""
    token = mint_token(settings, uuid.uuid4(), 60)
    header, _, signature = token.split(".")
    forged = (
        header
        + "."
        + _b64({"sub": str(uuid.uuid4()), "exp": int(time.time()) + 60})
        + "."
        + signature
    )
    assert await _reason(settings, forged) == "token signature invalid"


async def test_remembered_token_still_expires(settings: Settings) -> None:
    """A token accepted (and remembered) once is refused as expired after its `exp`."""
    verifier = TokenVerifier(settings)
    expires = int(time.time()) + 2
    token = jwt.encode({"sub": str(uuid.uuid4()), "exp": expires}, KEY)
    assert (await verifier.verify(token)).expires_at == expires
    assert (await verifier.verify(token)).expires_at == expires
    await asyncio.sleep(max(0.0, expires - time.time()) + 0.05)
    with pytest.raises(TokenError, match="token expired"):
        await verifier.verify(token)


async def test_remembering_a_token_accepts_nothing_else(settings: Settings) -> None:
    """After a token was accepted, a forgery sharing its header and signature is still refused
    by the same verifier, and refused tokens are not remembered."""
    verifier = TokenVerifier(settings)
    token = mint_token(settings, uuid.uuid4(), 60)
    await verifier.verify(token)
    header, _, signature = token.split(".")
    payload = _b64({"sub": str(uuid.uuid4()), "exp": int(time.time()) + 60})
    forged = f"{header}.{payload}.{signature}"
    for _ in range(2):
        with pytest.raises(TokenError, match="token signature invalid"):
            await verifier.verify(forged)
    assert verifier.remembered == 1


async def test_remembered_tokens_are_bounded(settings: Settings) -> None:
    """The verifier remembers at most `cache_size` tokens, forgetting the oldest first."""
    verifier = TokenVerifier(settings, cache_size=3)
    tokens = [mint_token(settings, uuid.uuid4(), 60) for _ in range(10)]
    identities = [(await verifier.verify(token)) for token in tokens]
    assert verifier.remembered == 3
    assert [(await verifier.verify(token)) for token in tokens] == identities


async def test_audience_and_issuer_checked_when_configured(tmp_path: Path) -> None:
    """With JWT_AUDIENCE/JWT_ISSUER set, tokens must carry matching claims."""
    settings = Settings.from_env(
        {
            "DATA_DIR": str(tmp_path),
            "SECRET_KEY": KEY,
            "INTERNAL_TOKEN": "i" * 32,
            "JWT_AUDIENCE": "app",
            "JWT_ISSUER": "https://issuer",
        }
    )
    user = uuid.uuid4()
    good = mint_token(settings, user, 60, aud="app", iss="https://issuer")
    assert (await TokenVerifier(settings).verify(good)).user_id == user
    assert (
        await _reason(settings, mint_token(settings, user, 60, aud="other", iss="https://issuer"))
        == "token audience invalid"
    )
    assert (
        await _reason(settings, mint_token(settings, user, 60, aud="app", iss="https://evil"))
        == "token issuer invalid"
    )


async def test_rs256_with_public_key(tmp_path: Path) -> None:
    """RS256 tokens verify against JWT_PUBLIC_KEY; HS256 tokens are then refused."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings = Settings.from_env(
        {
            "DATA_DIR": str(tmp_path),
            "SECRET_KEY": KEY,
            "INTERNAL_TOKEN": "i" * 32,
            "JWT_ALGORITHM": "RS256",
            "JWT_PUBLIC_KEY": public_pem,
            "JWT_AUDIENCE": "app",
            "JWT_ISSUER": "https://issuer",
        }
    )
    user = uuid.uuid4()
    claims = {"sub": str(user), "exp": int(time.time()) + 60, "aud": "app", "iss": "https://issuer"}
    token = jwt.encode(claims, private, algorithm="RS256")
    assert (await TokenVerifier(settings).verify(token)).user_id == user
    assert await _reason(settings, mint_token(settings, user, 60)) == "token algorithm not allowed"


def test_make_token_cli_prints_a_verifiable_token(tmp_path: Path, settings: Settings) -> None:
    """`python -m shared.auth <uuid>` (what `make token` runs) prints a token that verifies."""
    user = uuid.uuid4()
    env = {"DATA_DIR": str(tmp_path), "SECRET_KEY": KEY, "INTERNAL_TOKEN": "i" * 32}
    out = subprocess.run(
        [sys.executable, "-m", "shared.auth", str(user)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert asyncio.run(TokenVerifier(settings).verify(out)).user_id == user
    bad = subprocess.run(
        [sys.executable, "-m", "shared.auth", "root"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 2 and "must be a UUID" in bad.stderr
