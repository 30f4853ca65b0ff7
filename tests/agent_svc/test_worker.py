"""agent_svc workers against real processes: malformed requests, a worker killed mid-answer
(last: it kills the stack's agent)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis

from shared import keys
from tests.agent_svc.stack import ChatStack, ask, resume, start_stack, text_of
from tests.conftest import SpawnService
from tests.support import fake_anthropic as fa


@pytest.fixture(scope="module")
def stack(
    spawn_service: SpawnService, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ChatStack]:
    chat = start_stack(spawn_service, tmp_path_factory.mktemp("chat-worker"))
    try:
        yield chat
    finally:
        chat.stop()


def test_malformed_request_is_dropped(stack: ChatStack, token_for: Callable[..., str]) -> None:
    """A request entry that does not decode is acknowledged and dropped; the worker keeps
    answering."""
    assert stack.fake is not None
    client = redis.Redis.from_url(stack.env["REDIS_URL"])
    try:
        client.xadd(keys.CHAT_REQUESTS_STREAM, {"r": b"{not a request"})
        key = f"after-{uuid.uuid4().hex[:8]}"
        stack.fake.script(key, fa.text("still here"))
        _, events = ask(stack.gateway, token_for(uuid.uuid4()), key)
        assert text_of(events) == "still here", events
        deadline = time.monotonic() + 5
        while client.xpending(keys.CHAT_REQUESTS_STREAM, keys.CHAT_REQUESTS_GROUP)["pending"]:
            assert time.monotonic() < deadline, "a request stayed pending"
            time.sleep(0.05)
        assert client.xlen(keys.CHAT_REQUESTS_STREAM) == 0
    finally:
        client.close()


def test_worker_killed_mid_answer_is_reclaimed_and_finished(
    stack: ChatStack, spawn_service: SpawnService, token_for: Callable[..., str]
) -> None:
    """SIGKILL the worker mid-answer: another worker reclaims the request and continues the
    answer (the model continues a prefill of what was said), so a reader resuming by event id
    gets the whole answer exactly once, and the stored answer is complete."""
    assert stack.fake is not None
    user = uuid.uuid4()
    token = token_for(user)
    key = f"crash-{uuid.uuid4().hex[:8]}"
    chunks = [f"word{i} " for i in range(30)]
    stack.fake.script(key, fa.text(*chunks, delay=0.1))
    session = uuid.uuid4()
    _, first = ask(stack.gateway, token, f"{key} tell me", session, stop_after_tokens=4)
    message_id = first[0].data["message_id"]
    stack.agent.kill()
    successor = spawn_service("agent_svc", **stack.env)
    stack.extra.append(successor)
    response, rest = resume(stack.gateway, token, message_id, first[-1].data["event_id"])
    assert response.status_code == 200
    assert rest[-1].type == "end" and rest[-1].data["status"] == "complete"
    assert text_of(first) + text_of(rest) == "".join(chunks)
    requests = stack.fake.requests_for(key)
    assert len(requests) == 2
    prefill = requests[1]["messages"][-1]
    assert prefill["role"] == "assistant"
    assert "".join(chunks).startswith(prefill["content"])
    assert len(prefill["content"]) >= len(text_of(first).rstrip())
    history = httpx.get(
        f"{successor.url}/api/v1/sessions/{session}/messages",
        headers={"Authorization": f"Bearer {token}"},
    ).json()["items"]
    assert [(m["role"], m["status"]) for m in history] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert history[1]["content"] == "".join(chunks)
