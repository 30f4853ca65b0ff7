"""A real notifications_svc with JWKS client tokens whose key server hangs: requests with known
keys keep being answered while one with an unknown `kid` waits for the key server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import SpawnService
from tests.support.key_server import KeyServer, SigningKey
from tests.support.processes import ServiceProcess

AUDIENCE, ISSUER = "realtime-app", "https://id.example"
KNOWN, ROTATED = SigningKey("known"), SigningKey("rotated")


@pytest.fixture(scope="module")
def key_server() -> Iterator[KeyServer]:
    server = KeyServer()
    server.keys = [KNOWN.jwk()]
    with server.running():
        yield server


@pytest.fixture(scope="module")
def service(spawn_service: SpawnService, key_server: KeyServer) -> Iterator[ServiceProcess]:
    process = spawn_service(
        "notifications_svc",
        JWT_ALGORITHM="RS256",
        JWT_JWKS_URL=key_server.url,
        JWT_AUDIENCE=AUDIENCE,
        JWT_ISSUER=ISSUER,
        JWT_JWKS_REFETCH_INTERVAL="0",  # so the unknown kid's fetch is not rate-limited
    )
    try:
        yield process
    finally:
        process.stop()


def _token(key: SigningKey) -> str:
    claims = {
        "sub": str(uuid.uuid4()),
        "exp": int(time.time()) + 600,
        "aud": AUDIENCE,
        "iss": ISSUER,
    }
    return key.token(claims)


async def test_requests_keep_flowing_while_the_key_server_hangs(
    service: ServiceProcess, key_server: KeyServer
) -> None:
    """Twenty requests with fresh known-key tokens are all answered 200 while a request whose
    token needs a fetch is still waiting on the hung key server; that one is answered once the
    server is."""
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:

        async def count(token: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"}
            return await http.get("/api/v1/notifications/unread/count", headers=headers)

        assert (await count(_token(KNOWN))).status_code == 200  # the key set is fetched
        key_server.hang()
        waiting = asyncio.create_task(count(_token(ROTATED)))
        assert await asyncio.to_thread(key_server.requested.wait, 10)
        for _ in range(20):
            assert (await count(_token(KNOWN))).status_code == 200
        assert not waiting.done(), "answered while the key server was hung"
        key_server.keys = [KNOWN.jwk(), ROTATED.jwk()]
        key_server.release()
        assert (await waiting).status_code == 200
