"""`shared.http`: bearer parsing, internal headers and their check, the error handlers' bodies —
through Starlette's test client, no server."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from shared.errors import NotFound, error_body
from shared.http import EXCEPTION_HANDLERS, bearer_token, internal_headers, require_internal

TOKEN = "internal-" + "z" * 32


async def _bearer(request: Request) -> Response:
    return Response(str(bearer_token(request)))


async def _internal(request: Request) -> Response:
    require_internal(request, TOKEN)
    return Response("ok")


async def _missing(request: Request) -> Response:
    raise NotFound("no such thing")


async def _bug(request: Request) -> Response:
    raise RuntimeError("boom")


def _client() -> TestClient:
    app = Starlette(
        routes=[
            Route("/bearer", _bearer),
            Route("/internal", _internal),
            Route("/missing", _missing),
            Route("/bug", _bug),
        ],
        exception_handlers=dict(EXCEPTION_HANDLERS),
    )
    return TestClient(app, raise_server_exceptions=False)


def test_bearer_token_parsing() -> None:
    """The scheme is case-insensitive; anything but a non-empty bearer credential is None."""
    client = _client()
    assert client.get("/bearer", headers={"Authorization": "bEaReR  abc "}).text == "abc"
    for header in ("", "Basic abc", "Bearer ", "Bearer"):
        assert client.get("/bearer", headers={"Authorization": header}).text == "None"


def test_internal_headers_pass_require_internal() -> None:
    """What `internal_headers` builds is what `require_internal` accepts; a wrong token is 401."""
    client = _client()
    assert client.get("/internal", headers=internal_headers(TOKEN)).status_code == 200
    refused = client.get("/internal", headers=internal_headers("wrong"))
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "UNAUTHORIZED"


def test_error_bodies_from_every_handler() -> None:
    """An AppError, Starlette's own 404 and a bug all answer the one error body shape."""
    client = _client()
    missing = client.get("/missing")
    assert missing.status_code == 404 and missing.json() == error_body("NOT_FOUND", "no such thing")
    unrouted = client.get("/nowhere")
    assert unrouted.status_code == 404 and unrouted.json()["error"]["code"] == "NOT_FOUND"
    bug = client.get("/bug")
    assert bug.status_code == 500 and bug.json() == error_body("INTERNAL_ERROR", "internal error")
