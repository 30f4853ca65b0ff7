"""deploy/nginx.conf, live: Debian's nginx running the deployed file in front of real gateways.

WebSocket (all three auth methods, close codes), Server-Sent Events (streamed as produced, resumed
with Last-Event-ID), REST and health checks go through the balancer to both gateways; what must
stay private answers 404 at the edge; oversized bodies and a dead upstream get the API's JSON
errors; tokens in query strings never reach the access log. Then the failure that matters: one
gateway is killed while notifications are being created, its clients reconnect through nginx to
the survivor with `?last_seq=`, and every client ends with every notification exactly once, in
order.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared.infra import free_port
from tests.conftest import TEST_INTERNAL_TOKEN, SpawnService
from tests.deploy.nginx import Nginx, StartNginx, upstream_ports
from tests.support.processes import ServiceProcess

Token = Callable[..., str]
INTERNAL = {"Authorization": f"Bearer {TEST_INTERNAL_TOKEN}"}
ORIGIN = "http://localhost:5173"  # allowed by the test environment's CORS_ORIGINS


@dataclass(frozen=True)
class Upstreams:
    notifications: ServiceProcess
    agent: ServiceProcess

    @property
    def env(self) -> dict[str, str]:
        return {"NOTIFICATIONS_URL": self.notifications.url, "AGENT_URL": self.agent.url}


@pytest.fixture(scope="module")
def upstreams(spawn_service: SpawnService) -> Upstreams:
    """notifications_svc and agent_svc (one chat worker, the offline model streaming a word every
    AGENT_OFFLINE_DELAY = 30 ms), shared by the module's gateways."""
    notifications = spawn_service("notifications_svc")
    agent = spawn_service("agent_svc", AGENT_WORKERS="1", NOTIFICATIONS_URL=notifications.url)
    return Upstreams(notifications=notifications, agent=agent)


@pytest.fixture(scope="module")
def gateways(spawn_service: SpawnService, upstreams: Upstreams) -> list[ServiceProcess]:
    """Two real gateways shared by the module's tests that leave them running; every handshake
    is logged (not one in 1000), so the logged client address can be checked."""
    env = upstreams.env | {"WS_LOG_HANDSHAKES": "true"}
    return [spawn_service("gateway", **env), spawn_service("gateway", **env)]


@pytest.fixture(scope="module")
def proxy(
    nginx_path: str, gateways: list[ServiceProcess], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Nginx]:
    """deploy/nginx.conf in front of the module's two gateways."""
    shared = Nginx(tmp_path_factory.mktemp("nginx"), [g.port for g in gateways], nginx_path)
    shared.start()
    yield shared
    shared.stop()


@pytest.fixture
def own_gateways(
    spawn_service: SpawnService, upstreams: Upstreams
) -> Iterator[list[ServiceProcess]]:
    """Two gateways of this test's own, which it may kill."""
    pair = [spawn_service("gateway", **upstreams.env), spawn_service("gateway", **upstreams.env)]
    yield pair
    ServiceProcess.stop_all(pair)


@pytest.fixture
def own_proxy(start_nginx: StartNginx, own_gateways: list[ServiceProcess]) -> Nginx:
    return start_nginx([gateway.port for gateway in own_gateways])


async def _create_notification(upstreams: Upstreams, user: uuid.UUID, title: str) -> int:
    """Create a notification the way internal producers do; its `seq`."""
    async with httpx.AsyncClient() as client:
        response = await client.post(
            upstreams.notifications.url + "/internal/v1/notifications",
            json={"user_id": str(user), "title": title, "content": "body", "type": "test"},
            headers=INTERNAL,
            timeout=10,
        )
    assert response.status_code == 201, response.text
    seq = response.json()["seq"]
    assert isinstance(seq, int)
    return seq


async def _recv(ws: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), timeout)
    frame = json.loads(raw)
    assert isinstance(frame, dict)
    return frame


async def _open(url: str, **kwargs: Any) -> ClientConnection:
    """Connect and read `connection_established`."""
    ws = await connect(url, compression=None, open_timeout=5, **kwargs)
    established = await _recv(ws)
    assert established["type"] == "connection_established", established
    return ws


def _ws_connections(gateway: ServiceProcess) -> float:
    """The gateway's own count of open WebSocket connections (its /metrics)."""
    text = httpx.get(gateway.url + "/metrics", timeout=5).text
    match = re.search(r"^gateway_ws_connections (\S+)$", text, flags=re.MULTILINE)
    assert match, "gateway_ws_connections missing from /metrics"
    return float(match[1])


def test_requests_reach_every_gateway(proxy: Nginx, gateways: list[ServiceProcess]) -> None:
    """Requests through nginx succeed and are spread over both gateways."""
    before = len(proxy.access_lines("/readyz"))
    with httpx.Client(base_url=proxy.url) as client:
        for _ in range(8):
            response = client.get("/readyz")
            assert response.status_code == 200
            assert response.json()["status"] == "ready"
    served = upstream_ports(proxy.access_lines("/readyz", at_least=before + 8)[before:])
    assert sorted(set(served)) == sorted(gateway.port for gateway in gateways)


@pytest.mark.parametrize("path", ["/internal/v1/publish", "/internal/anything", "/metrics"])
def test_private_paths_answer_404_at_the_edge(proxy: Nginx, path: str) -> None:
    """/internal/ and /metrics answer a JSON 404 from nginx; no gateway is contacted."""
    for method in ("GET", "POST"):
        response = httpx.request(method, proxy.url + path, headers={"Authorization": "Bearer x"})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "NOT_FOUND"
    assert upstream_ports(proxy.access_lines(path, at_least=2)) == []


def test_public_contract_is_served_and_internal_documents_are_not(proxy: Nginx) -> None:
    """The docs page and public documents go through the edge; the internal editions exist
    nowhere a client can reach."""
    with httpx.Client(base_url=proxy.url) as client:
        for path in ("/api/v1/openapi.json", "/api/v1/asyncapi.json", "/docs"):
            assert client.get(path).status_code == 200, path
        assert "/internal/" not in client.get("/api/v1/openapi.json").text
        for path in (
            "/api/v1/openapi-internal.json",
            "/api/v1/asyncapi-internal.json",
            "/docs/assets/openapi-internal.json",
            "/internal/v1/openapi.json",
        ):
            assert client.get(path).status_code == 404, path


def test_oversized_body_gets_json_413(proxy: Nginx) -> None:
    """A body over client_max_body_size is refused by nginx with the API's JSON error shape."""
    response = httpx.post(
        proxy.url + "/api/v1/notifications/read-all",
        content=b"x" * (256 * 1024),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_query_string_tokens_are_not_logged(proxy: Nginx) -> None:
    """The access log records paths without query strings, so ?token=<JWT> never lands there."""
    secret = "eyJhbGciOiJIUzI1NiJ9.secret-token-material"
    httpx.get(proxy.url + f"/healthz?token={secret}")
    assert proxy.access_lines("/healthz", at_least=1)
    assert secret not in proxy.log()


# One path per location block: the WebSocket one, the chat one (an EventSource passes its token
# in the query; a path outside the API contract, whose checker would flag nginx's own 503), and /.
@pytest.mark.parametrize("path", ["/api/v1/ws/{id}", "/api/v1/chat/edge/{id}", "/api/v1/x/{id}"])
def test_query_string_tokens_are_not_logged_when_a_gateway_is_down(
    start_nginx: StartNginx, path: str
) -> None:
    """A refused upstream is an nginx error whose message quotes the request line, query string
    included: while a gateway is down, every reconnecting browser's ?token=<JWT> (WebSocket,
    EventSource) would land in the error log. Request errors are not logged; the access log
    still shows the failed upstream."""
    secret = "eyJhbGciOiJIUzI1NiJ9.secret-token-material"
    proxy = start_nginx([free_port()])
    target = path.format(id=uuid.uuid4())
    response = httpx.get(proxy.url + f"{target}?token={secret}")
    assert response.status_code == 503
    [line] = proxy.access_lines(target, at_least=1)
    assert "upstream_status=502" in line
    assert secret not in proxy.log()


def test_no_gateway_left_answers_json_503(start_nginx: StartNginx) -> None:
    """With every upstream refusing connections, clients get a JSON 503 with Retry-After."""
    proxy = start_nginx([free_port()])
    response = httpx.get(proxy.url + "/api/v1/notifications")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.json()["error"]["code"] == "SERVICE_UNAVAILABLE"


def test_killed_gateway_traffic_moves_to_survivor(
    own_proxy: Nginx, own_gateways: list[ServiceProcess]
) -> None:
    """After one gateway is killed (SIGKILL), every request still succeeds via the other."""
    proxy, (dead, survivor) = own_proxy, own_gateways
    dead.kill()
    before = len(proxy.access_lines("/readyz"))
    with httpx.Client(base_url=proxy.url) as client:
        for _ in range(6):
            assert client.get("/readyz").status_code == 200, proxy.log()
    served = upstream_ports(proxy.access_lines("/readyz", at_least=before + 6)[before:])
    assert served == [survivor.port] * 6, proxy.log()


async def test_websocket_through_nginx_all_auth_methods(
    proxy: Nginx, upstreams: Upstreams, token_for: Token
) -> None:
    """Through nginx: the subprotocol (echoed back), header and query-token handshakes open, with
    Origin passed on; ping gets pong; a created notification arrives live on every one."""
    user = uuid.uuid4()
    token = token_for(user)
    base = proxy.ws_url + "/api/v1/ws/"
    by_subprotocol = await _open(
        base + str(uuid.uuid4()),
        subprotocols=["bearer", token],
        origin=ORIGIN,
    )
    assert by_subprotocol.subprotocol == "bearer"
    by_header = await _open(
        base + str(uuid.uuid4()), additional_headers={"Authorization": f"Bearer {token}"}
    )
    by_query = await _open(base + f"{uuid.uuid4()}?token={token}")
    clients = [by_subprotocol, by_header, by_query]
    try:
        await by_query.send(json.dumps({"type": "ping"}))
        assert (await _recv(by_query))["type"] == "pong"
        seq = await _create_notification(upstreams, user, "through nginx")
        for ws in clients:
            frame = await _recv(ws)
            assert frame["type"] == "notification"
            assert (frame["data"]["title"], frame["data"]["seq"]) == ("through nginx", seq)
    finally:
        for ws in clients:
            await ws.close()
    assert token not in proxy.log()


async def test_websocket_refusal_keeps_its_close_code(proxy: Nginx) -> None:
    """A refused handshake still reaches the client as a close frame with code and reason."""
    async with connect(
        proxy.ws_url + f"/api/v1/ws/{uuid.uuid4()}", compression=None, open_timeout=5
    ) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "token missing")


async def test_rest_api_through_nginx(proxy: Nginx, upstreams: Upstreams, token_for: Token) -> None:
    """The REST facade answers through nginx: list, mark all read, unread count; a request
    without a token is the API's JSON 401."""
    user = uuid.uuid4()
    for title in ("one", "two"):
        await _create_notification(upstreams, user, title)
    headers = {"Authorization": f"Bearer {token_for(user)}"}
    async with httpx.AsyncClient(base_url=proxy.url, headers=headers, timeout=10) as client:
        listed = await client.get("/api/v1/notifications")
        assert listed.status_code == 200
        assert [item["title"] for item in listed.json()["items"]] == ["two", "one"]
        marked = await client.post("/api/v1/notifications/read-all")
        assert marked.json() == {"marked_read": 2}
        count = await client.get("/api/v1/notifications/unread/count")
        assert count.json() == {"unread_count": 0}
        anonymous = await client.get("/api/v1/notifications", headers={"Authorization": ""})
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "UNAUTHORIZED"


def _sse_events(body: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(id, event) pairs of an SSE body: `id:` lines are optional, `:` comments skipped."""
    events = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            events.append((fields.get("id"), json.loads(fields["data"])))
    return events


async def test_sse_chat_streams_through_nginx_as_produced_and_resumes(
    proxy: Nginx, token_for: Token
) -> None:
    """POST /api/v1/chat/stream through nginx: seed-format `data:` events from `start` to `end`,
    each token delivered as the model produces it (a buffering proxy would hand them over all at
    once); the GET resume with Last-Event-ID through nginx returns exactly the later events."""
    headers = {"Authorization": f"Bearer {token_for(uuid.uuid4())}"}
    loop = asyncio.get_running_loop()
    arrivals: list[tuple[float, dict[str, Any]]] = []
    async with httpx.AsyncClient(base_url=proxy.url, headers=headers, timeout=30) as client:
        async with client.stream(
            "POST", "/api/v1/chat/stream", json={"message": "hello through nginx"}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    arrivals.append((loop.time(), json.loads(line.removeprefix("data: "))))
        events = [event for _, event in arrivals]
        assert events[0]["type"] == "start" and events[-1]["type"] == "end"
        tokens = [(at, event) for at, event in arrivals if event["type"] == "token"]
        assert len(tokens) >= 10
        assert "".join(event["content"] for _, event in tokens).startswith("[offline model]")
        # ~30 ms between words at the source: delivered one by one, they arrive spread out.
        assert tokens[-1][0] - tokens[0][0] > 0.1 * len(tokens) * 0.03

        middle = len(events) // 2
        resumed = await client.get(
            f"/api/v1/chat/stream/{events[0]['message_id']}",
            headers={"Last-Event-ID": events[middle]["event_id"]},
        )
    assert resumed.status_code == 200
    later = _sse_events(resumed.text)
    assert [event for _, event in later] == events[middle + 1 :]
    assert [event_id for event_id, _ in later] == [e["event_id"] for e in events[middle + 1 :]]


async def test_chat_tool_notification_reaches_websocket_through_nginx(
    proxy: Nginx, token_for: Token
) -> None:
    """A chat question asked over SSE makes the agent create a notification (tool call), which
    reaches the same user's WebSocket — every hop through nginx."""
    user = uuid.uuid4()
    token = token_for(user)
    ws = await _open(proxy.ws_url + f"/api/v1/ws/{uuid.uuid4()}?token={token}")
    try:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=30) as client:
            response = await client.post(
                "/api/v1/chat/stream",
                json={"message": "notify me to stretch"},
                headers={"Authorization": f"Bearer {token}"},
            )
        types = [event["type"] for _, event in _sse_events(response.text)]
        assert types[0] == "start" and types[-1] == "end"
        assert "tool_call" in types and "tool_result" in types
        frame = await _recv(ws)
        assert frame["type"] == "notification"
        assert frame["data"]["content"] == "stretch"
    finally:
        await ws.close()


async def test_graceful_restart_close_code_reaches_the_client(
    start_nginx: StartNginx, spawn_service: SpawnService, upstreams: Upstreams, token_for: Token
) -> None:
    """A gateway stopping gracefully closes with 1012 and nginx passes the close frame on."""
    gateway = spawn_service("gateway", **upstreams.env)
    proxy = start_nginx([gateway.port])
    token = token_for(uuid.uuid4())
    ws = await _open(proxy.ws_url + f"/api/v1/ws/{uuid.uuid4()}?token={token}")
    stopping = asyncio.create_task(asyncio.to_thread(gateway.stop))
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 15)
    await stopping
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1012


@dataclass
class _ResumingClient:
    """A client that keeps one session open through nginx, reconnecting with ?last_seq= after
    any drop, and records every notification seq it receives."""

    url: str
    token: str
    seqs: list[int] = field(default_factory=list)
    reconnects: int = 0

    async def run(self, last: asyncio.Future[int], connected: asyncio.Event) -> None:
        """Receive until the seq in `last` (set once the producer is done) has arrived."""
        ws = await _open(f"{self.url}?token={self.token}")
        connected.set()
        try:
            while not (last.done() and self.seqs and self.seqs[-1] >= last.result()):
                try:
                    frame = await _recv(ws, timeout=0.2)
                except TimeoutError:
                    continue
                except ConnectionClosed:
                    self.reconnects += 1
                    resume = self.seqs[-1] if self.seqs else 0
                    ws = await _open(f"{self.url}?token={self.token}&last_seq={resume}")
                    continue
                if frame["type"] == "notification":
                    self.seqs.append(frame["data"]["seq"])
        finally:
            await ws.close()


async def test_killed_gateway_clients_resume_through_nginx_without_loss(
    own_proxy: Nginx, own_gateways: list[ServiceProcess], upstreams: Upstreams, token_for: Token
) -> None:
    """Six sessions of one user spread over both gateways; notifications keep being created
    while one gateway is SIGKILLed. Its clients reconnect through nginx (to the survivor) with
    ?last_seq=, the others never drop, and every client ends with every seq once, in order."""
    user = uuid.uuid4()
    token = token_for(user)
    clients = [
        _ResumingClient(f"{own_proxy.ws_url}/api/v1/ws/{uuid.uuid4()}", token) for _ in range(6)
    ]
    last: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    connected = [asyncio.Event() for _ in clients]
    tasks = [
        asyncio.create_task(client.run(last, event))
        for client, event in zip(clients, connected, strict=True)
    ]
    try:
        async with asyncio.timeout(10):
            for event in connected:
                await event.wait()
        victim, survivor = own_gateways
        # least_conn spreads the long-lived connections evenly.
        assert (_ws_connections(victim), _ws_connections(survivor)) == (3, 3)

        created: list[int] = []
        for index in range(30):
            if index == 10:
                victim.kill()
            created.append(await _create_notification(upstreams, user, f"n{index}"))
            await asyncio.sleep(0.02)
        last.set_result(created[-1])
        async with asyncio.timeout(30):
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    assert sorted(client.reconnects for client in clients) == [0, 0, 0, 1, 1, 1]
    for client in clients:
        assert client.seqs == created


def test_encoded_dot_segments_cannot_reach_internal(proxy: Nginx) -> None:
    """`/api/v1/%2e%2e/%2e%2e/internal/...` is normalised by nginx to /internal/ and refused at
    the edge, even carrying the internal token: no gateway sees it."""
    before = len(proxy.access_lines("/internal/v1/publish"))
    response = httpx.post(
        proxy.url + "/api/v1/%2e%2e/%2e%2e/internal/v1/publish",
        json={"frame": {"type": "x"}, "broadcast": True},
        headers=INTERNAL,
    )
    assert response.status_code == 404
    lines = proxy.access_lines("/internal/v1/publish", at_least=before + 1)[before:]
    assert len(lines) == 1
    assert upstream_ports(lines) == []


# Edge limits (deploy/nginx.conf): each test runs an nginx of its own, so its limit zones start
# empty and the module's shared proxy is never throttled by them.
API_RATE, API_BURST = 50, 100  # limit_req zone=api
CONNECTIONS_PER_ADDRESS = 100  # limit_conn per_address


async def test_request_rate_per_address_answers_json_429(
    start_nginx: StartNginx, gateways: list[ServiceProcess]
) -> None:
    """Requests from one address beyond the burst are refused by nginx with the API's JSON 429
    and Retry-After; no more got through before the first refusal than the burst plus the
    rate over the time taken (nginx's own bound)."""
    proxy = start_nginx([g.port for g in gateways])
    passed, refused = 0, None
    loop = asyncio.get_running_loop()
    # A public API route (answered 401 here: no token) whose contract documents the 429; the
    # edge limit covers it and /healthz alike (`location /`), but /healthz documents 200 only.
    path = "/api/v1/notifications/unread/count"
    async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as client:
        start = loop.time()
        for _ in range(20):  # up to 20 rounds of 50 concurrent requests
            answers = await asyncio.gather(*(client.get(path) for _ in range(50)))
            passed += sum(a.status_code != 429 for a in answers)
            refused = next((a for a in answers if a.status_code == 429), None)
            if refused is not None:
                break
        elapsed = loop.time() - start
    assert refused is not None, f"{passed} requests passed, none refused"
    assert passed <= API_BURST + API_RATE * elapsed + 1
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "RATE_LIMITED"


async def test_connections_per_address_are_capped(
    start_nginx: StartNginx, gateways: list[ServiceProcess], token_for: Token
) -> None:
    """With 100 WebSockets open from one address, the next handshake is refused by nginx with
    a JSON 429 TOO_MANY_CONNECTIONS; once one closes, a new one opens. (Twenty users with five
    connections each, so the gateways' own per-user and per-session caps are not what
    refuses.)"""
    proxy = start_nginx([g.port for g in gateways])
    owners = {uuid.uuid4(): token_for(uuid.uuid4()) for _ in range(CONNECTIONS_PER_ADDRESS // 5)}

    def url(session: uuid.UUID, token: str | None = None) -> str:
        return f"{proxy.ws_url}/api/v1/ws/{session}?token={token or owners[session]}"

    clients = await asyncio.gather(*(_open(url(s)) for s in owners for _ in range(5)))
    try:
        with pytest.raises(InvalidStatus) as refused:
            await connect(url(uuid.uuid4(), token_for(uuid.uuid4())), open_timeout=5)
        response = refused.value.response
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "1"
        assert json.loads(response.body)["error"]["code"] == "TOO_MANY_CONNECTIONS"
        await clients.pop().close()
        clients.append(await _open(url(uuid.uuid4(), token_for(uuid.uuid4()))))
    finally:
        await asyncio.gather(*(ws.close() for ws in clients))


async def test_client_address_is_the_real_one_through_nginx(
    proxy: Nginx, gateways: list[ServiceProcess], token_for: Token
) -> None:
    """A client on 127.0.0.2 sending a forged X-Forwarded-For is logged as 127.0.0.2 by the
    gateway behind nginx (nginx sets the header from the TCP peer), and as 127.0.0.2 too when
    it sends the forged header to a gateway directly (only loopback 127.0.0.1 is trusted)."""
    forged = "203.0.113.7"
    token = token_for(uuid.uuid4())
    through, direct = uuid.uuid4(), uuid.uuid4()
    targets = [(proxy.ws_url, through)] + [(g.ws_url, direct) for g in gateways[:1]]
    for base, session in targets:
        ws = await _open(
            f"{base}/api/v1/ws/{session}?token={token}",
            additional_headers={"X-Forwarded-For": forged},
            local_addr=("127.0.0.2", 0),
        )
        await ws.close()
    logs = "".join(g.log(tail=100_000) for g in gateways)
    lines = {
        session: [line for line in logs.splitlines() if f"/api/v1/ws/{session}" in line]
        for session in (through, direct)
    }
    for session, found in lines.items():
        assert found, session
        assert all('"127.0.0.2:' in line or " 127.0.0.2:" in line for line in found), found
        assert not any(forged in line for line in found), found
    assert forged not in logs
