"""The Web Push wire format without I/O: payload size and truncation, topics, Retry-After,
the push service's answers, and a request the stand-in's independent RFC 8291 code decrypts."""

from __future__ import annotations

import json
import time
import uuid
from email.utils import formatdate

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from notifications_svc import webpush
from shared import vapid
from tests.support.push_service import StandInSubscription, decrypt, unb64url


def test_payload_is_the_notification_json() -> None:
    """id, title, content, type and action, nothing else."""
    notification_id = uuid.uuid4()
    body = webpush.payload(notification_id, "T", "C", "task", {"url": "/x"})
    assert json.loads(body) == {
        "id": str(notification_id),
        "title": "T",
        "content": "C",
        "type": "task",
        "action": {"url": "/x"},
    }


@pytest.mark.parametrize("char", ["a", "é", "😀", '"', "\n"])
def test_long_content_is_truncated_with_a_marker(char: str) -> None:
    """Content that would exceed 3993 bytes is cut to fit (whatever its encoding) and ends
    with the marker; the rest of the notification is intact."""
    body = webpush.payload(uuid.uuid4(), "T" * 255, char * 10_000, "task", {"url": "/x"})
    decoded = json.loads(body)
    assert len(body) <= webpush.MAX_PLAINTEXT
    assert len(body) > webpush.MAX_PLAINTEXT - 16
    assert decoded["content"].endswith(webpush.TRUNCATED_MARKER)
    assert decoded["content"].startswith(char * 10)
    assert decoded["title"] == "T" * 255 and decoded["action"] == {"url": "/x"}


def test_oversized_action_is_dropped() -> None:
    """An action too big to travel is dropped rather than the push."""
    body = webpush.payload(uuid.uuid4(), "T", "C", "task", {"blob": "x" * 5000})
    assert len(body) <= webpush.MAX_PLAINTEXT
    assert json.loads(body)["action"] is None


def test_topic_is_the_type_or_a_hash_of_it() -> None:
    """Valid topics pass through; others become 32 base64url characters, stably."""
    assert webpush.topic("task_created") == "task_created"
    hashed = webpush.topic("order.shipped/eu")
    assert len(hashed) == 32 and hashed == webpush.topic("order.shipped/eu")
    assert webpush.topic("x" * 33) != "x" * 32


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (201, "sent"),
        (202, "sent"),
        (404, "gone"),
        (410, "gone"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
        (400, "reject"),
        (403, "reject"),
        (413, "reject"),
    ],
)
def test_classify(status: int, verdict: str) -> None:
    """Each push service status leads to its step (RFC 8030)."""
    assert webpush.classify(status, None, 0).verdict == verdict


def test_retry_after_seconds_and_date() -> None:
    """Retry-After as delta-seconds or as an HTTP date; garbage is ignored."""
    now = time.time()
    assert webpush.parse_retry_after("120", now) == 120
    in_a_minute = formatdate(now + 60, usegmt=True)
    assert webpush.parse_retry_after(in_a_minute, now) == pytest.approx(60, abs=1)
    assert webpush.parse_retry_after("soon", now) is None
    assert webpush.classify(429, "30", now).retry_after == 30


def test_request_decrypts_and_verifies_independently() -> None:
    """The stand-in's own RFC 8291 code decrypts the body with the browser's private key, and
    PyJWT verifies the VAPID token: ES256, aud the origin, exp 12 h ahead."""
    keys = vapid.generate()
    browser_key = ec.generate_private_key(ec.SECP256R1())
    auth = b"0123456789abcdef"
    browser = StandInSubscription("t", "https://push.example:8443/p/t", browser_key, auth)
    subscription = webpush.parse_subscription(
        webpush.decode_subscription(json.dumps(browser.json()).encode()), allow_loopback=False
    )
    now = time.time()
    plaintext = webpush.payload(uuid.uuid4(), "T", "C", "task", None)
    request = webpush.build_request(
        subscription,
        plaintext,
        keys=keys,
        subject="mailto:ops@example.com",
        ttl=60,
        urgency="high",
        topic_name="task",
        now=now,
    )
    assert decrypt(request.body, browser_key, auth) == plaintext
    assert len(request.body) <= 4096
    scheme, _, params = request.headers["Authorization"].partition(" ")
    parts = dict(p.split("=", 1) for p in params.split(","))
    assert scheme == "vapid" and parts["k"] == keys.public_key
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(parts["k"]))
    claims = jwt.decode(
        parts["t"], public, algorithms=["ES256"], audience="https://push.example:8443"
    )
    assert claims["exp"] == int(now) + 12 * 3600
    assert claims["sub"] == "mailto:ops@example.com"
    assert request.headers["TTL"] == "60" and request.headers["Urgency"] == "high"


def test_each_request_uses_a_fresh_salt_and_key() -> None:
    """Two encryptions of the same payload differ (new ephemeral key and salt each time)."""
    browser_key = ec.generate_private_key(ec.SECP256R1())
    browser = StandInSubscription("t", "https://push.example/p", browser_key, b"0123456789abcdef")
    subscription = webpush.Subscription(
        browser.endpoint, browser.json()["keys"]["p256dh"], browser.json()["keys"]["auth"]
    )
    first, second = webpush.encrypt(b"same", subscription), webpush.encrypt(b"same", subscription)
    assert first[:16] != second[:16] and first[21:86] != second[21:86]


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("fcm.googleapis.com", True),
        ("FCM.googleapis.com.", True),
        ("web.push.apple.com", True),
        ("push.apple.com", False),
        ("evilpush.apple.com", False),
        ("push.apple.com.evil.example", False),
        ("googleapis.com", False),
    ],
)
def test_host_allowed(host: str, allowed: bool) -> None:
    """Exact names match case-insensitively; `*.suffix` matches subdomains only."""
    patterns = ("fcm.googleapis.com", "*.push.apple.com")
    assert webpush.host_allowed(host, patterns) is allowed
    assert webpush.host_allowed(host, ("*",))
