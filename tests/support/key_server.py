"""A real JWKS key server on loopback for tests, which can be told to hang.

It runs in threads of its own (like a remote identity provider would, apart from our event loop),
serves whatever keys the test sets, counts requests, and while `hang()` is in force holds every
request open without answering until `release()`. `requested` lets a test wait, without sleeping,
until a request has reached the server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


class KeyServer:
    """JWKS over HTTP at `url`; `keys` may be replaced at any time."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.cache_control = ""
        self.requests = 0
        self.requested = threading.Event()  # set on every request received
        self._hanging = threading.Event()
        self._release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                server.requested.set()
                if server._hanging.is_set():
                    server._release.wait(60)
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                if server.cache_control:
                    self.send_header("cache-control", server.cache_control)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def hang(self) -> None:
        """From now on, hold every request open unanswered (and forget earlier requests, so
        `requested` signals the first held one)."""
        self.requested.clear()
        self._release.clear()
        self._hanging.set()

    def release(self) -> None:
        """Answer the held requests and every later one at once."""
        self._hanging.clear()
        self._release.set()

    @contextmanager
    def running(self) -> Iterator[KeyServer]:
        self._thread.start()
        try:
            yield self
        finally:
            self.release()
            self._http.shutdown()
            self._http.server_close()


class SigningKey:
    """An RSA key pair named `kid`: its public JWK and RS256 tokens signed with it."""

    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict[str, Any]:
        public = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return public | {"kid": self.kid, "alg": "RS256", "use": "sig"}

    def token(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.private, algorithm="RS256", headers={"kid": self.kid})
