"""The lean reference server: the least code that does the gateway's fan-out job, written only for
the benchmark so the gateway's numbers can be read as a ratio to it.

It is the `websockets` library's server plus redis-py pub/sub with one channel per user, on uvloop:
a client connects to `/api/v1/ws/{session_id}?token=<JWT>`, the token is verified (same verifier
as the gateway), the server subscribes to the user's channel on first use, answers with the seed's
`connection_established` frame, and forwards the frame part of every envelope published on the
user's channel or the broadcast channel, with `websockets.broadcast` (one write per connection, no
per-message task). It has none of the gateway's duties — no registry keys, limits, resume, rate
limiting or graceful drain — which is the point: it is the floor the gateway's costs sit on.

Run: `python -m bench.lean_server` with `REDIS_URL`, `SECRET_KEY` and `LEAN_PORT` set.
"""

from __future__ import annotations

import asyncio
import os
import signal
from urllib.parse import parse_qs, urlsplit

import redis.asyncio as redis
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

from shared import keys
from shared.auth import TokenError, TokenVerifier
from shared.settings import Settings
from shared.wire import ConnectionEstablished, ConnectionEstablishedData, encode, utc_now_iso


class LeanServer:
    def __init__(self, settings: Settings) -> None:
        self.verifier = TokenVerifier(settings)
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.pubsub = self.redis.pubsub()
        self.by_channel: dict[bytes, set[ServerConnection]] = {}
        self.everyone: set[ServerConnection] = set()

    async def handler(self, ws: ServerConnection) -> None:
        url = urlsplit(ws.request.path if ws.request else "")
        session_id = url.path.rsplit("/", 1)[-1]
        try:
            identity = await self.verifier.verify(parse_qs(url.query).get("token", [""])[0])
        except TokenError as exc:
            await ws.close(1008, exc.reason)
            return
        channel = keys.user_channel(identity.user_id).encode()
        members = self.by_channel.get(channel)
        if members is None:
            members = self.by_channel[channel] = set()
            await self.pubsub.subscribe(channel)
        members.add(ws)
        self.everyone.add(ws)
        try:
            data = ConnectionEstablishedData(session_id, str(identity.user_id), utc_now_iso())
            await ws.send(encode(ConnectionEstablished(data)), text=True)
            async for _ in ws:
                pass  # the reference ignores client frames; pings are answered by the library
        finally:
            self.everyone.discard(ws)
            members.discard(ws)
            if not members and self.by_channel.get(channel) is members:
                del self.by_channel[channel]
                await self.pubsub.unsubscribe(channel)

    async def forward(self) -> None:
        broadcast_channel = keys.BROADCAST_CHANNEL.encode()
        await self.pubsub.subscribe(broadcast_channel)
        async for message in self.pubsub.listen():
            if message["type"] != "message":
                continue
            frame = message["data"].partition(b"\n")[2]
            channel = message["channel"]
            targets = (
                self.everyone if channel == broadcast_channel else self.by_channel.get(channel)
            )
            if targets:
                broadcast(targets, frame, text=True)


async def main() -> None:
    settings = Settings.from_env()
    server = LeanServer(settings)
    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    forwarder = asyncio.create_task(server.forward())
    port = int(os.environ["LEAN_PORT"])
    async with serve(server.handler, "127.0.0.1", port, compression=None, max_queue=64):
        await stop
    forwarder.cancel()
    await server.redis.aclose()


if __name__ == "__main__":
    uvloop.run(main())
