"""Running a service process: settings, logging, uvicorn, clean shutdown.

Each service's `__main__` calls `serve()` with its app factory and port. uvicorn turns SIGTERM and
SIGINT into the app's lifespan shutdown, so every service closes its sockets, pools and tasks
before exiting.
"""

from __future__ import annotations

from collections.abc import Callable

import uvicorn
from starlette.types import ASGIApp

from shared import log
from shared.settings import Settings, load_or_exit


def serve(
    name: str, factory: Callable[[Settings], ASGIApp], port: Callable[[Settings], int]
) -> None:
    settings = load_or_exit()
    log.configure(name, settings.log_level, settings.secrets())
    uvicorn.run(
        factory(settings),
        host=settings.bind_host,
        port=port(settings),
        log_config=None,
        access_log=settings.log_level == "DEBUG",
        lifespan="on",
        timeout_graceful_shutdown=10,
        ws_max_size=settings.ws_max_message_bytes,
        server_header=False,
        proxy_headers=True,
    )
