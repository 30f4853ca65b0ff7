"""The contract served by a real gateway: the public documents, the docs page and its assets
(all from the gateway itself), and nothing of the internal documents."""

from __future__ import annotations

import re

import httpx
import pytest

from shared.contract import public_asyncapi, public_openapi, render
from tests.gateway.conftest import Cluster


async def test_public_documents_are_served_as_generated(cluster: Cluster) -> None:
    async with httpx.AsyncClient(base_url=cluster.a.url) as client:
        openapi = await client.get("/api/v1/openapi.json")
        asyncapi = await client.get("/api/v1/asyncapi.json")
    assert openapi.status_code == asyncapi.status_code == 200
    assert openapi.headers["content-type"] == "application/json"
    assert openapi.text == render(public_openapi())
    assert asyncapi.text == render(public_asyncapi())


async def test_docs_page_loads_only_local_assets_under_a_strict_csp(cluster: Cluster) -> None:
    async with httpx.AsyncClient(base_url=cluster.a.url) as client:
        page = await client.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["script-src"] == "'self'"  # no inline script, no other origin
        assert directives["default-src"] == "'self'"
        assert "<script>" not in page.text  # scripts are files, never inline
        references = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
        assets = [r for r in references if r.startswith("/docs/assets/")]
        assert len(assets) >= 4 and all(r.startswith("/") for r in references)
        for path in assets:
            response = await client.get(path)
            assert response.status_code == 200, path
            assert len(response.content) > 100, path


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/openapi-internal.json",
        "/api/v1/asyncapi-internal.json",
        "/docs/assets/openapi-internal.json",
        "/docs/assets/..%2F..%2Fshared%2Fsettings.py",
        "/docs/assets/swagger-editor-bundle.js",  # in the package, not on the allowlist
    ],
)
async def test_internal_documents_and_other_files_are_not_served(
    cluster: Cluster, path: str
) -> None:
    async with httpx.AsyncClient(base_url=cluster.a.url) as client:
        response = await client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "NOT_FOUND"
