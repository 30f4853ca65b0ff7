"""deploy/local_nginx.py: the README's "two gateways behind nginx without Docker", run as an
operator runs it, and the substitutions it makes in deploy/nginx.conf."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.infra import free_port
from tests.conftest import SpawnService
from tests.deploy.nginx import NGINX_CONF, ROOT, local_nginx
from tests.support.processes import ServiceProcess


def test_render_substitutes_only_listen_upstreams_and_temp_paths(tmp_path: Path) -> None:
    """The rendered file differs from deploy/nginx.conf only in the substituted lines."""
    source = NGINX_CONF.read_text()
    rendered = local_nginx.render(source, port=18080, upstreams=[18000, 18010], workdir=tmp_path)
    removed = set(source.splitlines()) - set(rendered.splitlines())
    added = set(rendered.splitlines()) - set(source.splitlines())
    assert {line.strip() for line in removed} == {
        "listen 8080;",
        "server gateway:8000 max_fails=0;",
    }
    assert {line.strip() for line in added} == {
        "listen 127.0.0.1:18080;",
        "server 127.0.0.1:18000 max_fails=0;",
        "server 127.0.0.1:18010 max_fails=0;",
        *(f"{name}_temp_path {tmp_path / name};" for name in local_nginx.TEMP_DIRS),
    }


def test_render_refuses_a_file_it_cannot_substitute(tmp_path: Path) -> None:
    """A configuration without the expected lines is an error, not a silently different test."""
    with pytest.raises(ValueError, match="listen 8080"):
        local_nginx.render("http {\n}\n", port=1, upstreams=[2], workdir=tmp_path)


@pytest.fixture
def running(
    nginx_path: str, spawn_service: SpawnService
) -> Iterator[tuple[subprocess.Popen[bytes], int, list[ServiceProcess]]]:
    gateways = [spawn_service("gateway"), spawn_service("gateway")]
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "deploy" / "local_nginx.py"), "--listen", str(port)]
        + [str(gateway.port) for gateway in gateways],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield process, port, gateways
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        ServiceProcess.stop_all(gateways)


def test_script_runs_nginx_in_front_of_local_gateways(
    running: tuple[subprocess.Popen[bytes], int, list[ServiceProcess]],
) -> None:
    """`python3 deploy/local_nginx.py --listen P G1 G2` serves the gateways on P until SIGINT,
    then stops nginx and exits 0."""
    process, port, _ = running
    deadline = time.monotonic() + 15
    while True:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
            break
        except httpx.HTTPError:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "nginx did not come up"
            time.sleep(0.1)
    assert response.status_code == 200
    assert response.json()["status"] == "ready"
    process.send_signal(signal.SIGINT)
    assert process.wait(15) == 0
