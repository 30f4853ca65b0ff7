"""JWKS keys: fetched asynchronously, refreshed in the background, unknown `kid`s negatively
cached and rate-limited, and a hung key server never holds up a request that does not need it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared.auth import TokenError, TokenVerifier
from shared.jwks import JwksKeys
from shared.settings import Settings
from tests.support.key_server import KeyServer, SigningKey

AUDIENCE, ISSUER = "realtime-app", "https://id.example"
KEY_1, KEY_2 = SigningKey("k1"), SigningKey("k2")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    server = KeyServer()
    server.keys = [KEY_1.jwk()]
    with server.running():
        yield server


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _settings(tmp_path: Path, url: str) -> Settings:
    return Settings.from_env(
        {
            "DATA_DIR": str(tmp_path),
            "INTERNAL_TOKEN": "i" * 32,
            "JWT_ALGORITHM": "RS256",
            "JWT_JWKS_URL": url,
            "JWT_AUDIENCE": AUDIENCE,
            "JWT_ISSUER": ISSUER,
        }
    )


@pytest.fixture
async def keys(key_server: KeyServer, clock: Clock) -> AsyncIterator[JwksKeys]:
    jwks = JwksKeys(key_server.url, fetch_timeout=30, min_fetch_interval=30, clock=clock)
    try:
        yield jwks
    finally:
        await jwks.aclose()


@pytest.fixture
async def verifier(tmp_path: Path, key_server: KeyServer, keys: JwksKeys) -> TokenVerifier:
    return TokenVerifier(_settings(tmp_path, key_server.url), jwks=keys)


def _token(key: SigningKey, user: uuid.UUID | None = None) -> str:
    """A distinct token string every call (so the verifier's memory of tokens never answers)."""
    claims = {
        "sub": str(user or uuid.uuid4()),
        "exp": int(time.time()) + 600,
        "aud": AUDIENCE,
        "iss": ISSUER,
        "jti": uuid.uuid4().hex,
    }
    return key.token(claims)


async def _reason(verifier: TokenVerifier, token: str) -> str:
    with pytest.raises(TokenError) as info:
        await verifier.verify(token)
    return info.value.reason


async def _received(server: KeyServer) -> None:
    """Wait until the key server has received a request (it signals it; no polling)."""
    assert await asyncio.to_thread(server.requested.wait, 10), "no request reached the server"
    server.requested.clear()


async def test_token_verifies_against_the_fetched_key_set(
    verifier: TokenVerifier, keys: JwksKeys
) -> None:
    """A token signed by a key of the set verifies; later tokens reuse the set without a fetch."""
    user = uuid.uuid4()
    assert (await verifier.verify(_token(KEY_1, user))).user_id == user
    for _ in range(5):
        await verifier.verify(_token(KEY_1))
    assert keys.fetches == 1


async def test_a_hung_key_server_holds_up_only_the_token_that_needs_it(
    verifier: TokenVerifier, key_server: KeyServer, clock: Clock
) -> None:
    """While the key server hangs on the fetch an unknown `kid` caused, tokens with known keys
    keep verifying (many of them, one after another, on the same event loop), and the waiting
    token is answered once the server is: nothing waited for anything but its own key."""
    await verifier.verify(_token(KEY_1))
    clock.now += 31  # past the fetch rate limit
    key_server.hang()
    waiting = asyncio.create_task(verifier.verify(_token(KEY_2)))
    await _received(key_server)
    for _ in range(50):
        await verifier.verify(_token(KEY_1))
    assert not waiting.done(), "the key server answered while hung"
    key_server.keys = [KEY_1.jwk(), KEY_2.jwk()]
    key_server.release()
    assert (await waiting).expires_at > time.time()


async def test_hung_key_server_keeps_loop_latency(
    verifier: TokenVerifier, key_server: KeyServer, clock: Clock
) -> None:
    """The event loop's latency while a fetch hangs stays of the order it has without one: a
    ticker's worst delay during the hang is within ten times (plus 20 ms) the worst without."""

    async def worst_tick_delay(ticks: int = 50) -> float:
        worst = 0.0
        for _ in range(ticks):
            start = time.perf_counter()
            await asyncio.sleep(0)
            await verifier.verify(_token(KEY_1))
            worst = max(worst, time.perf_counter() - start)
        return worst

    await verifier.verify(_token(KEY_1))
    baseline = await worst_tick_delay()
    clock.now += 31
    key_server.hang()
    waiting = asyncio.create_task(verifier.verify(_token(KEY_2)))
    await _received(key_server)
    during = await worst_tick_delay()
    assert not waiting.done()
    assert during <= 10 * baseline + 0.02, (during, baseline)
    key_server.release()
    assert await _reason_of(waiting) == "token signing key unknown"


async def _reason_of(task: asyncio.Task[object]) -> str:
    with pytest.raises(TokenError) as info:
        await task
    return info.value.reason


async def test_unknown_kid_is_remembered_and_refused_without_a_fetch(
    verifier: TokenVerifier, keys: JwksKeys, clock: Clock
) -> None:
    """A `kid` a fetch did not bring is refused without another fetch until its memory lapses."""
    await verifier.verify(_token(KEY_1))
    clock.now += 60  # past the fetch rate limit: only the negative cache may stop a fetch
    assert await _reason(verifier, _token(KEY_2)) == "token signing key unknown"
    assert keys.fetches == 2
    clock.now += 60
    assert await _reason(verifier, _token(KEY_2)) == "token signing key unknown"
    assert keys.fetches == 2
    clock.now += 300
    assert await _reason(verifier, _token(KEY_2)) == "token signing key unknown"
    assert keys.fetches == 3


async def test_unknown_kids_cause_at_most_one_fetch_per_interval(
    verifier: TokenVerifier, keys: JwksKeys, clock: Clock
) -> None:
    """Forged tokens with ever new `kid`s make at most one fetch per `min_fetch_interval`."""
    await verifier.verify(_token(KEY_1))
    clock.now += 31
    for n in range(20):
        assert await _reason(verifier, _token(SigningKey(f"forged-{n}"))) == (
            "token signing key unknown"
        )
        clock.now += 1
    assert keys.fetches == 2  # the first one, and one for the twenty forgeries
    clock.now += 30
    await _reason(verifier, _token(SigningKey("forged-late")))
    assert keys.fetches == 3


async def test_concurrent_unknown_kids_share_one_fetch(
    verifier: TokenVerifier, key_server: KeyServer, keys: JwksKeys, clock: Clock
) -> None:
    """Many tokens waiting for keys at once are answered by one fetch, not one each."""
    await verifier.verify(_token(KEY_1))
    clock.now += 31
    key_server.hang()
    waiting = [asyncio.create_task(verifier.verify(_token(KEY_2))) for _ in range(10)]
    await _received(key_server)
    key_server.keys = [KEY_1.jwk(), KEY_2.jwk()]
    key_server.release()
    await asyncio.gather(*waiting)
    assert keys.fetches == 2 and key_server.requests == 2


async def test_key_set_is_refreshed_in_the_background_before_it_expires(
    tmp_path: Path, key_server: KeyServer
) -> None:
    """With `Cache-Control: max-age=1`, the set is fetched again by itself within the second;
    a key rotated in meanwhile then verifies without any fetch on the request's path."""
    key_server.cache_control = "max-age=1"
    jwks = JwksKeys(key_server.url, min_lifetime=0.5)
    verifier = TokenVerifier(_settings(tmp_path, key_server.url), jwks=jwks)
    try:
        await verifier.verify(_token(KEY_1))
        key_server.keys = [KEY_1.jwk(), KEY_2.jwk()]
        jwks.updated.clear()
        await asyncio.wait_for(jwks.updated.wait(), 10)
        fetches = jwks.fetches
        await verifier.verify(_token(KEY_2))
        assert jwks.fetches == fetches == 2
    finally:
        await verifier.aclose()


async def test_unreachable_key_server_refuses_with_a_reason(tmp_path: Path) -> None:
    """No key set could ever be fetched: the token is refused with its own reason, in bounded
    time (the fetch deadline), not a hang."""
    server = KeyServer()
    with server.running():
        server.hang()
        jwks = JwksKeys(server.url, fetch_timeout=0.3)
        verifier = TokenVerifier(_settings(tmp_path, server.url), jwks=jwks)
        try:
            reason = await asyncio.wait_for(_reason(verifier, _token(KEY_1)), 10)
            assert reason == "token signing keys unavailable"
        finally:
            await verifier.aclose()
