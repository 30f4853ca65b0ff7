"""Topic names and namespaces: what a topic is called, and who may do what with it.

Pure code, no I/O. A topic is `namespace:name`: the namespace is 1-32 characters of
`a-z 0-9 _ -`, the name 1-128 characters of `A-Z a-z 0-9 _ - . = @`, one colon between them.
The charset leaves out `{` and `}` (so a topic cannot break the Redis Cluster hash tag that keeps
its keys on one slot, `shared.keys.topic_*`), `*`, `?`, `[` (pub/sub patterns) and whitespace.

Namespaces are configured once per deployment (`TOPIC_NAMESPACES`, JSON, or a file named by
`TOPIC_NAMESPACES_FILE`), as an object of namespace name -> options:

    {"team": {"subscribe": "token", "history_size": 50, "history_ttl": 600,
              "presence": true, "join_leave": false, "publish": false}}

`subscribe` is `authenticated` (any signed-in user), `owner` (only the user whose id is the
name) or `token` (holders of a subscription token for this exact topic). Options left out take
the defaults of `Namespace`. Without configuration three namespaces exist (`DEFAULT_NAMESPACES`):
`public` (anyone; history 100 for 300 s; presence and join/leave on), `user` (owner only) and
`private` (token required); a configuration replaces them, so name them again to keep them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

Subscribe = Literal["authenticated", "owner", "token"]

NAMESPACE_PATTERN = r"[a-z0-9_-]{1,32}"
NAME_PATTERN = r"[A-Za-z0-9_\-.=@]{1,128}"
_TOPIC = re.compile(rf"({NAMESPACE_PATTERN}):({NAME_PATTERN})")
_NAMESPACE = re.compile(NAMESPACE_PATTERN)
MAX_TOPIC_LENGTH = 32 + 1 + 128


class TopicError(ValueError):
    """A topic name or a namespace configuration that cannot be used; `code` is the stable error
    code a client sees (`TOPIC_INVALID`, `TOPIC_UNKNOWN_NAMESPACE`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Namespace(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a namespace allows. History is kept when `history_size` and `history_ttl` are both
    positive; `history_meta_ttl` is how long a quiet topic keeps its offset and epoch (longer
    than its history, so a client back after the history expired learns it cannot recover
    instead of being handed offsets that restarted)."""

    subscribe: Subscribe = "authenticated"
    history_size: int = 0
    history_ttl: int = 0
    history_meta_ttl: int = 86_400
    presence: bool = False
    join_leave: bool = False
    publish: bool = False

    @property
    def history(self) -> bool:
        return self.history_size > 0 and self.history_ttl > 0


DEFAULT_NAMESPACES: dict[str, Namespace] = {
    "public": Namespace(
        subscribe="authenticated", history_size=100, history_ttl=300, presence=True, join_leave=True
    ),
    "user": Namespace(subscribe="owner", history_size=100, history_ttl=300),
    "private": Namespace(
        subscribe="token", history_size=100, history_ttl=300, presence=True, join_leave=True
    ),
}


@dataclass(frozen=True, slots=True)
class Topic:
    """A valid topic name, split."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}:{self.name}"


def parse_topic(raw: object) -> Topic:
    """Split and check a topic name; raises `TopicError` (TOPIC_INVALID)."""
    if not isinstance(raw, str) or len(raw) > MAX_TOPIC_LENGTH:
        raise TopicError("TOPIC_INVALID", "a topic is a string namespace:name")
    match = _TOPIC.fullmatch(raw)
    if match is None:
        raise TopicError(
            "TOPIC_INVALID",
            "a topic is namespace:name, namespace 1-32 of [a-z0-9_-], name 1-128 of "
            "[A-Za-z0-9_-.=@]",
        )
    return Topic(match.group(1), match.group(2))


_decode_namespaces = msgspec.json.Decoder(dict[str, Namespace]).decode


def parse_namespaces(text: str, *, max_history_size: int) -> dict[str, Namespace]:
    """Parse a namespace configuration (JSON); raises `ValueError` saying what is wrong."""
    try:
        namespaces = _decode_namespaces(text)
    except msgspec.DecodeError as exc:
        raise ValueError(f"not a namespace configuration: {exc}") from None
    for name, options in namespaces.items():
        if _NAMESPACE.fullmatch(name) is None:
            raise ValueError(f"namespace {name!r}: names are 1-32 of [a-z0-9_-]")
        for field in ("history_size", "history_ttl", "history_meta_ttl"):
            if getattr(options, field) < 0:
                raise ValueError(f"namespace {name!r}: {field} must not be negative")
        if options.history_size > max_history_size:
            raise ValueError(
                f"namespace {name!r}: history_size {options.history_size} is above "
                f"TOPIC_MAX_HISTORY_SIZE ({max_history_size})"
            )
        if options.history and options.history_meta_ttl < options.history_ttl:
            raise ValueError(f"namespace {name!r}: history_meta_ttl must be >= history_ttl")
    return namespaces


def load_namespaces(inline: str, path: str, *, max_history_size: int) -> dict[str, Namespace]:
    """The namespaces of a deployment: `inline` JSON, else the file at `path`, else the
    defaults. Raises `ValueError`."""
    if inline and path:
        raise ValueError("set TOPIC_NAMESPACES or TOPIC_NAMESPACES_FILE, not both")
    if path:
        try:
            inline = Path(path).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if not inline:
        return dict(DEFAULT_NAMESPACES)
    return parse_namespaces(inline, max_history_size=max_history_size)


class Namespaces:
    """The configured namespaces, looked up by topic."""

    def __init__(self, namespaces: dict[str, Namespace]) -> None:
        self._namespaces = namespaces

    def resolve(self, raw: object) -> tuple[Topic, Namespace]:
        """The topic and its namespace; raises `TopicError` (TOPIC_INVALID for a bad name,
        TOPIC_UNKNOWN_NAMESPACE for a namespace nobody configured)."""
        topic = parse_topic(raw)
        namespace = self._namespaces.get(topic.namespace)
        if namespace is None:
            raise TopicError(
                "TOPIC_UNKNOWN_NAMESPACE", f"no namespace {topic.namespace!r} is configured"
            )
        return topic, namespace

    def as_json(self) -> str:
        return json.dumps({k: msgspec.to_builtins(v) for k, v in self._namespaces.items()})

    def __iter__(self) -> Any:
        return iter(self._namespaces.items())
