"""The fake Anthropic server speaks the Messages API streaming format as the official SDK reads
it: the SDK accumulates its streams into the expected messages and raises on its errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anthropic
import httpx
import pytest

from tests.support import fake_anthropic as fa


@pytest.fixture(scope="module")
def fake() -> Iterator[fa.FakeAnthropic]:
    server = fa.FakeAnthropic().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(fake: fa.FakeAnthropic) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(api_key="test", base_url=fake.url, max_retries=0, timeout=5)
    yield sdk
    await sdk.close()


async def _stream(client: anthropic.AsyncAnthropic, text: str) -> tuple[list[str], object]:
    async with client.messages.stream(
        model="claude-sonnet-4-6", max_tokens=100, messages=[{"role": "user", "content": text}]
    ) as stream:
        types: list[str] = [event.type async for event in stream]
        return types, await stream.get_final_message()


def test_wire_format_frames(fake: fa.FakeAnthropic) -> None:
    """Every frame has an `event:` line naming its `type` and ends with a blank line, the last
    one included; a tool_use block starts with an empty `partial_json`."""
    fake.script("raw", fa.tool_use("toolu_raw", "t", {"a": 1}))
    body = httpx.post(
        fake.url + "/v1/messages",
        json={"stream": True, "messages": [{"role": "user", "content": "raw"}]},
        headers={"x-api-key": "k"},
    ).text
    frames = body.split("\n\n")
    assert frames[-1] == "" and all(f.startswith("event: ") for f in frames[:-1])
    for frame in frames[:-1]:
        event, data = frame.split("\n")
        assert f'"type": "{event.removeprefix("event: ")}"' in data
    assert '"partial_json": ""' in body
    assert frames[-2] == 'event: message_stop\ndata: {"type": "message_stop"}'


async def test_sdk_reads_text_and_tool_use(
    fake: fa.FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    """The SDK accumulates a text reply and a tool_use reply (input parsed from fragments)."""
    fake.script("plain", fa.text("Hel", "lo"))
    types, message = await _stream(client, "plain")
    assert message.content[0].text == "Hello"  # type: ignore[attr-defined]
    assert message.stop_reason == "end_turn"  # type: ignore[attr-defined]
    assert message.usage.output_tokens == 12  # type: ignore[attr-defined]
    assert types[0] == "message_start" and types[-1] == "message_stop" and "text" in types
    fake.script("tool", fa.tool_use("toolu_1", "lookup", {"city": "Paris", "days": 2}))
    _, message = await _stream(client, "tool")
    block = message.content[1]  # type: ignore[attr-defined]
    assert (block.type, block.id, block.input) == (
        "tool_use",
        "toolu_1",
        {"city": "Paris", "days": 2},
    )
    assert message.stop_reason == "tool_use"  # type: ignore[attr-defined]


async def test_sdk_sees_errors_and_cuts(
    fake: fa.FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    """HTTP 529 and 429 raise their SDK errors, an in-stream error raises APIStatusError with
    status 200, and a truncated stream ends with stop_reason None."""
    fake.script("overloaded", fa.http_error(529, "overloaded_error"))
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        await _stream(client, "overloaded")
    assert overloaded.value.status_code == 529
    fake.script("limited", fa.http_error(429, "rate_limit_error"))
    with pytest.raises(anthropic.RateLimitError):
        await _stream(client, "limited")
    fake.script("midstream", fa.error_midstream("Par"))
    with pytest.raises(anthropic.APIStatusError) as midstream:
        await _stream(client, "midstream")
    assert midstream.value.status_code == 200
    assert midstream.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    fake.script("cut", fa.truncated("Cut"))
    _, message = await _stream(client, "cut")
    assert message.stop_reason is None  # type: ignore[attr-defined]
    assert fake.requests_for("cut")[0]["stream"] is True
