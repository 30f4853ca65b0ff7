"""Structured logging: one JSON object per line, with secrets scrubbed before anything is written.

`configure()` installs the JSON formatter on the root logger and on uvicorn's loggers, so access
lines (which contain `?token=...` query strings) pass through the same scrubber. Scrubbing removes
the configured secret values, anything shaped like a JWT, `token=` query values and `Bearer`
credentials — a log line can be pasted into a ticket safely.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# A backslash ends a value too: lines are scrubbed after JSON encoding, where `\"` closes a string.
_QUERY_TOKEN = re.compile(r"((?:access_)?token=)[^&\s\"'\\]+", re.IGNORECASE)
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
        text = _QUERY_TOKEN.sub(r"\1" + _REDACTED, text)
        return _BEARER.sub(r"\1" + _REDACTED, text)


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
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value if isinstance(value, int | float | bool) else str(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return self._scrubber.scrub(json.dumps(entry, default=str))


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
