"""The console across a gateway crash: two gateways behind deploy/nginx.conf, the one holding the
page is killed with SIGKILL while notifications keep being created; the page reconnects through
nginx to the other and shows every notification exactly once, in order (compared with the
notifications service's own listing)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from tests.agent_svc.stack import ChatStack
from tests.client.conftest import PageLog, create_notification
from tests.conftest import SpawnService
from tests.deploy.nginx import StartNginx
from tests.support.processes import ServiceProcess

OpenPage = Callable[..., tuple[Any, PageLog]]
COUNT = 60


def open_connections(gateway: ServiceProcess) -> int:
    """The gateway's own count of open WebSocket connections (its metrics)."""
    text = httpx.get(gateway.url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("gateway_ws_connections "):
            return int(float(line.split()[1]))
    raise AssertionError("no gateway_ws_connections in /metrics")


def test_gateway_killed_page_fails_over_and_misses_nothing(
    console_stack: ChatStack,
    spawn_service: SpawnService,
    start_nginx: StartNginx,
    open_page: OpenPage,
    token_for: Callable[..., str],
) -> None:
    """kill -9 of the page's gateway mid-flow: every notification shown once, in seq order."""
    env = console_stack.env | {"AGENT_URL": console_stack.agent.url}
    gateways = [spawn_service("gateway", **env), spawn_service("gateway", **env)]
    try:
        proxy = start_nginx([g.port for g in gateways])
        user = uuid.uuid4()
        token = token_for(user)
        page, log = open_page()
        page.goto(f"{proxy.url}/console#token={token}")
        page.wait_for_selector("#state[data-status=open]", timeout=10_000)
        page.evaluate(
            "() => { window.__seen = [];"
            " consoleClient.on('notification', (n) => window.__seen.push(n.seq)); }"
        )
        holders = [g for g in gateways if open_connections(g) == 1]
        assert len(holders) == 1, "exactly one gateway holds the page"
        holder, other = holders[0], next(g for g in gateways if g is not holders[0])

        created: list[int] = []

        def produce() -> None:
            for i in range(COUNT):
                created.append(create_notification(console_stack, user, f"n{i}")["seq"])
                time.sleep(0.03)  # pacing: the crash falls in the middle of the flow

        producer = threading.Thread(target=produce)
        producer.start()
        try:
            page.wait_for_function("() => window.__seen.length >= 15", timeout=10_000)
            holder.kill()
        finally:
            producer.join()
        page.wait_for_function(
            f"() => document.querySelectorAll('#notifications li').length === {COUNT}",
            timeout=30_000,
        )
        seen: list[int] = page.evaluate("window.__seen")
        assert seen == sorted(created), "each notification delivered once, in seq order"
        shown = [
            int(s)
            for s in page.eval_on_selector_all(
                "#notifications li", "(items) => items.map((li) => li.dataset.seq)"
            )
        ]
        listed = httpx.get(
            f"{other.url}/api/v1/notifications",
            params={"page_size": 100},
            headers={"authorization": f"Bearer {token}"},
        ).json()["items"]
        assert shown == [item["seq"] for item in listed] == sorted(created, reverse=True)
        assert page.evaluate("window.consoleClient.stats.reconnects") >= 1
        assert open_connections(other) == 1
        assert all(url.startswith(proxy.url + "/") for url in log.requests)
    finally:
        ServiceProcess.stop_all(gateways)
