"""Client authentication: verifying JWTs and minting development tokens.

A token is accepted only if its algorithm is the configured one (so `alg: none` and algorithm
confusion are refused before any signature work), its signature verifies, `exp` is present and in
the future, `sub` is a UUID, and `aud`/`iss` match when configured. Every refusal raises
`TokenError` whose `reason` is a short, stable phrase safe to show a client and to log (it never
contains the token itself).

A client presents the same token on every request until it refreshes it, and verifying one costs
tens of microseconds of PyJWT (a fifth of notifications_svc's CPU per list request, py-spy). So a
verifier remembers the tokens it accepted — keyed by the exact token string, bounded in number —
until the token expires or `VERIFIED_MAX_AGE` passes, whichever is first (the bound keeps a key
removed from a JWKS from being honoured for long). A refused token is never remembered.

`verify` is a coroutine: with `JWT_JWKS_URL` the signing key may have to be fetched, which
`shared.jwks` does without blocking the event loop (a hung key server holds up only the requests
whose key it must bring, and only for a bounded time). With HS256 or a configured public key
nothing is awaited.

With HS256 and `SECRET_KEY` (the default), a plainly valid token is checked by `shared.hs256`, a
lean verifier that accepts only what PyJWT would accept with the same options and leaves every
other token — and so every refusal and its reason — to PyJWT.
"""

from __future__ import annotations

import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

from shared.hs256 import Hs256
from shared.jwks import JwksKeys, KeyLookupError
from shared.settings import Settings


class TokenError(Exception):
    """The token was refused; `reason` says why in words fit for a close frame."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for, and until when."""

    user_id: uuid.UUID
    expires_at: float


VERIFIED_CACHE_SIZE = 10_000  # accepted tokens remembered per verifier
VERIFIED_MAX_AGE = 300.0  # seconds an acceptance is remembered at most


class TokenVerifier:
    """Verifies client JWTs against the configured algorithm and key. One per event loop;
    `aclose()` (idempotent) stops its JWKS refresher."""

    def __init__(
        self,
        settings: Settings,
        cache_size: int = VERIFIED_CACHE_SIZE,
        jwks: JwksKeys | None = None,
    ) -> None:
        self._cache_size = cache_size
        self._verified: dict[str, tuple[Identity, float]] = {}
        self._algorithm = settings.jwt_algorithm
        self._audience = settings.jwt_audience or None
        self._issuer = settings.jwt_issuer or None
        self._key: Any = settings.secret_key
        self._jwks = jwks
        self._hs256: Hs256 | None = None
        if self._algorithm == "HS256" and jwks is None:
            self._hs256 = _lean_hs256(settings.secret_key, self._audience, self._issuer)
        if self._algorithm != "HS256":
            if settings.jwt_public_key:
                self._key = settings.jwt_public_key
            elif jwks is None:
                self._jwks = JwksKeys(
                    settings.jwt_jwks_url, min_fetch_interval=settings.jwt_jwks_refetch_interval
                )

    async def aclose(self) -> None:
        """Stop fetching keys. Idempotent."""
        if self._jwks is not None:
            await self._jwks.aclose()

    async def verify(self, token: str | None) -> Identity:
        """Return the token's identity or raise `TokenError` with a distinct reason."""
        if not token:
            raise TokenError("token missing")
        now = time.time()
        remembered = self._verified.get(token)
        if remembered is not None:
            if now < remembered[1]:
                return remembered[0]
            self._verified.pop(token, None)
        identity = await self._verify(token)
        if len(self._verified) >= self._cache_size:
            self._verified.pop(next(iter(self._verified), ""), None)  # the oldest
        self._verified[token] = (identity, min(identity.expires_at, now + VERIFIED_MAX_AGE))
        return identity

    @property
    def remembered(self) -> int:
        """How many accepted tokens this verifier remembers."""
        return len(self._verified)

    async def _verify(self, token: str) -> Identity:
        claims = await self._claims(token, ["exp", "sub"])
        return Identity(user_id=_subject(claims.get("sub")), expires_at=float(claims["exp"]))

    async def verify_subscription(self, token: str, topic: str, user_id: uuid.UUID) -> float:
        """Check a subscription token (docs/topics.md): same algorithm, key, `aud` and `iss`
        as connection tokens, `sub` the connection's user, `topic` the topic asked for, `exp`
        required. Returns its `exp`; raises `TokenError` ("token expired" when it is only
        late). Not remembered: a subscription token is checked once per subscribe or refresh."""
        claims = await self._claims(token, ["exp", "sub", "topic"])
        if _subject(claims.get("sub")) != user_id:
            raise TokenError("token is for another user")
        if claims.get("topic") != topic:
            raise TokenError("token is for another topic")
        return float(claims["exp"])

    async def _claims(self, token: str, required: list[str]) -> dict[str, Any]:
        if self._hs256 is not None:
            lean = self._hs256.claims(token, required, time.time())
            if lean is not None:
                return lean
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise TokenError("token malformed") from None
        if header.get("alg") != self._algorithm:
            raise TokenError("token algorithm not allowed")
        key = self._key
        if self._jwks is not None:
            kid = header.get("kid")
            try:
                key = await self._jwks.key(kid if isinstance(kid, str) else None)
            except KeyLookupError as exc:
                raise TokenError(exc.reason) from None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": required, "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except jwt.InvalidSignatureError:
            raise TokenError("token signature invalid") from None
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"token missing claim {exc.claim}") from None
        except jwt.InvalidAudienceError:
            raise TokenError("token audience invalid") from None
        except jwt.InvalidIssuerError:
            raise TokenError("token issuer invalid") from None
        except jwt.InvalidTokenError:
            raise TokenError("token malformed") from None
        return claims


def _lean_hs256(secret: str, audience: str | None, issuer: str | None) -> Hs256 | None:
    """The lean verifier for `secret`, or None for a secret PyJWT itself refuses as an HMAC key
    (one that looks like a PEM key): then PyJWT keeps answering for it."""
    try:
        key = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256).prepare_key(secret)
    except jwt.InvalidKeyError:
        return None
    return Hs256(key, audience, issuer)


def _subject(sub: object) -> uuid.UUID:
    if not isinstance(sub, str):
        raise TokenError("token subject not a UUID")
    try:
        return uuid.UUID(sub)
    except ValueError:
        raise TokenError("token subject not a UUID") from None


def mint_token(
    settings: Settings, user_id: uuid.UUID | str, ttl: float = 24 * 3600, **claims: Any
) -> str:
    """An HS256 token for `user_id` signed with `SECRET_KEY` (development and tests)."""
    now = int(time.time())
    payload = {"sub": str(user_id), "iat": now, "exp": now + int(ttl)} | claims
    return jwt.encode(payload, settings.secret_key, algorithm="HS256")


def mint_subscription_token(
    settings: Settings, user_id: uuid.UUID | str, topic: str, ttl: float = 3600, **claims: Any
) -> str:
    """An HS256 subscription token for `user_id` and `topic` signed with `SECRET_KEY`: what an
    application backend mints for a private topic (docs/topics.md)."""
    return mint_token(settings, user_id, ttl, topic=topic, **claims)


def main(argv: list[str]) -> int:
    """`python -m shared.auth <user-uuid> [ttl-seconds]`: print a development token."""
    if not argv:
        print("usage: make token USER=<user-uuid>", file=sys.stderr)
        return 2
    try:
        user_id = uuid.UUID(argv[0])
    except ValueError:
        print(f"USER must be a UUID, got {argv[0]!r}", file=sys.stderr)
        return 2
    ttl = float(argv[1]) if len(argv) > 1 else 24 * 3600
    print(mint_token(Settings.from_env(), user_id, ttl))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
