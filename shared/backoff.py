"""The one retry/reconnect policy: exponential backoff with full jitter.

Full jitter (a uniform draw between 0 and the exponential cap) spreads reconnecting clients and
workers out, so a Redis restart or a deploy does not turn into a synchronised reconnect storm.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class Backoff:
    """Delays for successive attempts: uniform in [minimum, min(maximum, base * 2**n)].

    `reset()` after a success. Not thread-safe; one instance per retry loop.
    """

    def __init__(self, base: float = 0.1, maximum: float = 10.0, minimum: float = 0.05) -> None:
        self.base, self.maximum, self.minimum = base, maximum, minimum
        self.attempt = 0

    def next_delay(self) -> float:
        cap = min(self.maximum, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return random.uniform(min(self.minimum, cap), cap)

    def reset(self) -> None:
        self.attempt = 0

    async def sleep(self) -> None:
        await asyncio.sleep(self.next_delay())


async def retry(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    timeout: float,
    retry_on: tuple[type[BaseException], ...] = (OSError,),
) -> T:
    """Run `operation` until it succeeds or `timeout` seconds pass (then re-raise its error).

    For start-up dependencies that may come up after us (PostgreSQL, Redis in a compose file).
    """
    backoff = Backoff(base=0.2, maximum=3.0)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await operation()
        except retry_on as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("waiting for dependency", extra={"dependency": what, "error": repr(exc)})
            await backoff.sleep()
