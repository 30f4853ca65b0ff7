"""Web Push on the wire, without I/O: subscriptions, payloads, the encrypted request, answers.

- A subscription is what the browser's `PushSubscription.toJSON()` gives: `{"endpoint",
  "expirationTime", "keys": {"p256dh", "auth"}}`. `parse_subscription` validates it (an https
  endpoint on a known push service's host, or loopback http when allowed; `p256dh` a P-256
  point, `auth` 16 bytes) and raises `ValidationFailed` naming the field.
- The payload is JSON `{"id", "title", "content", "type", "action"}` of at most
  `MAX_PLAINTEXT` bytes (RFC 8291 §4: 4096 bytes of body minus the 86-byte header, one padding
  delimiter and the 16-byte tag): a longer content is cut and ends with `TRUNCATED_MARKER`; an
  action too large even then is dropped.
- `build_request` encrypts it (RFC 8291 aes128gcm, a fresh ephemeral key and salt each time,
  through `http_ece`) and signs the VAPID JWT (RFC 8292, `vapid t=...,k=...`, through
  `py_vapid`), `aud` the endpoint's origin, `exp` 12 hours ahead.
- `classify` turns the push service's answer into what the sender does next.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal
from urllib.parse import urlsplit
from uuid import UUID

import http_ece
import msgspec
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

from shared.errors import InvalidJson, ValidationFailed
from shared.vapid import VapidKeys, b64url_decode, b64url_encode, parse_public_key

MAX_PLAINTEXT = 3993
TRUNCATED_MARKER = "…"
MAX_ENDPOINT_LENGTH = 2048
VAPID_LIFETIME = 12 * 3600  # seconds; push services refuse more than 24 hours
_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class SubscriptionKeys(msgspec.Struct):
    """A browser's subscription keys, base64url: its P-256 public key and 16-byte auth secret."""

    p256dh: str
    auth: str


class SubscriptionBody(msgspec.Struct):
    """`PushSubscription.toJSON()`; unknown fields are ignored (browsers may add some)."""

    endpoint: str
    keys: SubscriptionKeys
    expirationTime: float | None = None  # the browser's name


@dataclass(frozen=True, slots=True)
class Subscription:
    """A validated subscription: where to push and the browser's keys (base64url)."""

    endpoint: str
    p256dh: str
    auth: str


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", details={"field": field})


def decode_subscription(body: bytes) -> SubscriptionBody:
    """The JSON body as a `SubscriptionBody`; `ValidationFailed` naming the wrong field."""
    try:
        return msgspec.json.decode(body, type=SubscriptionBody)
    except msgspec.ValidationError as exc:
        match = re.search(r"at `\$\.?([^`]*)`", str(exc))
        missing = re.search(r"missing required field `([^`]+)`", str(exc))
        path = match.group(1) if match else ""
        if missing:
            path = f"{path}.{missing.group(1)}" if path else missing.group(1)
        raise ValidationFailed(str(exc), details={"field": path or "body"}) from None
    except msgspec.DecodeError as exc:
        raise InvalidJson(f"body is not valid JSON: {exc}") from None


def host_allowed(host: str, patterns: tuple[str, ...]) -> bool:
    """Whether `host` is one of `patterns`: exact names, `*.suffix` for any subdomain, `*`."""
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower()
        if pattern == "*" or host == pattern:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def _check_endpoint(endpoint: str, allow_loopback: bool, hosts: tuple[str, ...]) -> str:
    if len(endpoint) > MAX_ENDPOINT_LENGTH:
        raise _invalid("endpoint", f"longer than {MAX_ENDPOINT_LENGTH} characters")
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        raise _invalid("endpoint", "not a URL") from None
    if not parts.hostname or parts.username or parts.password or parts.fragment:
        raise _invalid("endpoint", "expected https://host/path without credentials or fragment")
    if parts.scheme == "http" and allow_loopback and parts.hostname == "127.0.0.1" and port:
        return endpoint
    if parts.scheme != "https":
        hint = " (or http://127.0.0.1:<port>/...)" if allow_loopback else ""
        raise _invalid("endpoint", f"must be an https URL{hint}")
    if not host_allowed(parts.hostname, hosts):
        raise _invalid(
            "endpoint", f"{parts.hostname} is not a known push service (PUSH_ENDPOINT_HOSTS)"
        )
    return endpoint


def parse_subscription(
    body: SubscriptionBody, *, allow_loopback: bool, hosts: tuple[str, ...] = ("*",)
) -> Subscription:
    """Validate a subscription; `ValidationFailed` naming `endpoint`, `keys.p256dh` or
    `keys.auth`. The endpoint must be https on one of `hosts` (or loopback http when allowed).
    Keys are normalised to base64url without padding."""
    endpoint = _check_endpoint(body.endpoint, allow_loopback, hosts)
    try:
        p256dh = parse_public_key(body.keys.p256dh)
    except ValueError as exc:
        raise _invalid("keys.p256dh", str(exc)) from None
    try:
        auth = b64url_decode(body.keys.auth)
    except ValueError:
        raise _invalid("keys.auth", "expected base64url of 16 bytes") from None
    if len(auth) != 16:
        raise _invalid("keys.auth", f"expected 16 bytes, got {len(auth)}")
    return Subscription(endpoint, b64url_encode(p256dh), b64url_encode(auth))


# Payload.


def _encoded(body: dict[str, Any]) -> bytes:
    return msgspec.json.encode(body)


def payload(
    notification_id: UUID, title: str, content: str, type_: str, action: dict[str, Any] | None
) -> bytes:
    """The JSON the service worker receives, at most `MAX_PLAINTEXT` bytes (see module doc)."""
    body: dict[str, Any] = {
        "id": str(notification_id),
        "title": title,
        "content": content,
        "type": type_,
        "action": action,
    }
    encoded = _encoded(body)
    if len(encoded) <= MAX_PLAINTEXT:
        return encoded
    body["content"] = TRUNCATED_MARKER
    if len(_encoded(body)) > MAX_PLAINTEXT:
        body["action"] = None  # an action this large cannot travel; the app has the full one
    room = MAX_PLAINTEXT - len(_encoded(body))
    # Cut by characters, then shrink until the JSON (escapes, multi-byte UTF-8) fits.
    cut = content[: max(room, 0)]
    while cut:
        body["content"] = cut + TRUNCATED_MARKER
        encoded = _encoded(body)
        if len(encoded) <= MAX_PLAINTEXT:
            return encoded
        cut = cut[: len(cut) - max(1, (len(encoded) - MAX_PLAINTEXT) // 6)]
    body["content"] = TRUNCATED_MARKER
    return _encoded(body)


def topic(notification_type: str) -> str:
    """The `Topic` header (a collapse key: a newer push of the same topic replaces one still
    queued at the push service): the type itself when it is a valid topic (at most 32 base64url
    characters), else a hash of it."""
    if _TOPIC.match(notification_type):
        return notification_type
    return b64url_encode(hashlib.sha256(notification_type.encode()).digest())[:32]


# The request.


@dataclass(frozen=True, slots=True)
class PushRequest:
    url: str
    headers: dict[str, str]
    body: bytes


def origin(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


def encrypt(plaintext: bytes, subscription: Subscription) -> bytes:
    """RFC 8291 aes128gcm: a fresh ephemeral key pair and salt for every message."""
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    body: bytes = http_ece.encrypt(
        plaintext,
        salt=os.urandom(16),
        private_key=ephemeral,
        dh=b64url_decode(subscription.p256dh),
        auth_secret=b64url_decode(subscription.auth),
        version="aes128gcm",
    )
    return body


def vapid_authorization(keys: VapidKeys, subject: str, endpoint: str, now: float) -> str:
    """`vapid t=<JWT>,k=<public key>` for `endpoint`'s origin, valid `VAPID_LIFETIME` from `now`."""
    signer = Vapid02.from_raw(keys.private_key.encode())
    claims = {"aud": origin(endpoint), "exp": int(now) + VAPID_LIFETIME, "sub": subject}
    header: str = signer.sign(claims)["Authorization"]
    return header


def build_request(
    subscription: Subscription,
    plaintext: bytes,
    *,
    keys: VapidKeys,
    subject: str,
    ttl: int,
    urgency: str,
    topic_name: str,
    now: float,
) -> PushRequest:
    headers = {
        "Authorization": vapid_authorization(keys, subject, subscription.endpoint, now),
        "Content-Encoding": "aes128gcm",
        "Content-Type": "application/octet-stream",
        "TTL": str(ttl),
        "Urgency": urgency,
        "Topic": topic_name,
    }
    return PushRequest(subscription.endpoint, headers, encrypt(plaintext, subscription))


# The answer.

Verdict = Literal["sent", "gone", "retry", "reject"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What to do after one attempt: `sent`; `gone` (delete the subscription); `retry` (after
    `retry_after` seconds when the service said so); `reject` (a permanent error: dead-letter)."""

    verdict: Verdict
    reason: str
    retry_after: float | None = None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - now)


def classify(status: int, retry_after: str | None, now: float) -> Outcome:
    """The push service's status → the next step (RFC 8030 §5, §8.4; 429/5xx may be retried)."""
    if 200 <= status < 300:
        return Outcome("sent", f"{status}")
    if status in (404, 410):
        return Outcome("gone", f"{status}: subscription expired or unsubscribed")
    if status == 429 or status >= 500:
        return Outcome("retry", f"{status}", parse_retry_after(retry_after, now))
    # 400 malformed, 401/403 VAPID refused (subscribed with another key), 413 too large:
    # sending the same request again cannot succeed.
    return Outcome("reject", f"{status}: refused by the push service")
