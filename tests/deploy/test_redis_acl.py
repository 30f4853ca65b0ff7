"""deploy/docker-compose.yml's Redis ACL users, live: Debian's redis-server 7 started with the
exact `command` of the compose file's redis service (passwords filled in), then each service run
as its own user. The users' boundaries hold (the default user can only PING; no service reaches
another's keys, channels or the dangerous commands), and the whole stack works under them: a
WebSocket gets a notification, a chat answer with a tool call streams through the gateway, and a
topic publication reaches its subscriber (the topic's history, the ingest stream)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis
import yaml
from websockets.asyncio.client import connect

from shared.infra import free_port, port_open
from tests.agent_svc.stack import _create_database, ask
from tests.conftest import TEST_INTERNAL_TOKEN, SpawnService
from tests.deploy.test_compose import COMPOSE_FILE
from tests.gateway.conftest import recv_json, recv_until
from tests.support.processes import ServiceProcess
from tests.support.redis_cluster import redis_server_7_or_skip

PASSWORDS = {
    "REDIS_GATEWAY_PASSWORD": "gw-" + "a" * 30,
    "REDIS_NOTIFICATIONS_PASSWORD": "nt-" + "b" * 30,
    "REDIS_AGENT_PASSWORD": "ag-" + "c" * 30,
}
USERS = {"gateway": "REDIS_GATEWAY_PASSWORD", "notifications": "REDIS_NOTIFICATIONS_PASSWORD"}
USERS |= {"agent": "REDIS_AGENT_PASSWORD"}


def _command() -> list[str]:
    """The compose file's redis command with the passwords interpolated as compose would."""
    service = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["redis"]
    interpolate = re.compile(r"\$\{(\w+):\?[^}]*\}")
    return [interpolate.sub(lambda m: PASSWORDS[m[1]], str(arg)) for arg in service["command"]]


@dataclass
class AclRedis:
    port: int

    def url(self, user: str) -> str:
        return f"redis://{user}:{PASSWORDS[USERS[user]]}@127.0.0.1:{self.port}/0"


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRedis]:
    binary = redis_server_7_or_skip()
    folder = tmp_path_factory.mktemp("acl-redis")
    port = free_port()
    command = [binary, *_command()[1:], "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--dir", str(folder), "--save", ""]
    with open(folder / "redis.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not port_open(port):
            assert process.poll() is None, (folder / "redis.log").read_text()
            assert time.monotonic() < deadline, "redis-server did not listen"
            time.sleep(0.05)
        yield AclRedis(port)
    finally:
        process.terminate()
        process.wait(10)


def _refused(client: redis.Redis, *command: str) -> bool:
    try:
        client.execute_command(*command)  # type: ignore[no-untyped-call]
    except redis.exceptions.NoPermissionError:
        return True
    except redis.exceptions.ResponseError as exc:
        return "NOPERM" in str(exc) or "no permissions" in str(exc)
    return False


def test_each_user_reaches_only_its_own_keys_and_channels(acl_redis: AclRedis) -> None:
    """The default user may only PING; the gateway cannot write the ingest stream, the
    notifications service cannot queue chat requests or write the registry (it may read
    `user:sessions:*`, for the Web Push presence check), the agent cannot
    publish to a user; none may run FLUSHALL, CONFIG, KEYS or SHUTDOWN."""
    anonymous = redis.Redis(port=acl_redis.port)
    assert anonymous.ping()
    assert _refused(anonymous, "GET", "ws:session:x")
    clients = {user: redis.Redis.from_url(acl_redis.url(user)) for user in USERS}
    try:
        assert _refused(clients["gateway"], "XADD", "notifications:ingest", "*", "f", "v")
        assert _refused(clients["notifications"], "XADD", "chat:requests", "*", "r", "v")
        assert _refused(clients["notifications"], "SADD", "ws:session:x", "c")
        assert _refused(clients["notifications"], "SADD", "user:sessions:x", "s")
        assert clients["notifications"].scard("user:sessions:x") == 0  # push presence: read only
        assert _refused(clients["agent"], "PUBLISH", "ch:user:x", "frame")
        assert _refused(clients["agent"], "SADD", "ws:user:x", "c")
        for client in clients.values():
            for command in (("FLUSHALL",), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("SHUTDOWN",)):
                assert _refused(client, *command), command
        assert clients["gateway"].publish("ch:user:x", "frame") == 0
        assert clients["agent"].xadd("chat:requests:probe", {"f": "v"})
        assert clients["notifications"].xadd("notifications:ingest:probe", {"f": "v"})
    finally:
        for client in [anonymous, *clients.values()]:
            client.close()


@pytest.fixture(scope="module")
def services(
    acl_redis: AclRedis, spawn_service: SpawnService, base_env: dict[str, str]
) -> Iterator[dict[str, ServiceProcess]]:
    database = asyncio.run(_create_database(base_env["DATABASE_URL"]))
    common = {"DATABASE_URL": database, "ANTHROPIC_API_KEY": "", "AGENT_OFFLINE_DELAY": "0.01"}
    started: dict[str, ServiceProcess] = {}
    try:
        started["notifications"] = spawn_service(
            "notifications_svc", REDIS_URL=acl_redis.url("notifications"), **common
        )
        urls = {"NOTIFICATIONS_URL": started["notifications"].url}
        started["agent"] = spawn_service(
            "agent_svc", REDIS_URL=acl_redis.url("agent"), AGENT_WORKERS="1", **common, **urls
        )
        urls["AGENT_URL"] = started["agent"].url
        started["gateway"] = spawn_service(
            "gateway", REDIS_URL=acl_redis.url("gateway"), **common, **urls
        )
        yield started
    finally:
        ServiceProcess.stop_all(started.values())


async def test_the_stack_works_with_one_user_per_service(
    services: dict[str, ServiceProcess], token_for: Callable[..., str]
) -> None:
    """Under the compose file's ACL users: a created notification reaches the user's
    WebSocket (notifications publishes, the gateway subscribes), and a "notify me" question is
    answered through the gateway by the agent, whose tool's notification arrives too; a topic
    publication reaches its subscriber; no
    service logged a refused command (limits fail open, so a missing key pattern would only
    show there)."""
    user = uuid.uuid4()
    token = token_for(user)
    gateway = services["gateway"]
    async with connect(
        f"{gateway.ws_url}/api/v1/ws/{uuid.uuid4()}?token={token}", compression=None
    ) as ws:
        assert (await recv_json(ws))["type"] == "connection_established"
        async with httpx.AsyncClient() as http:
            created = await http.post(
                services["notifications"].url + "/internal/v1/notifications",
                json={"user_id": str(user), "title": "acl", "content": "c", "type": "test"},
                headers={"Authorization": f"Bearer {TEST_INTERNAL_TOKEN}"},
            )
        assert created.status_code == 201, created.text
        frame = await recv_json(ws, timeout=10)
        assert (frame["type"], frame["data"]["title"]) == ("notification", "acl")
        response, events = await asyncio.to_thread(
            ask, gateway, token, "notify me that the ACLs hold"
        )
        assert response.status_code == 200
        assert [e.type for e in events][-1] == "end", [e.data for e in events]
        frame = await recv_json(ws, timeout=10)
        assert frame["type"] == "notification"
        assert json.dumps(frame["data"]["content"]).find("ACLs hold") >= 0

        topic = f"public:acl-{uuid.uuid4().hex[:8]}"
        await ws.send(json.dumps({"type": "subscribe", "topic": topic}))
        assert (await recv_until(ws, lambda f: f.get("topic") == topic))["type"] == "subscribed"
        async with httpx.AsyncClient() as http:
            published = await http.post(
                f"{gateway.url}/internal/v1/topics/{topic}/publications",
                json={"data": {"acl": True}},
                headers={"Authorization": f"Bearer {TEST_INTERNAL_TOKEN}"},
            )
        assert published.status_code == 201, published.text
        frame = await recv_until(ws, lambda f: f["type"] == "publication")
        assert (frame["topic"], frame["data"]) == (topic, {"acl": True})
    # Limits fail open when Redis refuses them: make sure none was refused for permissions.
    for process in services.values():
        assert "NOPERM" not in process.log(tail=100_000), process.module
        assert "not checked" not in process.log(tail=100_000), process.module
        assert "not counted" not in process.log(tail=100_000), process.module
        assert "topic ingest failed" not in process.log(tail=100_000), process.module


def test_compose_services_use_their_own_user() -> None:
    """Each app service's REDIS_URL names its own ACL user and that user's password."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for name, variable in USERS.items():
        url = services[name]["environment"]["REDIS_URL"]
        assert url.startswith(f"redis://{name}:${{{variable}:?"), url
