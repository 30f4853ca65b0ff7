"""The agent's notification read tools in a deployment whose client tokens are RS256: no service
can mint a user token there, so the tools use notifications_svc's user API for internal callers
(the internal token, the user named by the path)."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.agent_svc.stack import ChatStack, ask, stack_fixture
from tests.conftest import TEST_INTERNAL_TOKEN
from tests.support import fake_anthropic as fa

PRIVATE_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = (
    PRIVATE_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def rs256_token(user: uuid.UUID) -> str:
    claims = {"sub": str(user), "exp": int(time.time()) + 600, "aud": "app", "iss": "https://id"}
    return jwt.encode(claims, PRIVATE_KEY, algorithm="RS256")


stack = stack_fixture(
    "chat-rs256",
    notifications=True,
    JWT_ALGORITHM="RS256",
    JWT_PUBLIC_KEY=PUBLIC_PEM,
    JWT_AUDIENCE="app",
    JWT_ISSUER="https://id",
)


def test_read_tools_work_with_rs256_client_tokens(stack: ChatStack) -> None:
    """With RS256 client tokens, the model's list and count tools see the user's notifications
    (and only theirs)."""
    assert stack.fake is not None
    user, other = uuid.uuid4(), uuid.uuid4()
    service = stack.extra[0].url
    internal = {"Authorization": f"Bearer {TEST_INTERNAL_TOKEN}"}
    for owner, title in ((user, "mine"), (other, "not mine")):
        body = {"user_id": str(owner), "title": title, "content": "c", "type": "test"}
        created = httpx.post(f"{service}/internal/v1/notifications", json=body, headers=internal)
        assert created.status_code == 201, created.text
    key = f"rs-{uuid.uuid4().hex[:8]}"
    stack.fake.script(
        key,
        fa.tool_use("toolu_l1", "list_notifications", {"unread_only": True}),
        fa.tool_use("toolu_c1", "count_unread_notifications", {}),
        fa.text("Done."),
    )
    response, events = ask(stack.gateway, rs256_token(user), f"{key} what is new")
    assert response.status_code == 200, response.text
    results = [e.data for e in events if e.type == "tool_result"]
    assert [r.get("is_error", False) for r in results] == [False, False], results
    listed, counted = (json.loads(r["content"]) for r in results)
    assert [item["title"] for item in listed["items"]] == ["mine"]
    assert counted == {"unread_count": 1}
