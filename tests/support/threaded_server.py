"""A Starlette app served by uvicorn on a loopback port from a thread of the test process.

The wire-level stand-ins for what cannot be reached here (the Anthropic API, a Web Push service)
run this way, so that a test scripts them and reads what they received directly, while the code
under test talks to them over real HTTP.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from shared.infra import free_port


class ThreadedServer:
    """`routes` served at `origin` between `start()` and `stop()`; `name` is for errors."""

    def __init__(self, name: str, routes: Sequence[BaseRoute]) -> None:
        self.name = name
        self.port = free_port()
        config = uvicorn.Config(
            Starlette(routes=routes),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Returns once the server accepts connections (RuntimeError after 10 s)."""
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
