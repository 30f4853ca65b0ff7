"""`shared.redis_packing`: commands packed by hiredis are byte for byte what redis-py packs, refuse
what redis-py refuses, and the services' clients use them against a real Redis."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError
from redis.typing import EncodableT

from shared import redis_client
from shared.redis_packing import PackedConnection, client_options
from shared.settings import Settings

COMMANDS: list[tuple[EncodableT, ...]] = [
    ("SET", "key", "value"),
    ("XADD", b"chat:reply:1", "*", b"e", b"\x00\xff" * 300),
    ("EVALSHA", "a" * 40, 2, "k1", "k2", 30_000, -1, 2.5, 0.1, 10**20, ""),
    ("CONFIG GET", "maxmemory"),  # a two-word command name is split
    (b"CLIENT SETNAME", b"gateway"),
    ("SET", "ключ", "значение ✓"),  # str as UTF-8
    ("SET", memoryview(b"view"), bytearray(b"array")),
    ("HSET", "h", *[f"field{i}" for i in range(600)]),  # past redis-py's 6,000-byte chunking
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: str(c[0]))
def test_packs_the_same_bytes_as_redis_py(command: tuple[EncodableT, ...]) -> None:
    expected = b"".join(bytes(part) for part in Connection().pack_command(*command))
    assert b"".join(PackedConnection().pack_command(*command)) == expected


@pytest.mark.parametrize("value", [True, None, {"a": 1}, [b"x"], object()])
def test_refuses_what_redis_py_refuses(value: object) -> None:
    with pytest.raises(DataError) as theirs:
        Connection().pack_command("SET", "key", value)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=type(value).__name__) as ours:
        PackedConnection().pack_command("SET", "key", value)  # type: ignore[arg-type]
    assert type(ours.value) is type(theirs.value)


def test_only_plain_tcp_urls_get_the_packed_class() -> None:
    """TLS and Unix-socket URLs keep redis-py's own classes (which the URL selects)."""
    assert client_options("redis://127.0.0.1:6379/0") == {"connection_class": PackedConnection}
    assert client_options("rediss://127.0.0.1:6379/0") == {}
    assert client_options("unix:///run/redis.sock") == {}


async def test_the_services_client_runs_commands_packed_by_hiredis(settings: Settings) -> None:
    """A client from `create_client` opens `PackedConnection`s, and plain commands, a pipeline
    and a script call with many keys and arguments give the answers they should."""
    client = redis_client.create_client(settings)
    assert isinstance(client, Redis)
    prefix = f"test:packing:{uuid.uuid4()}"
    names = [f"{prefix}:many:{i}" for i in range(200)]
    try:
        assert client.connection_pool.connection_class is PackedConnection
        await client.set(f"{prefix}:plain", "значение")
        assert await client.get(f"{prefix}:plain") == "значение".encode()
        async with client.pipeline(transaction=False) as pipe:
            for i in range(50):
                pipe.xadd(f"{prefix}:stream", {b"e": str(i).encode()})
            pipe.xlen(f"{prefix}:stream")
            replies = await pipe.execute()
        assert replies[-1] == 50
        script = client.register_script(
            "local n = 0 for i, key in ipairs(KEYS) do"
            " redis.call('SET', key, ARGV[i]) n = n + 1 end return n"
        )
        assert await script(keys=names, args=[i * 1.5 for i in range(200)]) == 200
        assert await client.mget(names[:3]) == [b"0.0", b"1.5", b"3.0"]
    finally:
        await client.delete(f"{prefix}:plain", f"{prefix}:stream", *names)
        await client.aclose()
