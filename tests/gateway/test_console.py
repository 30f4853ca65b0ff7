"""`/console`: the page and its modules served from client/, with a strict CSP; nothing else."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from gateway import console


@pytest.fixture
def client() -> TestClient:
    return TestClient(Starlette(routes=console.routes))


def test_page_is_served_with_a_strict_csp(client: TestClient) -> None:
    """The page: HTML, no inline script allowed, same origin only, no framing, no sniffing."""
    response = client.get("/console")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    csp = response.headers["content-security-policy"]
    for directive in ("default-src 'none'", "script-src 'self'", "connect-src 'self'"):
        assert directive in csp
    assert "frame-ancestors 'none'" in csp and "unsafe" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/console/app/main.js">' in response.text


def test_modules_of_the_page_and_the_library_are_served(client: TestClient) -> None:
    """The page's script and the library it imports, as JavaScript, with the same CSP."""
    for path in ("/console/app/main.js", "/console/src/index.js", "/console/app/console.css"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "content-security-policy" in response.headers
    assert client.get("/console/src/index.js").headers["content-type"].startswith("text/javascript")


@pytest.mark.parametrize(
    "path",
    [
        "/console/app/../../pyproject.toml",
        "/console/app/%2e%2e/%2e%2e/pyproject.toml",
        "/console/src/../package.json",
        "/console/node_modules/typescript/package.json",
        "/console/app/.hidden.js",
        "/console/src/types.d.ts",
        "/console/app/missing.js",
        "/console/other/index.js",
    ],
)
def test_nothing_outside_the_console_folders_is_served(client: TestClient, path: str) -> None:
    """Traversal, other folders, hidden files and unknown types answer 404."""
    assert client.get(path).status_code == 404
