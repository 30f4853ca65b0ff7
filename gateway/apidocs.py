"""The public API contract and its docs page, served by the gateway.

`GET /api/v1/openapi.json` and `GET /api/v1/asyncapi.json` answer the public documents generated
from the wire types (`shared.contract`; built once, on first request). `GET /docs` is Swagger UI
for the OpenAPI document plus the AsyncAPI document's frames, with every asset served from here:
Swagger UI's files come from the `swagger-ui-py` package installed beside the gateway, so the page
works without internet and under a CSP that allows this origin only. The internal documents are
never served (they describe `/internal/` routes and Redis, which clients must not reach).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from shared.contract import public_asyncapi, public_openapi, render
from shared.errors import NotFound

_OWN = Path(__file__).parent / "static"

# Swagger UI injects inline styles, hence 'unsafe-inline' for styles only; scripts are files.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _swagger_dir() -> Path:
    # Located without importing `swagger_ui` (its Python side needs web frameworks we do not use).
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("swagger-ui-py is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


# The only files the page loads: an allowlist, not a directory listing.
ASSETS: dict[str, tuple[Path, str]] = {
    "swagger-ui.css": (_swagger_dir() / "swagger-ui.css", "text/css"),
    "swagger-ui-bundle.js": (_swagger_dir() / "swagger-ui-bundle.js", "text/javascript"),
    "favicon-32x32.png": (_swagger_dir() / "favicon-32x32.png", "image/png"),
    "docs.css": (_OWN / "docs.css", "text/css"),
    "docs.js": (_OWN / "docs.js", "text/javascript"),
}


@functools.cache
def _document(name: str) -> bytes:
    build = {"openapi": public_openapi, "asyncapi": public_asyncapi}[name]
    return render(build()).encode()


async def openapi(request: Request) -> Response:
    return Response(_document("openapi"), media_type="application/json")


async def asyncapi(request: Request) -> Response:
    return Response(_document("asyncapi"), media_type="application/json")


async def docs_page(request: Request) -> Response:
    return FileResponse(
        _OWN / "docs.html", media_type="text/html", headers={"Content-Security-Policy": CSP}
    )


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        raise NotFound(f"no asset {name}")
    path, media = ASSETS[name]
    return FileResponse(
        path,
        media_type=media,
        headers={"Cache-Control": "public, max-age=3600", "Content-Security-Policy": CSP},
    )


routes = [
    Route("/api/v1/openapi.json", openapi, methods=["GET"]),
    Route("/api/v1/asyncapi.json", asyncapi, methods=["GET"]),
    Route("/docs", docs_page, methods=["GET"]),
    Route("/docs/assets/{name}", asset, methods=["GET"]),
]
