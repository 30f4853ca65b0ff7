"""A service's shutdown, bounded in time and explained when it overruns.

A lifespan's cleanup awaits other systems (Redis, upstream services, clients' close handshakes).
One await that never returns — a socket that accepts but never answers, a task that ignores its
cancellation — would hold the process until the orchestrator's SIGKILL, with nothing in the log
to say where. `bounded()` runs the cleanup steps in order, each under its own name, and gives up
after `timeout` seconds in all: it then logs a warning naming the step that overran and, for
every task still pending, the chain of coroutines it is suspended in (the await chain, innermost
last), and returns so the process can exit. What a step that overran did not finish is left to
the peers' own expiry (registry entries, keep-alive connections). While the steps run, a
`faulthandler` watchdog armed a little past `timeout` dumps every thread's stack to stderr: a loop
held by synchronous code cannot report itself.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
from collections.abc import Awaitable, Callable, Sequence
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

# Under Kubernetes' default 30 s grace period and the test harness's 20 s before SIGKILL.
SHUTDOWN_TIMEOUT = 15.0
# The watchdog fires this long after `timeout` if the loop could not run the warning itself.
WATCHDOG_MARGIN = 2.0

Step = tuple[str, Callable[[], Awaitable[object]]]


async def bounded(steps: Sequence[Step], timeout: float = SHUTDOWN_TIMEOUT) -> bool:
    """Run `steps` (name, zero-argument coroutine function) in order within `timeout` seconds;
    True if all finished. A step that raises is logged and the next one runs."""
    current = ["(none)"]

    async def run() -> None:
        for name, step in steps:
            current[0] = name
            try:
                await step()
            except Exception as exc:
                log.warning("shutdown step failed", extra={"step": name, "error": repr(exc)})

    stopping = asyncio.create_task(run())
    faulthandler.dump_traceback_later(timeout + WATCHDOG_MARGIN)
    try:
        done, _ = await asyncio.wait({stopping}, timeout=timeout)
    finally:
        faulthandler.cancel_dump_traceback_later()
    if done:
        return True
    me = asyncio.current_task()
    pending = [await_chain(t) for t in asyncio.all_tasks() if t is not me and t is not stopping]
    log.warning(
        "shutdown overran",
        extra={"step": current[0], "seconds": timeout, "stopping": await_chain(stopping)}
        | {"pending": pending},
    )
    stopping.cancel()
    return False


def await_chain(task: asyncio.Task[Any]) -> str:
    """Where `task` is suspended: its coroutines from the outermost to the innermost, each as
    `qualified name (file:line)`."""
    links: list[str] = []
    awaited: object = task.get_coro()
    while awaited is not None:
        frame = _frame(awaited)
        if frame is not None:
            code = frame.f_code
            links.append(f"{code.co_qualname} ({code.co_filename}:{frame.f_lineno})")
        awaited = _awaiting(awaited)
    return " > ".join(links) or repr(task)


def _frame(awaitable: object) -> FrameType | None:
    for attribute in ("cr_frame", "ag_frame", "gi_frame"):
        frame = getattr(awaitable, attribute, None)
        if isinstance(frame, FrameType):
            return frame
    return None


def _awaiting(awaitable: object) -> object:
    for attribute in ("cr_await", "ag_await", "gi_yieldfrom"):
        inner = getattr(awaitable, attribute, None)
        if inner is not None:
            return inner
    return None
