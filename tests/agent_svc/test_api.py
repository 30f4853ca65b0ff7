"""The sessions API of agent_svc: create, list mine, history; ownership and auth."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

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


def _claims(*pairs: tuple[uuid.UUID, uuid.UUID]) -> dict[str, list[dict[str, str]]]:
    return {"claims": [{"session_id": str(s), "user_id": str(u)} for s, u in pairs]}


def test_claims_decide_each_claim_of_a_batch(agent: ServiceProcess) -> None:
    """One request decides every claim, in order: the owner's own session is `owned`, another
    user's `forbidden`; a new session is `created` by its first claim, refused to the second
    user claiming it in the same batch and `owned` on a repeat."""
    internal = {"Authorization": f"Bearer {TEST_INTERNAL_TOKEN}"}
    a, b = uuid.uuid4(), uuid.uuid4()
    mine, theirs, new = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    first = httpx.post(
        agent.url + "/internal/v1/sessions/claims", json=_claims((mine, a), (theirs, b)),
        headers=internal,
    )  # fmt: skip
    assert [o["status"] for o in first.json()["outcomes"]] == ["created", "created"]
    batch = [(mine, a), (theirs, a), (new, a), (new, b), (new, a)]
    answer = httpx.post(
        agent.url + "/internal/v1/sessions/claims", json=_claims(*batch), headers=internal
    )
    assert answer.status_code == 200, answer.text
    outcomes = answer.json()["outcomes"]
    assert [(o["session_id"], o["user_id"]) for o in outcomes] == [
        (str(s), str(u)) for s, u in batch
    ]
    assert [o["status"] for o in outcomes] == [
        "owned",
        "forbidden",
        "created",
        "forbidden",
        "owned",
    ]
    single = httpx.post(
        agent.url + "/internal/v1/sessions/claim",
        json={"session_id": str(new), "user_id": str(b)},
        headers=internal,
    )
    assert single.status_code == 403, "the batch's owner holds for the single claim too"


def test_claims_past_the_hourly_allowance_are_limited(agent: ServiceProcess) -> None:
    """Of 61 new sessions of one user in one batch, 60 (the default allowance) are created and
    the last is `limited` with the time until the window ends; nothing is claimed for it."""
    internal = {"Authorization": f"Bearer {TEST_INTERNAL_TOKEN}"}
    user = uuid.uuid4()
    batch = [(uuid.uuid4(), user) for _ in range(61)]
    outcomes = httpx.post(
        agent.url + "/internal/v1/sessions/claims", json=_claims(*batch), headers=internal
    ).json()["outcomes"]
    assert [o["status"] for o in outcomes] == ["created"] * 60 + ["limited"]
    assert 3000 < outcomes[-1]["retry_after"] <= 3600
    assert all(o["retry_after"] is None for o in outcomes[:60])
    other = httpx.post(
        agent.url + "/internal/v1/sessions/claims", json=_claims((batch[-1][0], uuid.uuid4())),
        headers=internal,
    )  # fmt: skip
    assert other.json()["outcomes"][0]["status"] == "created", "the limited claim took nothing"


async def test_racing_batches_give_a_new_session_one_owner(agent: ServiceProcess) -> None:
    """Two batches claiming the same new sessions for different users at the same time: each
    session ends with exactly one owner, and each batch learns which."""
    internal = {"Authorization": f"Bearer {TEST_INTERNAL_TOKEN}"}
    a, b = uuid.uuid4(), uuid.uuid4()
    shared_sessions = [uuid.uuid4() for _ in range(50)]
    async with httpx.AsyncClient(base_url=agent.url, headers=internal) as http:
        answers = await asyncio.gather(
            *(
                http.post(
                    "/internal/v1/sessions/claims",
                    json=_claims(*((s, user) for s in shared_sessions)),
                )
                for user in (a, b)
            )
        )
    by_a, by_b = ([o["status"] for o in r.json()["outcomes"]] for r in answers)
    for status_a, status_b in zip(by_a, by_b, strict=True):
        assert sorted((status_a, status_b)) == ["created", "forbidden"]


def test_claims_refuse_bad_requests(agent: ServiceProcess, token_for: Callable[..., str]) -> None:
    """No internal token: 401 and nothing claimed; an empty batch, more than 200 claims or a
    malformed claim: 422; broken JSON: 400."""
    url = agent.url + "/internal/v1/sessions/claims"
    internal = {"Authorization": f"Bearer {TEST_INTERNAL_TOKEN}"}
    session, user = uuid.uuid4(), uuid.uuid4()
    for headers in ({}, {"Authorization": "Bearer wrong"}, _auth(token_for(user))):
        refused = httpx.post(url, json=_claims((session, user)), headers=headers)
        assert refused.status_code == 401
    late = httpx.post(url, json=_claims((session, uuid.uuid4())), headers=internal)
    assert late.json()["outcomes"][0]["status"] == "created", "a refused request claimed it"
    too_many = _claims(*((uuid.uuid4(), user) for _ in range(201)))
    bodies: list[dict[str, Any]] = [
        {"claims": []},
        too_many,
        {"claims": [{"session_id": "x", "user_id": 1}]},
    ]
    for body in bodies:
        assert httpx.post(url, json=body, headers=internal).status_code == 422
    broken = httpx.post(
        url, content=b"{nope", headers=internal | {"Content-Type": "application/json"}
    )
    assert broken.status_code == 400
