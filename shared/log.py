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
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

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


def configure(service: str, level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Send every log record of this process, uvicorn's included, through the JSON formatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service, Scrubber(secrets)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
