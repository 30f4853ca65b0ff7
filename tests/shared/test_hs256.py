"""The lean HS256 verifier: accepts only what PyJWT accepts, and leaves every refusal (with its
reason) to PyJWT."""

from __future__ import annotations

import base64
import hmac
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest

from shared.auth import TokenError, TokenVerifier
from shared.hs256 import Hs256
from shared.settings import Settings

KEY = "unit-test-secret-" + "z" * 32
REQUIRED = ["exp", "sub"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(
        {"DATA_DIR": str(tmp_path), "SECRET_KEY": KEY, "INTERNAL_TOKEN": "i" * 32}
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": str(uuid.uuid4()), "iat": now, "exp": now + 60} | extra


def _signed(header: dict[str, Any], claims: dict[str, Any], algorithm: str = "sha256") -> str:
    """A token signed with KEY, its header as given (PyJWT's encoder refuses odd headers)."""
    signing_input = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    signature = hmac.new(KEY.encode(), signing_input.encode(), algorithm).digest()
    return signing_input + "." + _b64(signature)


def _lean(audience: str | None = None, issuer: str | None = None) -> Hs256:
    return Hs256(KEY.encode(), audience, issuer)


async def _reason(settings: Settings, token: str) -> str:
    with pytest.raises(TokenError) as info:
        await TokenVerifier(settings).verify(token)
    return info.value.reason


def test_accepts_a_valid_token_with_pyjwts_claims() -> None:
    """A plainly valid token is accepted with exactly the claims PyJWT decodes."""
    claims = _claims(nbf=int(time.time()) - 5, jti="j-1")
    token = jwt.encode(claims, KEY, algorithm="HS256")
    assert _lean().claims(token, REQUIRED, time.time()) == jwt.decode(
        token, KEY, algorithms=["HS256"]
    )


async def test_tampered_signature_is_left_to_pyjwt(settings: Settings) -> None:
    """A signature that does not match is not accepted; PyJWT refuses it with its reason."""
    token = jwt.encode(_claims(), KEY, algorithm="HS256")
    head, payload, signature = token.split(".")
    tampered = f"{head}.{payload}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"
    assert _lean().claims(tampered, REQUIRED, time.time()) is None
    assert await _reason(settings, tampered) == "token signature invalid"


async def test_alg_none_is_left_to_pyjwt(settings: Settings) -> None:
    """`alg: none` without a signature is not accepted, and refused as before."""
    token = _b64(b'{"alg":"none","typ":"JWT"}') + "." + _b64(json.dumps(_claims()).encode()) + "."
    assert _lean().claims(token, REQUIRED, time.time()) is None
    assert await _reason(settings, token) == "token algorithm not allowed"


async def test_wrong_alg_header_is_left_to_pyjwt(settings: Settings) -> None:
    """A token signed with the right secret but HS512 is not accepted: the algorithm is
    pinned."""
    token = _signed({"alg": "HS512", "typ": "JWT"}, _claims(), "sha512")
    assert _lean().claims(token, REQUIRED, time.time()) is None
    assert await _reason(settings, token) == "token algorithm not allowed"


async def test_expired_is_left_to_pyjwt(settings: Settings) -> None:
    """An `exp` at or before now is not accepted; PyJWT says it expired."""
    now = int(time.time())
    token = jwt.encode(_claims(exp=now), KEY, algorithm="HS256")
    assert _lean().claims(token, REQUIRED, now) is None
    assert await _reason(settings, token) == "token expired"


async def test_nbf_in_the_future_is_left_to_pyjwt(settings: Settings) -> None:
    """A token not valid before a time still to come is not accepted, and refused."""
    token = jwt.encode(_claims(nbf=int(time.time()) + 600), KEY, algorithm="HS256")
    assert _lean().claims(token, REQUIRED, time.time()) is None
    assert await _reason(settings, token) == "token malformed"


def test_iat_in_the_future_is_not_accepted() -> None:
    """A token issued in the future is not accepted (PyJWT refuses it as immature)."""
    token = jwt.encode(_claims(iat=int(time.time()) + 600), KEY, algorithm="HS256")
    assert _lean().claims(token, REQUIRED, time.time()) is None
    with pytest.raises(jwt.ImmatureSignatureError):
        jwt.decode(token, KEY, algorithms=["HS256"])


async def test_missing_sub_is_left_to_pyjwt(settings: Settings) -> None:
    """A required claim that is absent is not accepted; PyJWT names it."""
    claims = _claims()
    del claims["sub"]
    token = jwt.encode(claims, KEY, algorithm="HS256")
    assert _lean().claims(token, REQUIRED, time.time()) is None
    assert await _reason(settings, token) == "token missing claim sub"


async def test_bad_padding_is_left_to_pyjwt(settings: Settings) -> None:
    """Base64 that is not canonical (excess padding, stray characters, set trailing bits) is
    not accepted; PyJWT refuses what it refuses."""
    token = jwt.encode(_claims(), KEY, algorithm="HS256")
    head, payload, signature = token.split(".")
    for bad in (
        f"{head}===.{payload}.{signature}",
        f"{head}.{payload}!.{signature}",
        f"{head[:-1]}.{payload}.{signature}",
    ):
        assert _lean().claims(bad, REQUIRED, time.time()) is None
        assert await _reason(settings, bad) in {"token malformed", "token signature invalid"}
    # Padding PyJWT tolerates (some issuers add it): not the lean path's, still accepted.
    padded = f"{head}.{payload}.{signature}="
    assert _lean().claims(padded, REQUIRED, time.time()) is None
    assert (await TokenVerifier(settings).verify(padded)).expires_at > time.time()


def test_unusual_headers_and_claims_are_left_to_pyjwt() -> None:
    """`kid`/`crit` headers, non-integer times, an explicit null `iat`, a non-string `sub` or
    `jti`: never accepted by the lean path (PyJWT decides)."""
    now = int(time.time())
    tokens = [
        _signed({"alg": "HS256", "kid": 7}, _claims()),
        _signed({"alg": "HS256", "crit": ["exp"]}, _claims()),
        jwt.encode(_claims(exp=float(now + 60)), KEY, algorithm="HS256"),
        jwt.encode(_claims(exp=str(now + 60)), KEY, algorithm="HS256"),
        jwt.encode(_claims(iat=None), KEY, algorithm="HS256"),
        jwt.encode(_claims(sub=5), KEY, algorithm="HS256"),
        jwt.encode(_claims(jti=5), KEY, algorithm="HS256"),
        "a.b",
        "é.b.c",
    ]
    for token in tokens:
        assert _lean().claims(token, REQUIRED, time.time()) is None, token


def test_audience_and_issuer_when_configured() -> None:
    """With `aud`/`iss` configured, only a token naming them is accepted (a list of audiences
    that includes ours counts)."""
    lean = _lean(audience="api", issuer="auth")
    now = time.time()
    ok = [
        jwt.encode(_claims(aud="api", iss="auth"), KEY, algorithm="HS256"),
        jwt.encode(_claims(aud=["web", "api"], iss="auth"), KEY, algorithm="HS256"),
    ]
    refused = [
        jwt.encode(_claims(aud="web", iss="auth"), KEY, algorithm="HS256"),
        jwt.encode(_claims(iss="auth"), KEY, algorithm="HS256"),
        jwt.encode(_claims(aud="api", iss="other"), KEY, algorithm="HS256"),
        jwt.encode(_claims(aud="api"), KEY, algorithm="HS256"),
        jwt.encode(_claims(aud=["web", 1], iss="auth"), KEY, algorithm="HS256"),
    ]
    assert all(lean.claims(t, REQUIRED, now) is not None for t in ok)
    assert all(lean.claims(t, REQUIRED, now) is None for t in refused)


def test_never_accepts_what_pyjwt_refuses() -> None:
    """Mutating a valid token character by character (seeded, reproducible): whatever the lean
    path accepts, PyJWT accepts with the same claims."""
    rng = random.Random(17)
    token = jwt.encode(_claims(aud="api"), KEY, algorithm="HS256")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=!"
    lean = _lean(audience="api")
    accepted = 0
    for _ in range(3000):
        chars = list(token)
        chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        mutated = "".join(chars)
        claims = lean.claims(mutated, REQUIRED, time.time())
        if claims is None:
            continue
        accepted += 1
        assert claims == jwt.decode(mutated, KEY, algorithms=["HS256"], audience="api")
    assert accepted > 0  # unchanged by its mutation (same character drawn): still valid
