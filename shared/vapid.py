"""VAPID keys (RFC 8292): parsing, validation and the development key file.

A VAPID key pair is one P-256 (prime256v1) key. The application server signs a JWT with the
private key for every push request; browsers subscribe with the public key (the
`applicationServerKey`), and a push service accepts only requests signed by the key the
subscription was made with. Formats, as `web-push generate-vapid-keys` prints them and browsers
take them: the private key is the 32-byte scalar, the public key the 65-byte uncompressed point,
both base64url without padding. A PEM private key (`vapid --gen`, `openssl ecparam`) is accepted
too and normalised to the raw form.

Pure code; the development pair in `DATA_DIR/vapid.json` is `shared.settings`' business.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


class VapidKeyError(ValueError):
    """A VAPID key is malformed, or the public key does not belong to the private key."""


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; `ValueError` on anything else."""
    stripped = text.strip()
    if not stripped or any(c not in _ALPHABET for c in stripped.rstrip("=")):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True, slots=True)
class VapidKeys:
    """A validated key pair in its wire forms (base64url, no padding)."""

    private_key: str  # 32-byte scalar
    public_key: str  # 65-byte uncompressed point (the browser's applicationServerKey)

    def signing_key(self) -> ec.EllipticCurvePrivateKey:
        scalar = int.from_bytes(b64url_decode(self.private_key), "big")
        return ec.derive_private_key(scalar, ec.SECP256R1())


def _public_point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _raw_private(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_numbers().private_value.to_bytes(32, "big")


def parse_private_key(text: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from base64url (32 bytes) or PEM; `VapidKeyError` says what is
    wrong otherwise."""
    if text.lstrip().startswith("-----BEGIN"):
        try:
            loaded = serialization.load_pem_private_key(text.strip().encode(), password=None)
        except (ValueError, TypeError):
            raise VapidKeyError("not a readable unencrypted PEM private key") from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey) or not isinstance(
            loaded.curve, ec.SECP256R1
        ):
            raise VapidKeyError("not a P-256 (prime256v1) EC private key")
        return loaded
    try:
        raw = b64url_decode(text)
    except ValueError:
        raise VapidKeyError("expected base64url (32 bytes) or a PEM private key") from None
    if len(raw) != 32:
        raise VapidKeyError(f"expected a 32-byte P-256 private key, got {len(raw)} bytes")
    try:
        return ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    except ValueError:
        raise VapidKeyError("not a valid P-256 private key (out of range)") from None


def parse_public_key(text: str) -> bytes:
    """The 65-byte uncompressed point of a base64url P-256 public key; `VapidKeyError` otherwise."""
    try:
        raw = b64url_decode(text)
    except ValueError:
        raise VapidKeyError("expected base64url of a 65-byte uncompressed P-256 point") from None
    if len(raw) != 65 or raw[0] != 4:
        raise VapidKeyError(f"expected a 65-byte uncompressed P-256 point, got {len(raw)} bytes")
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError:
        raise VapidKeyError("not a point on P-256") from None
    return raw


def keys_from(private_text: str, public_text: str) -> VapidKeys:
    """Validate a configured pair; the public key may be empty (derived). Raises `VapidKeyError`
    with `.args[0]` prefixed by which of the two is wrong ("private: ..." / "public: ...")."""
    try:
        private = parse_private_key(private_text)
    except VapidKeyError as exc:
        raise VapidKeyError(f"private: {exc}") from None
    derived = _public_point(private)
    if public_text:
        try:
            given = parse_public_key(public_text)
        except VapidKeyError as exc:
            raise VapidKeyError(f"public: {exc}") from None
        if given != derived:
            raise VapidKeyError("public: does not belong to VAPID_PRIVATE_KEY")
    return VapidKeys(b64url_encode(_raw_private(private)), b64url_encode(derived))


def generate() -> VapidKeys:
    """A fresh key pair."""
    private = ec.generate_private_key(ec.SECP256R1())
    return VapidKeys(b64url_encode(_raw_private(private)), b64url_encode(_public_point(private)))


if __name__ == "__main__":
    # `python -m shared.vapid`: a production key pair, as environment lines.
    fresh = generate()
    print(f"VAPID_PRIVATE_KEY={fresh.private_key}")
    print(f"VAPID_PUBLIC_KEY={fresh.public_key}")
