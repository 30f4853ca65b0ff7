"""`GET /console`: the browser console, static files served from the repository's `client/`.

The page is the client library's demonstration and a developer's window on a running stack:
inbox, chat and connection state (docs/frontend.md). It is plain ES modules, so the gateway serves
the files as they are in the repository (no build step, no node at run time):

- `/console` → `client/console/index.html`;
- `/console/app/<file>` → `client/console/<file>` (the page's script and style; `sw.js`, the
  Web Push service worker, with `Service-Worker-Allowed: /console`);
- `/console/src/<file>` → `client/src/<file>` (the client library the page imports, at the same
  relative path as in the repository, so the page's imports work served and type-checked).

Only files with a known extension, inside those folders, are served; anything else is 404. Every
response carries a strict Content-Security-Policy: scripts, styles, images and connections from
the gateway's own origin only, no inline script or style, no framing. The token the page uses is
in the URL's fragment (`/console#token=...`), which browsers never send to a server.
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

CLIENT_DIR = Path(__file__).resolve().parents[1] / "client"
FOLDERS = {"app": CLIENT_DIR / "console", "src": CLIENT_DIR / "src"}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


# The console's service worker (Web Push) lives beside the page's other files but controls the
# page itself: its scope, `/console`, is above its own folder, which the browser allows only when
# the script's response says so.
SERVICE_WORKER = FOLDERS["app"] / "sw.js"
SERVICE_WORKER_SCOPE = "/console"


def _file(path: Path) -> Response:
    content_type = CONTENT_TYPES.get(path.suffix)
    if content_type is None or not path.is_file():
        return PlainTextResponse("not found", status_code=404, headers=HEADERS)
    headers = HEADERS
    if path == SERVICE_WORKER:
        headers = HEADERS | {"service-worker-allowed": SERVICE_WORKER_SCOPE}
    return FileResponse(path, media_type=content_type, headers=headers)


async def index(request: Request) -> Response:
    """The console page."""
    return _file(FOLDERS["app"] / "index.html")


async def asset(request: Request) -> Response:
    """A file of the page or of the client library; 404 outside them or for other types."""
    folder = FOLDERS.get(request.path_params["folder"])
    name: str = request.path_params["name"]
    if folder is None or any(part.startswith(".") or not part for part in name.split("/")):
        return PlainTextResponse("not found", status_code=404, headers=HEADERS)
    path = (folder / name).resolve()
    if not path.is_relative_to(folder):
        return PlainTextResponse("not found", status_code=404, headers=HEADERS)
    return _file(path)


routes: list[BaseRoute] = [
    Route("/console", index, methods=["GET", "HEAD"]),
    Route("/console/{folder}/{name:path}", asset, methods=["GET", "HEAD"]),
]
