"""The contract documents themselves: valid against their specifications, complete (every route
and frame the code serves is in them), and committed in the form the code generates."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate as validate_openapi
from starlette.routing import Route

from agent_svc import api as agent_api
from gateway import apidocs, chat, internal_api, proxy, topic_api
from gateway import app as gateway_app
from notifications_svc import api as notifications_api
from notifications_svc import internal_api as notifications_internal
from notifications_svc import push_api
from shared.contract import all_documents, render
from shared.contract.asyncapi import CLIENT_FRAMES, SERVER_FRAMES
from shared.errors import AppError
from shared.settings import Settings
from shared.topic_wire import TOPIC_FRAME_TYPES

ROOT = Path(__file__).resolve().parents[2]
ASYNCAPI_SCHEMA = json.loads((Path(__file__).parent / "asyncapi-3.0.0.schema.json").read_text())
DOCUMENTS = all_documents()


def _operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}


def _routes(routes: list[Any], prefix: str) -> set[tuple[str, str]]:
    out = set()
    for route in routes:
        if isinstance(route, Route) and route.path.startswith(prefix):
            out |= {(m, route.path) for m in (route.methods or ()) if m != "HEAD"}
    return out


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_committed_copy_is_what_the_code_generates(name: str) -> None:
    committed = (ROOT / "docs" / "api" / name).read_text()
    assert committed == render(DOCUMENTS[name]), f"docs/api/{name} is stale: run `make docs`"


@pytest.mark.parametrize("name", ["openapi.json", "openapi-internal.json"])
def test_openapi_documents_are_valid_openapi_3_1(name: str) -> None:
    assert DOCUMENTS[name]["openapi"] == "3.1.0"
    validate_openapi(DOCUMENTS[name])


@pytest.mark.parametrize("name", ["asyncapi.json", "asyncapi-internal.json"])
def test_asyncapi_documents_are_valid_asyncapi_3_0(name: str) -> None:
    jsonschema.Draft7Validator(ASYNCAPI_SCHEMA).validate(DOCUMENTS[name])


def test_the_asyncapi_meta_schema_does_catch_a_broken_document() -> None:
    broken = copy.deepcopy(DOCUMENTS["asyncapi.json"])
    broken["operations"]["sendServerFrames"]["action"] = "emit"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(ASYNCAPI_SCHEMA).validate(broken)


def test_every_public_route_is_in_the_public_openapi_document() -> None:
    app = gateway_app.create_app(Settings.from_env({"SECRET_KEY": "k" * 32}))
    served = _routes(app.routes, "/") - {("GET", "/metrics")}
    served -= {(m, p) for m, p in served if p.startswith("/internal/")}
    # The facade's catch-all routes stand for the owning services' public routes.
    proxied = tuple(prefix for prefix, _ in proxy.PUBLIC_PROXY)
    served = {(m, p) for m, p in served if not p.startswith(proxied)}
    served |= _routes(notifications_api.routes, "/api/")
    served |= _routes(push_api.routes, "/api/")
    served |= _routes(agent_api.routes, "/api/")
    served -= {("GET", "/docs/assets/{name}")}  # the page's static files
    served -= {("GET", "/console/{folder}/{name:path}")}  # the console's modules
    assert served == _operations(DOCUMENTS["openapi.json"])


def test_every_internal_route_is_in_the_internal_document_and_only_there() -> None:
    internal_routes = (
        _routes(notifications_internal.routes, "/internal/")
        | _routes(notifications_api.internal_routes, "/internal/")
        | _routes(agent_api.routes, "/internal/")
        | _routes(internal_api.routes, "/internal/")
        | _routes(topic_api.routes, "/internal/")
    )
    assert internal_routes == _operations(DOCUMENTS["openapi-internal.json"])
    public_paths = DOCUMENTS["openapi.json"]["paths"]
    assert not [p for p in public_paths if p.startswith("/internal/")]


def test_every_frame_the_gateway_handles_is_in_the_asyncapi_document() -> None:
    document = DOCUMENTS["asyncapi.json"]
    messages = document["components"]["messages"]
    client = {m["name"] for n, m in messages.items() if n.startswith("Client")}
    assert client == {"ping", "refresh_token"} | chat.CHAT_FRAME_TYPES | TOPIC_FRAME_TYPES
    server = {m["name"] for n, m in messages.items() if n.startswith("Server")}
    assert server == {
        "connection_established", "pong", "message", "notification", "notifications_changed",
        "error", "token_expiring", "token_refreshed", "chat_event",
        "subscribed", "unsubscribed", "publication", "join", "leave", "presence_result",
        "presence_stats", "published", "sub_refreshed",
    }  # fmt: skip
    assert len(CLIENT_FRAMES) == len(client) and len(SERVER_FRAMES) == len(server)


def test_every_close_code_and_frame_error_code_is_documented() -> None:
    document = DOCUMENTS["asyncapi.json"]
    assert set(document["x-close-codes"]) == {"1000", "1008", "1009", "1011", "1012", "1013"}
    codes = document["components"]["schemas"]["FrameErrorCode"]["enum"]
    assert {"INVALID_JSON", "INVALID_MESSAGE", "UNKNOWN_TYPE", "RATE_LIMITED"} <= set(codes)


def test_a_field_added_to_a_wire_type_reaches_the_documents() -> None:
    schema = DOCUMENTS["asyncapi.json"]["components"]["schemas"]["NotificationData"]
    from shared.wire import NotificationData

    assert set(schema["properties"]) == set(NotificationData.__struct_fields__)


def test_documents_are_served_only_in_their_public_edition() -> None:
    served = {route.path for route in apidocs.routes}
    assert "/api/v1/openapi.json" in served and "/api/v1/asyncapi.json" in served
    assert not [p for p in served if "internal" in p]


def _source() -> str:
    packages = ("gateway", "agent_svc", "notifications_svc", "shared")
    return "\n".join(p.read_text() for pkg in packages for p in (ROOT / pkg).rglob("*.py"))


def test_every_error_and_close_code_in_the_code_is_documented() -> None:
    """The enums and route tables are the lists clients switch on: a code the services use but
    the documents do not name would be a surprise to every client."""
    source = _source()
    used = set(re.findall(r'(?:code=|error_frame\(|error_event\([^,]+, )"([A-Z_]+)"', source))
    used |= set(re.findall(r'"(MODEL_[A-Z_]+)"', source))
    # An exception raised without `code=` answers its class's code.
    used |= {
        cls.code
        for cls in _subclasses(AppError)
        if re.search(rf"raise {cls.__name__}\((?![^)]*code=)", source)
    }
    documented = set(DOCUMENTS["asyncapi.json"]["x-error-codes"])
    for name in ("openapi.json", "openapi-internal.json"):
        for operations in DOCUMENTS[name]["paths"].values():
            for operation in operations.values():
                for answer in operation["responses"].values():
                    documented |= set(answer.get("x-error-codes", ()))
    # Codes of the exception handlers for Starlette's own errors and for bugs.
    documented |= {"NOT_FOUND", "METHOD_NOT_ALLOWED", "HTTP_ERROR", "INTERNAL_ERROR"}
    assert used - documented == set()
    closes = {int(c) for c in re.findall(r"(?:Refused|close)\((1\d{3})\b", source)}
    assert closes - {int(c) for c in DOCUMENTS["asyncapi.json"]["x-close-codes"]} == set()


def _subclasses(cls: type[AppError]) -> list[type[AppError]]:
    return [cls, *(s for sub in cls.__subclasses__() for s in _subclasses(sub))]
