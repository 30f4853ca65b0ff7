"""A Web Push service stand-in: a small ASGI app on a loopback uvicorn, in a thread.

It does to each request what a real push service (FCM, Mozilla autopush, Apple) does, written
independently of the code under test (PyJWT and `cryptography`, not py_vapid or http_ece):

- the `Authorization: vapid t=<JWT>,k=<key>` scheme (RFC 8292): `k` is the expected VAPID public
  key, the JWT is ES256 signed by it, `aud` is the endpoint's origin, `exp` is in the future and
  at most 24 hours ahead, `sub` a `mailto:` or `https:` URL;
- `Content-Encoding: aes128gcm`, a `TTL` header, a body of at most 4096 bytes;
- decrypts the body (RFC 8291) with the subscription's private key and auth secret, a single
  record ending with the 0x02 delimiter, and records the JSON it carries.

A request failing any check gets 400/401/403 and its reason lands in `errors` (tests assert it
stays empty). Each subscription (`subscribe()`: a real P-256 key pair and a 16-byte auth secret)
answers its scripted statuses in order, then 201: an `Answer` with a status and an optional
`Retry-After`, or `HANG` (never answers; released by `stop`).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.threaded_server import ThreadedServer


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Answer:
    status: int
    retry_after: str | None = None


HANG = Answer(0)


@dataclass
class StandInSubscription:
    """A browser's side of one subscription: what it registers, and its private key."""

    token: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )

    def json(self) -> dict[str, Any]:
        """`PushSubscription.toJSON()`, as a browser posts it."""
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": b64url(self.public_key), "auth": b64url(self.auth)},
        }


@dataclass(frozen=True)
class Received:
    """One push the stand-in accepted: the decrypted JSON, the request headers, JWT claims."""

    payload: dict[str, Any]
    headers: dict[str, str]
    claims: dict[str, Any]


@dataclass
class _State:
    subscription: StandInSubscription
    script: deque[Answer] = field(default_factory=deque)
    received: list[Received] = field(default_factory=list)
    requests: int = 0
    hanging: int = 0


def decrypt(body: bytes, private_key: ec.EllipticCurvePrivateKey, auth: bytes) -> bytes:
    """RFC 8291 aes128gcm decryption of a one-record message; `ValueError` saying what fails."""
    if len(body) < 21:
        raise ValueError("body shorter than the aes128gcm header")
    salt, rs, id_len = body[:16], int.from_bytes(body[16:20], "big"), body[20]
    sender = body[21 : 21 + id_len]
    ciphertext = body[21 + id_len :]
    if id_len != 65 or sender[0] != 4:
        raise ValueError(f"keyid is not an uncompressed P-256 point ({id_len} bytes)")
    if len(ciphertext) > rs:
        raise ValueError(f"more than one record ({len(ciphertext)} > rs {rs})")
    sender_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sender)
    receiver = private_key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    shared_secret = private_key.exchange(ec.ECDH(), sender_key)
    key_info = b"WebPush: info\x00" + receiver + sender
    ikm = HKDF(hashes.SHA256(), 32, salt=auth, info=key_info).derive(shared_secret)
    cek = HKDF(hashes.SHA256(), 16, salt=salt, info=b"Content-Encoding: aes128gcm\x00").derive(ikm)
    nonce = HKDF(hashes.SHA256(), 12, salt=salt, info=b"Content-Encoding: nonce\x00").derive(ikm)
    padded = AESGCM(cek).decrypt(nonce, ciphertext, None)
    stripped = padded.rstrip(b"\x00")
    if not stripped.endswith(b"\x02"):
        raise ValueError("the last record does not end with the 0x02 delimiter")
    return stripped[:-1]


class PushService:
    """The stand-in. `start()` returns self; `stop()` releases hanging requests and stops."""

    def __init__(self, vapid_public_key: str) -> None:
        self.vapid_public_key = vapid_public_key
        self.errors: list[str] = []
        self._states: dict[str, _State] = {}
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        routes = [Route("/push/{token}", self._push, methods=["POST"])]
        self._http = ThreadedServer("push service stand-in", routes)

    @property
    def origin(self) -> str:
        return self._http.origin

    def start(self) -> PushService:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    def subscribe(self, *answers: Answer) -> StandInSubscription:
        """A new subscription answering `answers` in order, then 201."""
        token = uuid.uuid4().hex
        subscription = StandInSubscription(
            token,
            f"{self.origin}/push/{token}",
            ec.generate_private_key(ec.SECP256R1()),
            os.urandom(16),
        )
        with self._lock:
            self._states[token] = _State(subscription, deque(answers))
        return subscription

    def received(self, subscription: StandInSubscription) -> list[Received]:
        with self._lock:
            return list(self._states[subscription.token].received)

    def requests(self, subscription: StandInSubscription) -> int:
        """Requests that reached this subscription's endpoint, whatever the answer."""
        with self._lock:
            return self._states[subscription.token].requests

    def hanging(self, subscription: StandInSubscription) -> int:
        with self._lock:
            return self._states[subscription.token].hanging

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 10) -> None:
        """`until` for synchronous tests (the browser tests' Playwright sync API)."""
        with self._changed:
            if not self._changed.wait_for(predicate, timeout):
                raise TimeoutError(f"push service stand-in: condition not met in {timeout} s")

    async def until(self, predicate: Callable[[], bool], timeout: float = 10) -> None:
        """Wait until `predicate` (evaluated after every change of the stand-in's state) holds;
        `TimeoutError` after `timeout` seconds."""

        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(predicate, timeout)

        if not await asyncio.to_thread(wait):
            raise TimeoutError(f"push service stand-in: condition not met in {timeout} s")

    def _refuse(self, status: int, reason: str) -> Response:
        with self._lock:
            self.errors.append(reason)
            self._changed.notify_all()
        return Response(reason, status)

    async def _push(self, request: Request) -> Response:
        with self._lock:
            state = self._states.get(request.path_params["token"])
            if state is not None:
                state.requests += 1
                answer = state.script.popleft() if state.script else Answer(201)
                self._changed.notify_all()
        if state is None:
            return Response(status_code=404)
        body = await request.body()
        try:
            claims = self._verify_vapid(request.headers.get("authorization", ""))
        except ValueError as exc:
            return self._refuse(401 if "signature" in str(exc) else 403, f"vapid: {exc}")
        try:
            message = self._check_body(request, body, state.subscription)
        except ValueError as exc:
            return self._refuse(400, f"body: {exc}")
        if answer is HANG:
            with self._lock:
                state.hanging += 1
                self._changed.notify_all()
            await asyncio.sleep(3600)  # cancelled by stop()
        if answer.status == 201:
            with self._lock:
                state.received.append(Received(message, dict(request.headers), claims))
                self._changed.notify_all()
            return Response(status_code=201, headers={"location": f"/message/{uuid.uuid4()}"})
        headers = {} if answer.retry_after is None else {"retry-after": answer.retry_after}
        return Response(status_code=answer.status, headers=headers)

    def _verify_vapid(self, authorization: str) -> dict[str, Any]:
        scheme, _, params = authorization.partition(" ")
        if scheme.lower() != "vapid":
            raise ValueError(f"expected the vapid scheme, got {scheme!r}")
        parts = dict(item.strip().split("=", 1) for item in params.split(",") if "=" in item)
        if set(parts) != {"t", "k"}:
            raise ValueError(f"expected t= and k=, got {sorted(parts)}")
        if parts["k"] != self.vapid_public_key:
            raise ValueError("k is not the application server key")
        public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(parts["k"]))
        try:
            claims: dict[str, Any] = jwt.decode(
                parts["t"],
                key=public,
                algorithms=["ES256"],
                audience=self.origin,
                options={"require": ["aud", "exp", "sub"]},
            )
        except jwt.InvalidSignatureError:
            raise ValueError("bad signature") from None
        except jwt.PyJWTError as exc:
            raise ValueError(f"invalid JWT: {exc}") from None
        if claims["exp"] > time.time() + 24 * 3600:
            raise ValueError("exp more than 24 hours ahead")
        if not str(claims["sub"]).startswith(("mailto:", "https:")):
            raise ValueError(f"sub is not a mailto: or https: URL: {claims['sub']!r}")
        return claims

    def _check_body(
        self, request: Request, body: bytes, subscription: StandInSubscription
    ) -> dict[str, Any]:
        if request.headers.get("content-encoding") != "aes128gcm":
            raise ValueError(f"content-encoding {request.headers.get('content-encoding')!r}")
        if not request.headers.get("ttl", "").isdigit():
            raise ValueError("missing or invalid TTL header")
        if len(body) > 4096:
            raise ValueError(f"body of {len(body)} bytes is over 4096")
        try:
            plaintext = decrypt(body, subscription.private_key, subscription.auth)
        except Exception as exc:
            raise ValueError(f"cannot decrypt: {exc!r}") from None
        message: dict[str, Any] = json.loads(plaintext)
        return message
