"""The sessions API of agent_svc: create, list mine, history; ownership and auth."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import TEST_INTERNAL_TOKEN, SpawnService
from tests.support.processes import ServiceProcess


@pytest.fixture(scope="module")
def agent(spawn_service: SpawnService) -> ServiceProcess:
    return spawn_service("agent_svc", AGENT_WORKERS="0")


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_create_list_and_read_sessions(
    agent: ServiceProcess, token_for: Callable[..., str], user_id: uuid.UUID
) -> None:
    """A user creates sessions and lists only their own, newest first; history starts empty."""
    token = token_for(user_id)
    first = httpx.post(agent.url + "/api/v1/sessions", headers=_auth(token))
    second = httpx.post(
        agent.url + "/api/v1/sessions", json={"title": "Plans"}, headers=_auth(token)
    )
    assert first.status_code == second.status_code == 201
    assert second.json()["title"] == "Plans"
    httpx.post(agent.url + "/api/v1/sessions", headers=_auth(token_for(uuid.uuid4())))
    listed = httpx.get(agent.url + "/api/v1/sessions", headers=_auth(token)).json()
    assert listed["total"] == 2
    assert [s["id"] for s in listed["items"]] == [second.json()["id"], first.json()["id"]]
    page = httpx.get(
        agent.url + "/api/v1/sessions", params={"page": 2, "page_size": 1}, headers=_auth(token)
    ).json()
    assert [s["id"] for s in page["items"]] == [first.json()["id"]]
    history = httpx.get(
        f"{agent.url}/api/v1/sessions/{first.json()['id']}/messages", headers=_auth(token)
    )
    assert history.status_code == 200 and history.json()["items"] == []


def test_foreign_and_missing_sessions_are_404(
    agent: ServiceProcess, token_for: Callable[..., str], user_id: uuid.UUID
) -> None:
    """Another user's session answers exactly like a missing one."""
    created = httpx.post(agent.url + "/api/v1/sessions", headers=_auth(token_for(user_id))).json()
    intruder = _auth(token_for(uuid.uuid4()))
    for session in (created["id"], str(uuid.uuid4()), "not-a-uuid"):
        response = httpx.get(f"{agent.url}/api/v1/sessions/{session}/messages", headers=intruder)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "SESSION_NOT_FOUND"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/sessions"),
        ("GET", "/api/v1/sessions"),
        ("GET", f"/api/v1/sessions/{uuid.uuid4()}/messages"),
    ],
)
def test_token_required(agent: ServiceProcess, method: str, path: str) -> None:
    """Every sessions route needs a valid token (401 JSON error otherwise)."""
    for headers in ({}, {"Authorization": "Bearer nope"}):
        response = httpx.request(method, agent.url + path, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "UNAUTHORIZED"


def test_bad_paging_is_422(
    agent: ServiceProcess, token_for: Callable[..., str], user_id: uuid.UUID
) -> None:
    """Out-of-range paging parameters answer 422."""
    response = httpx.get(
        agent.url + "/api/v1/sessions",
        params={"page_size": 1000},
        headers=_auth(token_for(user_id)),
    )
    assert response.status_code == 422


def test_create_session_body_sent_chunked(
    agent: ServiceProcess, token_for: Callable[..., str], user_id: uuid.UUID
) -> None:
    """A body without Content-Length (chunked) is read like any other: its title is kept."""
    response = httpx.post(
        agent.url + "/api/v1/sessions",
        content=iter([b'{"title": ', b'"Chunked"}']),
        headers=_auth(token_for(user_id)) | {"Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["title"] == "Chunked"


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b'{"title": 5}', 422, "VALIDATION_ERROR"),
        (b'{"title": "nul \\u0000 byte"}', 422, "VALIDATION_ERROR"),
        (b'{"title": "' + b"t" * 256 + b'"}', 422, "VALIDATION_ERROR"),
        (b'{"title": "x"', 400, "INVALID_JSON"),
        (b'{"title": "' + b"t" * 70_000 + b'"}', 413, "PAYLOAD_TOO_LARGE"),
        (b'{"title": ' + b"[" * 60_000, 422, "VALIDATION_ERROR"),  # deep, but not a 500
    ],
    ids=["wrong-type", "nul", "title-too-long", "malformed", "too-large", "deep"],
)
def test_create_session_bad_body(
    agent: ServiceProcess,
    token_for: Callable[..., str],
    user_id: uuid.UUID,
    content: bytes,
    status: int,
    code: str,
) -> None:
    """A bad create body answers its JSON error (a NUL PostgreSQL cannot store included),
    never a 500, and creates nothing."""
    headers = _auth(token_for(user_id)) | {"Content-Type": "application/json"}
    response = httpx.post(agent.url + "/api/v1/sessions", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert httpx.get(agent.url + "/api/v1/sessions", headers=headers).json()["total"] == 0


def test_internal_claim_needs_the_internal_token(
    agent: ServiceProcess, token_for: Callable[..., str], user_id: uuid.UUID
) -> None:
    """The session claim refuses no token, a wrong one and a user's JWT (401) and claims
    nothing; with the internal token the first user owns the session and another gets 403."""
    session = str(uuid.uuid4())
    url = agent.url + "/internal/v1/sessions/claim"
    body = {"session_id": session, "user_id": str(user_id)}
    for headers in ({}, {"Authorization": "Bearer wrong"}, _auth(token_for(user_id))):
        refused = httpx.post(url, json=body, headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "UNAUTHORIZED"
    history = httpx.get(
        f"{agent.url}/api/v1/sessions/{session}/messages", headers=_auth(token_for(user_id))
    )
    assert history.status_code == 404, "a refused claim created the session"
    internal = {"Authorization": f"Bearer {TEST_INTERNAL_TOKEN}"}
    claimed = httpx.post(url, json=body, headers=internal)
    assert claimed.status_code == 200 and claimed.json()["created"] is True
    again = httpx.post(url, json=body, headers=internal)
    assert again.status_code == 200 and again.json()["created"] is False
    other = httpx.post(url, json=body | {"user_id": str(uuid.uuid4())}, headers=internal)
    assert other.status_code == 403
    assert other.json()["error"]["code"] == "SESSION_FORBIDDEN"
    for bad, status in ((b"{nope", 400), (b'{"session_id": "x", "user_id": 1}', 422)):
        response = httpx.post(
            url, content=bad, headers=internal | {"Content-Type": "application/json"}
        )
        assert response.status_code == status
