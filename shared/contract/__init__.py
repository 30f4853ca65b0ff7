"""The API contract, generated from the wire types: OpenAPI 3.1 (HTTP) and AsyncAPI 3.0
(WebSocket, Redis), each in a public and an internal edition.

Every schema comes from a msgspec type through `msgspec.json.schema_components`; the only
hand-written parts are the route table (which type answers which path with which status) and the
prose. A field added to a type therefore appears in the documents without anyone editing them,
and `tests/contract` fails while the committed copies in `docs/api/` lag behind the code
(`make docs` rewrites them).

- `schemas`: the one place types become JSON Schema (names, collisions, union components);
- `openapi`: the route tables and the OpenAPI builder;
- `asyncapi`: the WebSocket channel, the Redis channels and streams, the AsyncAPI builder;
- `python -m shared.contract [--check]`: write (or compare) `docs/api/*.json`.
"""

from __future__ import annotations

import json
from typing import Any

from shared.contract.asyncapi import internal_asyncapi, public_asyncapi
from shared.contract.openapi import internal_openapi, public_openapi

DOCUMENTS = {
    "openapi.json": public_openapi,
    "asyncapi.json": public_asyncapi,
    "openapi-internal.json": internal_openapi,
    "asyncapi-internal.json": internal_asyncapi,
}


def all_documents() -> dict[str, dict[str, Any]]:
    """Every document by its file name under `docs/api/`."""
    return {name: build() for name, build in DOCUMENTS.items()}


def render(document: dict[str, Any]) -> str:
    """The document as committed and served: 2-space indented JSON, UTF-8 kept, newline-ended."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


__all__ = [
    "DOCUMENTS",
    "all_documents",
    "internal_asyncapi",
    "internal_openapi",
    "public_asyncapi",
    "public_openapi",
    "render",
]
