"""Structured logging: one JSON object per line, with secrets scrubbed before anything is written.

`configure()` installs the JSON formatter on the root logger and on uvicorn's loggers, so access
and WebSocket handshake lines pass through it too. Before a record is written:

- the query string of every request path is dropped — from the record's arguments (uvicorn
  passes the path as one, so the cut is exact) and from any `/api/...?` left in the text. Query
  strings carry `?token=<JWT>` on seed WebSocket URLs and EventSource streams, and a regex
  looking for `token=` misses `%74oken=`, `t%6Fken=`, `TOKEN=` or double encodings;
- the configured secret values, anything shaped like a JWT, the values of token-named parameters
  (their names percent-decoded first) and `Bearer` credentials are redacted.

A log line can be pasted into a ticket safely.

`Sampled` thins out a line written once per event of a hot path (the gateway's WebSocket
handshakes: one JSON line per connect is about as much CPU as the rest of the handshake's
logging-free work in a reconnect storm, docs/performance-notes.md) to one line in N.

Into a pipe or a socket (a container's stdout, the journal), lines are written by a thread of
their own (`BackgroundHandler`): a log reader that falls behind — a full pipe, the container
runtime's collector stalled — holds up that thread, never an event loop and the connections on
it. Past `LOG_BACKLOG` lines waiting, new ones are dropped (`log_lines_dropped_total` on
`/metrics`), and a line saying how many follows once the reader catches up. Into a regular file,
which waits for no reader, each line is written before the logging call returns.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TextIO
from urllib.parse import unquote

from prometheus_client import Counter

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# A parameter `name=value`; the name is percent-decoded (twice: double encodings) before it is
# compared, so `%74oken=` is the `token=` it stands for. A backslash ends a value too: lines are
# scrubbed after JSON encoding, where `\"` closes a string.
_PARAM = re.compile(r"(?<![A-Za-z0-9%_.+-])([A-Za-z0-9%_.+-]+)=([^&\s\"'\\]+)")
_TOKEN_NAMES = frozenset({"token", "access_token", "id_token", "refresh_token", "jwt"})
# A request path with a query (up to whitespace; a quote that closes the path stays).
_PATH_QUERY = re.compile(r"(/api/[^\s?#\"']*)\?(?!\[query dropped\])\S*?(?=\"?(?:\s|$))")
_QUERY_DROPPED = "?[query dropped]"
_BEARER = re.compile(r"(Bearer\s+)[^\s\"',\\]+", re.IGNORECASE)
_REDACTED = "[redacted]"

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "color_message"}  # uvicorn's ANSI-coloured duplicate of msg
)


class Scrubber:
    """Removes secrets from text. `scrub` is pure and cheap enough for every log line."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = tuple(sorted((s for s in secrets if len(s) >= 8), key=len, reverse=True))

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, _REDACTED)
        text = _JWT.sub(_REDACTED, text)
        text = _PARAM.sub(_redact_token_param, text)
        return _BEARER.sub(r"\1" + _REDACTED, text)


def _redact_token_param(match: re.Match[str]) -> str:
    name = unquote(unquote(match.group(1))).lower()
    return f"{match.group(1)}={_REDACTED}" if name in _TOKEN_NAMES else match.group(0)


def drop_query(text: str) -> str:
    """`text` with the query string of every `/api/...` path in it dropped."""
    return _PATH_QUERY.sub(r"\1" + _QUERY_DROPPED, text) if "?" in text else text


def _without_queries(args: Any) -> Any:
    """A record's arguments with the query cut off every one that is a path (uvicorn logs the
    request path with its query as one argument)."""
    if not isinstance(args, tuple):
        return args
    return tuple(
        arg.partition("?")[0] + _QUERY_DROPPED
        if isinstance(arg, str) and arg.startswith("/") and "?" in arg
        else arg
        for arg in args
    )


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ts, level, logger, service, msg, extra fields, exc."""

    def __init__(self, service: str, scrubber: Scrubber) -> None:
        super().__init__()
        self._service = service
        self._scrubber = scrubber

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "level": record.levelname,
            "logger": record.name,
            "service": self._service,
            "msg": drop_query(self._message(record)),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = (
                    value if isinstance(value, int | float | bool) else drop_query(str(value))
                )
        if record.exc_info:
            entry["exc"] = drop_query(self.formatException(record.exc_info))
        return self._scrubber.scrub(json.dumps(entry, default=str))

    @staticmethod
    def _message(record: logging.LogRecord) -> str:
        if not record.args:
            return record.getMessage()
        original = record.args
        record.args = _without_queries(original)
        try:
            return record.getMessage()
        finally:
            record.args = original  # other handlers see the record as it was


class Sampled(logging.Filter):
    """Lets one in `every` records whose message template starts with `prefix` through — the
    first, then every `every`-th after it — each marked `sampled=every`; other records pass
    untouched. A filter on a logger runs after the level check, so records below the logger's
    level cost nothing here."""

    def __init__(self, prefix: str, every: int) -> None:
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.prefix, self.every = prefix, every
        self._seen = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or not record.msg.startswith(self.prefix):
            return True
        self._seen += 1
        if (self._seen - 1) % self.every:
            return False
        record.sampled = self.every
        return True


def sample(logger_name: str, prefix: str, every: int) -> None:
    """Install `Sampled(prefix, every)` on the named logger, replacing one installed before
    (idempotent: an app created twice in one process does not filter twice); `every=1` removes
    it."""
    logger = logging.getLogger(logger_name)
    for old in [f for f in logger.filters if isinstance(f, Sampled) and f.prefix == prefix]:
        logger.removeFilter(old)
    if every > 1:
        logger.addFilter(Sampled(prefix, every))


def _is_regular_file(stream: TextIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    except (OSError, ValueError, AttributeError):
        return False  # no descriptor of its own: written through the background writer too


LOG_BACKLOG = 10_000  # lines waiting for a slow log reader before new ones are dropped
LOG_LINES_DROPPED = Counter(
    "log_lines_dropped",
    "Log lines dropped because the log's reader (a pipe's) fell LOG_BACKLOG lines behind",
)
_CLOSE_WAIT = 2.0  # seconds `flush()` and `close()` wait for a stuck reader at most


class LineWriter:
    """Writes lines to `stream` from a daemon thread of its own. `put` never blocks: with
    `backlog` lines waiting, a new one is dropped and counted, and the writer adds
    `report(count)` after the lines it writes next."""

    def __init__(self, stream: TextIO, backlog: int, report: Callable[[int], str]) -> None:
        self._stream, self._backlog, self._report = stream, backlog, report
        self._start()
        _WRITERS.add(self)

    def _start(self) -> None:
        self._lines: deque[str] = deque()
        self._changed = threading.Condition(threading.Lock())
        self._dropped = 0
        self._writing = self._closed = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def put(self, line: str) -> None:
        with self._changed:
            if len(self._lines) >= self._backlog:
                self._dropped += 1
                LOG_LINES_DROPPED.inc()
                return
            self._lines.append(line)
            self._changed.notify_all()

    def flush(self, timeout: float = _CLOSE_WAIT) -> bool:
        """Wait until every line put so far is written; False if `timeout` passed first."""
        with self._changed:
            return self._changed.wait_for(
                lambda: not (self._lines or self._writing or self._dropped), timeout
            )

    def close(self, timeout: float = _CLOSE_WAIT) -> None:
        """Write what waits (for `timeout` at most) and end the thread."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        changed = self._changed
        while True:
            with changed:
                changed.wait_for(lambda: self._lines or self._dropped or self._closed)
                if not (self._lines or self._dropped):
                    return  # closed, everything written
                lines = list(self._lines)
                self._lines.clear()
                dropped, self._dropped = self._dropped, 0
                self._writing = True
            if dropped:
                lines.append(self._report(dropped))
            try:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # the stream is gone: nowhere left to say so
            with changed:
                self._writing = False
                changed.notify_all()

    def _after_fork(self) -> None:
        """In a forked child: the parent's thread is gone and its lines are the parent's."""
        self._start()


_WRITERS: weakref.WeakSet[LineWriter] = weakref.WeakSet()


def _restart_writers() -> None:
    for writer in list(_WRITERS):
        writer._after_fork()


os.register_at_fork(after_in_child=_restart_writers)


class BackgroundHandler(logging.Handler):
    """Formats each record on the caller's thread, as `logging.StreamHandler` does (its
    arguments as they are now, secrets scrubbed), and leaves the writing to a `LineWriter`."""

    def __init__(self, stream: TextIO, backlog: int = LOG_BACKLOG) -> None:
        super().__init__()
        self.backlog = backlog
        self.writer = LineWriter(stream, backlog, self._dropped_line)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.writer.put(self.format(record))
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        super().close()

    def _dropped_line(self, count: int) -> str:
        record = logging.LogRecord(
            __name__,
            logging.WARNING,
            __file__,
            0,
            "%d log lines dropped: the log's reader fell %d lines behind",
            (count, self.backlog),
            None,
        )
        record.dropped_lines = count
        return self.format(record)


def configure(service: str, level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Send every log record of this process, uvicorn's included, through the JSON formatter to
    stderr: by a `BackgroundHandler` unless stderr is a regular file (replacing the handler a
    previous call installed)."""
    handler: logging.Handler = (
        logging.StreamHandler(sys.stderr)
        if _is_regular_file(sys.stderr)
        else BackgroundHandler(sys.stderr)
    )
    handler.setFormatter(JsonFormatter(service, Scrubber(secrets)))
    root = logging.getLogger()
    for previous in root.handlers:
        if isinstance(previous, BackgroundHandler):
            previous.close()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
