"""A fake Anthropic Messages API for the chat benchmark: streams a text answer at fixed pacing,
each delta stamped with the moment it was written, so the client can tell how much latency the
pipeline behind it (agent, Redis streams, gateway, SSE) adds to every token.

Every `POST /v1/messages` gets a 200 event stream in the documented format (message_start,
content_block_start, `FAKE_MODEL_TOKENS` text deltas `FAKE_MODEL_INTERVAL` seconds apart,
content_block_stop, message_delta, message_stop). Delta `i` is the text `[<monotonic_ns>] ` taken
just before the write. The response is delimited by closing the connection, which HTTP/1.1 allows
and keeps this server to a few lines of asyncio.

Run: `python -m bench.fake_model` with `FAKE_MODEL_PORT` set.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from typing import Any

import uvloop

_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"request-id: req_bench\r\nconnection: close\r\n\r\n"
)
STAMP = re.compile(rb"\[(\d+)\]")


def event(name: str, **data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


def stamps(text: bytes) -> list[int]:
    """The emission times (`monotonic_ns`) carried by a piece of answer text."""
    return [int(match) for match in STAMP.findall(text)]


class FakeModel:
    def __init__(self, tokens: int, interval: float) -> None:
        self.tokens, self.interval = tokens, interval

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            await self._answer(writer)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter) -> None:
        message: dict[str, Any] = {
            "id": "msg_bench",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "bench-model",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 1},
        }
        writer.write(
            _HEAD
            + event("message_start", message=message)
            + event("content_block_start", index=0, content_block={"type": "text", "text": ""})
        )
        await writer.drain()
        started = time.monotonic()
        for i in range(self.tokens):
            await asyncio.sleep(max(0.0, started + (i + 1) * self.interval - time.monotonic()))
            text = f"[{time.monotonic_ns()}] "
            writer.write(
                event("content_block_delta", index=0, delta={"type": "text_delta", "text": text})
            )
            await writer.drain()
        writer.write(
            event("content_block_stop", index=0)
            + event(
                "message_delta",
                delta={"stop_reason": "end_turn", "stop_sequence": None},
                usage={"output_tokens": self.tokens},
            )
            + event("message_stop")
        )
        await writer.drain()


async def main() -> None:
    model = FakeModel(
        int(os.environ.get("FAKE_MODEL_TOKENS", "40")),
        float(os.environ.get("FAKE_MODEL_INTERVAL", "0.02")),
    )
    server = await asyncio.start_server(
        model.handle, "127.0.0.1", int(os.environ["FAKE_MODEL_PORT"]), backlog=1024
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main())
