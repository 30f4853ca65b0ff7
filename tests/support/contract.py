"""Contract checks on everything the test suite receives from our services.

`install()` (an autouse fixture in tests/conftest.py) wraps the clients every test uses, so
coverage grows with the suite without any test asking for it:

- `httpx.Client.send` / `httpx.AsyncClient.send`: a response to a request whose method and path
  are an operation of the OpenAPI documents (public, or internal for `/internal/...`) must have
  a documented status, and its JSON body must match that status's schema; an SSE body is
  checked event by event as the test reads it. Paths and methods outside the contract (the
  fake Anthropic server, `/metrics`, probes of unsupported methods) are not checked.
- `websockets`' `ClientConnection.recv` (also behind `async for`): every text frame received on
  `/api/v1/ws/...` must be one of the AsyncAPI document's server frames — unless it is exactly a
  frame the test itself published (`POST /internal/v1/publish`, or a PUBLISH/SPUBLISH of an
  envelope), which the gateway forwards as published by design.

Schemas are made strict here (`additionalProperties: false` on every object schema that lists
its properties), so an undocumented field fails too; clients reading the documents stay free to
ignore fields added later. Validators are compiled once per schema.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import redis.commands.core
from websockets.asyncio.client import ClientConnection

from shared.contract import internal_openapi, public_asyncapi, public_openapi

# Ports of edge proxies (deploy/nginx.conf) the suite runs: they answer `/internal/...` 404
# themselves, by design, so only their public routes are held to the contract.
EDGE_PORTS: set[int] = set()

# The counts of the last checker that was uninstalled, for the end-of-run summary.
LAST_COUNTS: dict[str, int] = {}


class ContractViolation(AssertionError):
    """A response or frame that the contract does not describe."""


def _strict(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _strict(v) for k, v in value.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return value


class _Document:
    """One OpenAPI document's operations, matched by method and concrete path."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.components = _strict(document["components"])
        self.operations: list[tuple[str, re.Pattern[str], int, dict[str, Any]]] = []
        for path, methods in document["paths"].items():
            pattern = re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", path) + "$")
            for method, operation in methods.items():
                self.operations.append((method.upper(), pattern, path.count("{"), operation))
        # Literal segments win over parameters (`/read-all` before `/{notification_id}`).
        self.operations.sort(key=lambda op: op[2])

    def operation(self, method: str, path: str) -> dict[str, Any] | None:
        for op_method, pattern, _, operation in self.operations:
            if op_method == method and pattern.match(path):
                return operation
        return None

    @functools.cache  # noqa: B019  (documents live as long as the test session)
    def validator(self, schema_json: str) -> jsonschema.protocols.Validator:
        schema = {"components": self.components, **_strict(json.loads(schema_json))}
        return jsonschema.Draft202012Validator(
            schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )

    def check(self, schema: dict[str, Any], value: Any, where: str) -> None:
        error = jsonschema.exceptions.best_match(
            self.validator(json.dumps(schema, sort_keys=True)).iter_errors(value)
        )
        if error is not None:
            path = "/".join(map(str, error.absolute_path))
            raise ContractViolation(f"{where}: {error.message} at /{path}: {str(value)[:300]}")


class Checker:
    def __init__(self) -> None:
        self.public = _Document(public_openapi())
        self.internal = _Document(internal_openapi())
        asyncapi = public_asyncapi()
        self.frames = _Document({"paths": {}, "components": asyncapi["components"]})
        self.frame_schemas = {
            message["name"]: message["payload"]
            for name, message in asyncapi["components"]["messages"].items()
            if name.startswith("Server")
        }
        self.published: set[str] = set()
        self.checked = {"responses": 0, "frames": 0, "events": 0}
        # Every violation, also when the raising call sat under a broad `except`.
        self.violations: list[str] = []

    def fail(self, message: str) -> ContractViolation:
        self.violations.append(message)
        return ContractViolation(message)

    # HTTP.

    def _operation(self, request: httpx.Request) -> tuple[_Document, dict[str, Any]] | None:
        host = request.url.host
        if host not in ("127.0.0.1", "localhost"):
            return None
        path = request.url.path
        if path.startswith("/internal/") and request.url.port in EDGE_PORTS:
            return None
        document = self.internal if path.startswith("/internal/") else self.public
        operation = document.operation(request.method, path)
        return None if operation is None else (document, operation)

    def expected(
        self, request: httpx.Request, response: httpx.Response
    ) -> tuple[_Document, dict[str, Any]] | None:
        """The documented answer for this response (None: outside the contract); raises
        `ContractViolation` for a status the operation does not document."""
        found = self._operation(request)
        if found is None:
            return None
        document, operation = found
        answer = operation["responses"].get(str(response.status_code))
        where = f"{request.method} {request.url.path} -> {response.status_code}"
        if answer is None:
            documented = sorted(operation["responses"])
            raise self.fail(
                f"{where}: undocumented status (documented: {documented}): {_peek(response)}"
            )
        return document, answer

    def record_request(self, request: httpx.Request) -> None:
        if request.url.path == "/internal/v1/publish" and request.method == "POST":
            try:
                frame = json.loads(request.content)["frame"]
            except (ValueError, KeyError, TypeError, httpx.RequestNotRead):
                return
            self.published.add(_canonical(frame))

    def check_body(
        self, request: httpx.Request, response: httpx.Response, document: _Document, answer: Any
    ) -> None:
        where = f"{request.method} {request.url.path} -> {response.status_code}"
        content = answer.get("content")
        if content is None:
            if response.content:
                raise self.fail(f"{where}: documented without a body: {response.text}")
            return
        media = response.headers.get("content-type", "").split(";")[0]
        if media not in content:
            raise self.fail(f"{where}: media type {media!r}, documented {list(content)}")
        if media == "application/json":
            self.check(document, content[media]["schema"], response.json(), where)
        self.checked["responses"] += 1

    def check(self, document: _Document, schema: dict[str, Any], value: Any, where: str) -> None:
        try:
            document.check(schema, value, where)
        except ContractViolation as exc:
            raise self.fail(str(exc)) from None

    # SSE.

    def sse_events(self, where: str, document: _Document, schema: dict[str, Any]) -> SseChecker:
        """Checks the `data` JSON of each event against the event schema's `contentSchema`."""
        return SseChecker(self, where, document, schema["properties"]["data"]["contentSchema"])

    # WebSocket.

    def record_publish(self, payload: Any) -> None:
        """A PUBLISH/SPUBLISH payload from the test: remember the frame it carries."""
        if isinstance(payload, str):
            payload = payload.encode()
        if not isinstance(payload, bytes | bytearray):
            return
        _, sep, frame = bytes(payload).partition(b"\n")
        if sep:
            try:
                self.published.add(_canonical(json.loads(frame)))
            except ValueError:
                return

    def check_frame(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            raise self.fail(f"server frame is not JSON: {text[:300]}") from None
        if _canonical(frame) in self.published:
            return  # forwarded as the test published it
        kind = frame.get("type") if isinstance(frame, dict) else None
        schema = self.frame_schemas.get(kind) if isinstance(kind, str) else None
        if schema is None:
            raise self.fail(f"undocumented server frame type {kind!r}: {text[:300]}")
        self.check(self.frames, schema, frame, f"server frame {kind!r}")
        self.checked["frames"] += 1


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class SseChecker:
    """Splits an SSE body into events as it arrives; checks each `data:` JSON."""

    def __init__(
        self, checker: Checker, where: str, document: _Document, schema: dict[str, Any]
    ) -> None:
        self.checker, self.where, self.document, self.schema = checker, where, document, schema
        self.buffer = b""

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk
        while b"\n\n" in self.buffer:
            event, self.buffer = self.buffer.split(b"\n\n", 1)
            lines = event.decode().split("\n")
            data = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
            ids = [line[len("id: ") :] for line in lines if line.startswith("id: ")]
            if not data:
                if any(not line.startswith(":") for line in lines if line):
                    raise self.checker.fail(f"{self.where}: not an SSE event: {event[:300]!r}")
                continue  # a comment (keep-alive)
            value = json.loads("\n".join(data))
            self.checker.check(self.document, self.schema, value, f"{self.where} event")
            if ids and ids[0] != value.get("event_id"):
                raise self.checker.fail(f"{self.where}: id {ids[0]} != event_id in {value}")
            self.checker.checked["events"] += 1


class _AsyncSse(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, sse: SseChecker) -> None:
        self.inner, self.sse = inner, sse

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.inner:
            self.sse.feed(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()


class _SyncSse(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream, sse: SseChecker) -> None:
        self.inner, self.sse = inner, sse

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.sse.feed(chunk)
            yield chunk

    def close(self) -> None:
        self.inner.close()


def _peek(response: httpx.Response) -> str:
    """The start of the body when it has been read; a streamed body is not (reading it here
    would raise `ResponseNotRead` and hide the status the violation is about)."""
    if hasattr(response, "_content"):
        return response.text[:300]
    return "(streamed body, not read)"


def _after_send(checker: Checker, request: httpx.Request, response: httpx.Response) -> None:
    expected = checker.expected(request, response)
    if expected is None:
        return
    document, answer = expected
    content = answer.get("content", {})
    media = response.headers.get("content-type", "").split(";")[0]
    if media == "text/event-stream" and media in content:
        where = f"{request.method} {request.url.path}"
        sse = checker.sse_events(where, document, content[media]["schema"])
        if response.is_stream_consumed or hasattr(response, "_content"):
            sse.feed(response.content)
        elif isinstance(response.stream, httpx.AsyncByteStream):
            response.stream = _AsyncSse(response.stream, sse)
        elif isinstance(response.stream, httpx.SyncByteStream):
            response.stream = _SyncSse(response.stream, sse)
        checker.checked["responses"] += 1
        return
    if hasattr(response, "_content"):  # read already (not a streamed request)
        checker.check_body(request, response, document, answer)


def install(checker: Checker) -> Callable[[], None]:
    """Wrap the HTTP, WebSocket and Redis publish clients; returns the function undoing it."""
    async_send = httpx.AsyncClient.send
    sync_send = httpx.Client.send
    recv = ClientConnection.recv
    publish = redis.commands.core.PubSubCommands.publish
    spublish = redis.commands.core.PubSubCommands.spublish

    async def checked_async_send(
        self: httpx.AsyncClient, request: httpx.Request, **kwargs: Any
    ) -> httpx.Response:
        checker.record_request(request)
        response = await async_send(self, request, **kwargs)
        _after_send(checker, request, response)
        return response

    def checked_sync_send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> Any:
        checker.record_request(request)
        response = sync_send(self, request, **kwargs)
        _after_send(checker, request, response)
        return response

    async def checked_recv(self: ClientConnection, *args: Any, **kwargs: Any) -> Any:
        message = await recv(self, *args, **kwargs)
        if isinstance(message, str) and urlsplit(
            self.request.path if self.request is not None else ""
        ).path.startswith("/api/v1/ws/"):
            checker.check_frame(message)
        return message

    def recorded_publish(self: Any, channel: Any, message: Any, **kwargs: Any) -> Any:
        checker.record_publish(message)
        return publish(self, channel, message, **kwargs)

    def recorded_spublish(self: Any, channel: Any, message: Any) -> Any:
        checker.record_publish(message)
        return spublish(self, channel, message)

    httpx.AsyncClient.send = checked_async_send  # type: ignore[method-assign]
    httpx.Client.send = checked_sync_send  # type: ignore[method-assign]
    ClientConnection.recv = checked_recv  # type: ignore[method-assign,assignment]
    redis.commands.core.PubSubCommands.publish = recorded_publish  # type: ignore[method-assign]
    redis.commands.core.PubSubCommands.spublish = recorded_spublish  # type: ignore[method-assign,assignment]

    def uninstall() -> None:
        LAST_COUNTS.update(checker.checked)
        httpx.AsyncClient.send = async_send  # type: ignore[method-assign]
        httpx.Client.send = sync_send  # type: ignore[method-assign]
        ClientConnection.recv = recv  # type: ignore[method-assign]
        redis.commands.core.PubSubCommands.publish = publish  # type: ignore[method-assign]
        redis.commands.core.PubSubCommands.spublish = spublish  # type: ignore[method-assign]

    return uninstall
