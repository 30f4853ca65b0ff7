"""deploy/docker-compose.yml: valid, complete and consistent with the code it runs.

`docker compose config` validates it where the compose plugin exists (it needs no engine); the
file is parsed and checked either way: the services and images the design names, health checks
wired to `depends_on`, nginx as the only published port, every environment variable one the
settings table knows, and no secret with a default value.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import VARIABLES
from tests.deploy.nginx import NGINX_CONF, ROOT

COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
APP_SERVICES = {"gateway": "gateway", "notifications": "notifications_svc", "agent": "agent_svc"}
PORTS = {"gateway": 8000, "notifications": 8001, "agent": 8002}
PORT_VARS = {
    "gateway": "GATEWAY_PORT",
    "notifications": "NOTIFICATIONS_PORT",
    "agent": "AGENT_PORT",
}
SECRETS = (
    "SECRET_KEY",
    "INTERNAL_TOKEN",
    "POSTGRES_PASSWORD",
    "REDIS_GATEWAY_PASSWORD",
    "REDIS_NOTIFICATIONS_PASSWORD",
    "REDIS_AGENT_PASSWORD",
)
TEST_ENV = {name: "x" * 40 for name in SECRETS}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


def _compose_v2() -> list[str] | None:
    """A Compose v2 command (the docker plugin or a standalone binary), if one is installed.
    Compose v1 is end-of-life and rejects the Compose Specification's top-level `name`."""
    candidates = []
    if docker := shutil.which("docker"):
        candidates.append([docker, "compose"])
    if standalone := shutil.which("docker-compose"):
        candidates.append([standalone])
    for command in candidates:
        result = subprocess.run([*command, "version", "--short"], capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.strip().lstrip("v").startswith("2."):
            return command
    return None


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    """`docker compose config` (no engine needed) validates and renders the file."""
    command = _compose_v2()
    if command is None:
        pytest.skip("no Compose v2 here; the parsed checks in this module still run")
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in TEST_ENV.items()))
    result = subprocess.run(
        [*command, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config", "--quiet"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


def test_services_and_images(services: dict[str, Any]) -> None:
    """PostgreSQL 16, Redis 7, nginx and the three services built from deploy/Dockerfile."""
    assert set(services) == {"postgres", "redis", "nginx", *APP_SERVICES}
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["nginx"]["image"].startswith("nginx:")
    for name, module in APP_SERVICES.items():
        service = services[name]
        assert service["command"] == ["python", "-m", module]
        build = service["build"]
        assert (COMPOSE_FILE.parent / build["context"] / build["dockerfile"]).is_file()


def test_two_gateways_and_two_agent_workers(services: dict[str, Any]) -> None:
    """Two gateway instances, and at least two chat workers in all."""
    assert services["gateway"]["deploy"]["replicas"] == 2
    agent = services["agent"]
    assert agent["deploy"]["replicas"] * int(agent["environment"]["AGENT_WORKERS"]) >= 2


def test_only_nginx_is_published(services: dict[str, Any]) -> None:
    """nginx is the single public entry point: no other service publishes a port."""
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"nginx"}
    assert services["nginx"]["ports"] == ["${PUBLIC_PORT:-8080}:8080"]
    mounts = services["nginx"]["volumes"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in mounts
    assert re.search(r"^\s*listen 8080;$", NGINX_CONF.read_text(), flags=re.MULTILINE)


def test_nginx_upstream_names_the_gateway_service(services: dict[str, Any]) -> None:
    """nginx's upstream points at the gateway service on the port the gateway listens on."""
    port = services["gateway"]["environment"]["GATEWAY_PORT"]
    assert re.search(rf"^\s*server gateway:{port}\b", NGINX_CONF.read_text(), flags=re.MULTILINE)


def test_every_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    """Each service declares a health check; app services probe their own /readyz port."""
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
    for name, port in PORTS.items():
        probe = " ".join(services[name]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/readyz" in probe
        assert services[name]["environment"][PORT_VARS[name]] == str(port)


def test_depends_on_waits_for_health(services: dict[str, Any]) -> None:
    """Every dependency is awaited healthy, and names a service that has a health check."""
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, (name, dependency)
            assert "healthcheck" in services[dependency]
    assert set(services["gateway"]["depends_on"]) >= {"redis", "notifications", "agent"}
    assert set(services["nginx"]["depends_on"]) == {"gateway"}


def test_environment_names_are_settings(services: dict[str, Any]) -> None:
    """Every variable given to an app service is one shared/settings.py reads (no typos)."""
    known = {variable.name for variable in VARIABLES}
    for name in APP_SERVICES:
        assert set(services[name]["environment"]) <= known, name


def test_gateways_believe_nginx_forwarded_headers(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    """The gateways trust X-Forwarded-For from nginx's fixed address only (not `*`), that address
    is nginx's on the compose network's subnet, and the gateways are reachable only through it."""
    trusted = services["gateway"]["environment"]["FORWARDED_ALLOW_IPS"]
    assert trusted == services["nginx"]["networks"]["default"]["ipv4_address"]
    (subnet,) = [c["subnet"] for c in compose["networks"]["default"]["ipam"]["config"]]
    assert ipaddress.ip_address(trusted) in ipaddress.ip_network(subnet)
    assert "ports" not in services["gateway"] and "expose" not in services["gateway"]


def test_internal_urls_use_service_names(services: dict[str, Any]) -> None:
    """Services reach each other by compose service name and container port."""
    env = services["gateway"]["environment"]
    assert env["NOTIFICATIONS_URL"] == f"http://notifications:{PORTS['notifications']}"
    assert env["AGENT_URL"] == f"http://agent:{PORTS['agent']}"
    assert env["DATABASE_URL"].endswith("@postgres:5432/realtime")
    for name in APP_SERVICES:
        assert services[name]["environment"]["REDIS_URL"].endswith("@redis:6379/0"), name


def test_secrets_have_no_default(compose: dict[str, Any]) -> None:
    """Secrets must come from the environment: `${NAME:?message}`, never a value in the file."""
    text = COMPOSE_FILE.read_text()
    for name in SECRETS:
        uses = re.findall(rf"\$\{{{name}(:?[?\-][^}}]*)?\}}", text)
        assert uses, name
        assert all(use.startswith(":?") for use in uses), (name, uses)
