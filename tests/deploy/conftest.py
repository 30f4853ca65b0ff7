"""Fixtures for the deployment tests: Debian's nginx with deploy/nginx.conf in front of gateways.

Without nginx the live tests skip with the reason, except under CI (`CI` set), where `.ci/run`
installs nginx and its absence is a failure rather than a silently skipped guarantee.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.deploy.nginx import Nginx, nginx_binary

StartNginx = Callable[[list[int]], Nginx]


@pytest.fixture(scope="session")
def nginx_path() -> str:
    found: str | None = nginx_binary()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed: .ci/run should have installed Debian's nginx")
        pytest.skip("nginx is not installed (apt-get install nginx-light; .ci/run does it in CI)")
    return found


@pytest.fixture
def start_nginx(nginx_path: str, tmp_path: Path) -> Iterator[StartNginx]:
    """Factory: `start_nginx([port, ...])` runs deploy/nginx.conf in front of those gateway
    ports; every nginx it started is stopped when the test ends."""
    started: list[Nginx] = []

    def start(upstreams: list[int]) -> Nginx:
        workdir = tmp_path / f"nginx-{len(started)}"
        workdir.mkdir()
        proxy = Nginx(workdir, upstreams, nginx_path)
        started.append(proxy)
        return proxy.start()

    yield start
    for proxy in started:
        proxy.stop()
