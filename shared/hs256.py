"""A lean verifier for the common case of an HS256 JWT signed with a static secret.

PyJWT's generic path costs tens of microseconds per token (JSON header and payload parsed with
the `json` module, the key prepared and checked for PEM markers on every call, every option
merged per call); at thousands of WebSocket handshakes a second that is a tenth of the gateway's
CPU (docs/performance-notes.md). `Hs256.claims` does the same job for the tokens it recognises:
one pre-keyed HMAC copied per token, `hmac.compare_digest`, msgspec for the JSON.

Contract: it only ever *accepts*. It answers the claims when the token is plainly valid, and None
for anything it does not recognise or that fails a check — an unusual header (`kid`, `crit`,
`b64`), base64 with padding or in a non-canonical form, a non-integer time claim, a signature
that does not match, an expired token... The caller then asks PyJWT, which gives the refusal its
exact reason (or accepts the odd valid token). So the fast path is never more permissive than
PyJWT with the same options: it accepts a subset of what PyJWT accepts, and every refusal is
still PyJWT's.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
from typing import Any

import msgspec

_HEADER_KEYS = frozenset({"alg", "typ"})
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_decode_json = msgspec.json.Decoder().decode


class Hs256:
    """Verifies HS256 tokens with one secret. The checks, all with PyJWT's semantics and no
    leeway: `alg` is HS256, the signature matches, each `required` claim is present and not
    null, `exp` (an integer) is in the future, `nbf` and `iat` (integers, when present) are not,
    `iss` equals `issuer` and `aud` names `audience` when those are configured, `sub` and `jti`
    are strings when present."""

    __slots__ = ("_audience", "_issuer", "_mac")

    def __init__(self, secret: bytes, audience: str | None, issuer: str | None) -> None:
        self._mac = hmac.new(secret, digestmod=hashlib.sha256)
        self._audience = audience
        self._issuer = issuer

    def claims(self, token: str, required: list[str], now: float) -> dict[str, Any] | None:
        """The token's claims if every check passes; None otherwise (ask PyJWT why)."""
        try:
            raw = token.encode("ascii")
        except UnicodeEncodeError:
            return None
        parts = raw.split(b".")
        if len(parts) != 3:
            return None
        header_b64, payload_b64, signature_b64 = parts
        header = _json_object(header_b64)
        if header is None or header.get("alg") != "HS256" or not header.keys() <= _HEADER_KEYS:
            return None
        signature = _b64decode(signature_b64)
        if signature is None:
            return None
        mac = self._mac.copy()
        mac.update(raw[: len(header_b64) + 1 + len(payload_b64)])
        if not hmac.compare_digest(mac.digest(), signature):
            return None
        payload = _json_object(payload_b64)
        if payload is None or not self._valid(payload, required, now):
            return None
        return payload

    def _valid(self, payload: dict[str, Any], required: list[str], now: float) -> bool:
        if any(payload.get(claim) is None for claim in required):
            return False
        for claim in ("exp", "nbf", "iat"):
            if claim not in payload:
                continue
            value = payload[claim]
            if not _integer(value) or (value <= now if claim == "exp" else value > now):
                return False
        for claim in ("sub", "jti"):
            if claim in payload and not isinstance(payload[claim], str):
                return False
        if self._issuer is not None and payload.get("iss") != self._issuer:
            return False
        if self._audience is not None:
            aud = payload.get("aud")
            if aud != self._audience and not (
                isinstance(aud, list)
                and all(isinstance(a, str) for a in aud)
                and self._audience in aud
            ):
                return False
        return True


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _b64decode(segment: bytes) -> bytes | None:
    """Unpadded base64url in its canonical form (what PyJWT accepts without a doubt), else
    None."""
    if len(segment) % 4 == 1:
        return None
    standard = segment.translate(_TO_STANDARD) + b"=" * (-len(segment) % 4)
    try:
        decoded = binascii.a2b_base64(standard, strict_mode=True)
    except binascii.Error:
        return None
    # Canonical only: unused trailing bits set to zero (PyJWT re-encodes and compares).
    if binascii.b2a_base64(decoded, newline=False).translate(_TO_URLSAFE).rstrip(b"=") != segment:
        return None
    return decoded


def _json_object(segment: bytes) -> dict[str, Any] | None:
    data = _b64decode(segment)
    if data is None:
        return None
    try:
        value = _decode_json(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None
