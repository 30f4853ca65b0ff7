"""Redis commands packed in C: the asyncio connection class the services' Redis clients use.

redis-py's asyncio connections pack every command in Python (`Connection.pack_command`: per
argument an encode, a `str(len)` and a join that copies the growing buffer again), where its
synchronous client packs with hiredis when hiredis is installed. Measured here: 266 µs against
32 µs for a 500-argument script call (the registry attaching 100 connections at once), 2.1 µs
against 0.4 µs for one `XADD`; the connect path spent 6-9 % of the gateway's CPU in redis-py's
packer (bench/PROFILES.md). `PackedConnection` packs with `hiredis.pack_command`: the same bytes,
the same argument rules (bytes, str as UTF-8, int, float; a multi-word command name split) and
the same `DataError` for anything else.

`client_options(url)` names it for a `redis://` URL. A `rediss://` or `unix://` URL selects
redis-py's own TLS or Unix-socket class, and `RedisCluster` takes no connection class: those
keep redis-py's packer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import hiredis
from redis.asyncio.connection import Connection
from redis.exceptions import DataError
from redis.typing import EncodableT

# The stub types the argument as a one-item tuple; hiredis packs a tuple of any length.
_pack: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command


class PackedConnection(Connection):
    """redis-py's asyncio TCP connection, its commands packed by hiredis."""

    def pack_command(self, *args: EncodableT) -> list[bytes]:
        command = args[0]
        if isinstance(command, str):
            args = (*command.encode().split(), *args[1:])
        elif isinstance(command, bytes) and b" " in command:
            args = (*command.split(), *args[1:])
        try:
            return [_pack(args)]
        except TypeError:
            pass
        # hiredis does not take a bytearray, which redis-py sends as it is.
        plain = tuple(bytes(a) if isinstance(a, bytearray) else a for a in args)
        try:
            return [_pack(plain)]
        except TypeError:
            kinds = sorted({type(a).__name__ for a in plain if not _packable(a)})
            raise DataError(
                f"Invalid input of type: {', '.join(kinds)}. Convert to a bytes, string, int or "
                "float first."
            ) from None


def _packable(value: object) -> bool:
    return isinstance(value, bytes | memoryview | str | int | float) and not isinstance(value, bool)


def client_options(url: str) -> dict[str, Any]:
    """The connection class option for a client or pool of `url`: `PackedConnection` for a
    plain `redis://` URL, nothing for the schemes redis-py serves with classes of its own."""
    return {"connection_class": PackedConnection} if urlsplit(url).scheme == "redis" else {}
