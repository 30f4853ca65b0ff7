"""The chat benchmark's fake model speaks the Messages streaming format the SDK reads, and
stamps every delta with its write time."""

from __future__ import annotations

import asyncio
import time

import anthropic

from bench.fake_model import FakeModel, stamps
from bench.httpclient import HttpConnection


async def test_sdk_streams_stamped_deltas_at_the_configured_count() -> None:
    """The official SDK reads every delta; each carries a monotonic time from this run."""
    before = time.monotonic_ns()
    server = await asyncio.start_server(FakeModel(5, 0.001).handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = anthropic.AsyncAnthropic(
        base_url=f"http://127.0.0.1:{port}", api_key="bench", max_retries=0
    )
    try:
        async with client.messages.stream(
            model="bench-model", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            texts = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
    assert len(texts) == 5
    times = [stamp for text in texts for stamp in stamps(text.encode())]
    assert len(times) == 5
    assert times == sorted(times)
    assert before < times[0] <= time.monotonic_ns()
    assert final.stop_reason == "end_turn"


async def test_http_client_reads_a_close_delimited_stream() -> None:
    """The bench HTTP client streams a body that ends when the server closes."""
    server = await asyncio.start_server(FakeModel(2, 0.001).handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = HttpConnection("127.0.0.1", port)
    try:
        status, pieces = await conn.stream("POST", "/v1/messages", {}, b"{}")
        body = b"".join([piece async for piece in pieces])
    finally:
        conn.close()
        server.close()
        await server.wait_closed()
    assert status == 200
    assert body.count(b"event: content_block_delta") == 2
    assert body.endswith(b'data: {"type": "message_stop"}\n\n')
