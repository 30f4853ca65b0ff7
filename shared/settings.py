"""Process configuration: every environment variable the services read, typed and validated.

One table (`VARIABLES`) names each variable, its type, its default and what it does; the typed
`Settings` object is built from it, the README's table is checked against it, and an invalid value
stops start-up with a `ConfigError` naming the variable. Nothing else in the code base reads
`os.environ` for configuration.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared import vapid
from shared.topics import Namespace, load_namespaces


class ConfigError(ValueError):
    """A configuration variable is missing or has an invalid value."""


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true/false, got {raw!r}")


def _parse_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(f"expected zero or a positive integer, got {value}")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError(f"expected a positive number, got {value}")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"expected zero or a positive number, got {value}")
    return value


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 < value < 65536:
        raise ValueError(f"expected a TCP port 1-65535, got {value}")
    return value


def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError(f"expected DEBUG, INFO, WARNING or ERROR, got {raw!r}")
    return level


def _jwt_algorithm(raw: str) -> str:
    algorithm = raw.strip().upper()
    if algorithm not in {"HS256", "RS256", "ES256"}:
        raise ValueError(f"expected HS256, RS256 or ES256, got {raw!r}")
    return algorithm


def _database_url(raw: str) -> str:
    if raw and not raw.startswith(("postgresql://", "postgresql+asyncpg://", "postgres://")):
        raise ValueError("expected a postgresql:// or postgresql+asyncpg:// URL")
    return raw


def _redis_url(raw: str) -> str:
    if raw and not raw.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("expected a redis://, rediss:// or unix:// URL")
    return raw


def _trusted_proxies(raw: str) -> tuple[str, ...]:
    proxies = _parse_list(raw)
    for proxy in proxies:
        if proxy == "*":
            raise ValueError(
                "name the proxies' addresses or networks: `*` lets any client that reaches the "
                "service set its own address with X-Forwarded-For"
            )
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise ValueError(f"expected IP addresses or networks, got {proxy!r}") from None
    return proxies


def _text(raw: str) -> str:
    return raw


PUSH_POLICIES = ("offline", "always", "never")
PUSH_URGENCIES = ("very-low", "low", "normal", "high")


def _push_policy(raw: str) -> str:
    policy = raw.strip().lower()
    if policy not in PUSH_POLICIES:
        raise ValueError(f"expected offline, always or never, got {raw!r}")
    return policy


def _push_policy_by_type(raw: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for item in _parse_list(raw):
        name, sep, policy = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected type=policy pairs separated by commas, got {item!r}")
        pairs.append((name.strip(), _push_policy(policy)))
    return tuple(pairs)


def _push_urgency(raw: str) -> str:
    urgency = raw.strip().lower()
    if urgency not in PUSH_URGENCIES:
        raise ValueError(f"expected very-low, low, normal or high, got {raw!r}")
    return urgency


def _vapid_subject(raw: str) -> str:
    if not raw.startswith(("mailto:", "https://")):
        raise ValueError("expected a mailto: or https:// URL (RFC 8292 `sub`)")
    return raw


@dataclass(frozen=True)
class Variable:
    """One environment variable: its parser, default (as the user would write it) and meaning."""

    name: str
    parse: Callable[[str], Any]
    default: str
    doc: str
    secret: bool = False


VARIABLES: tuple[Variable, ...] = (
    # Seed variables (names are a compatibility promise).
    Variable(
        "DATABASE_URL",
        _database_url,
        "",
        "PostgreSQL URL (`postgresql://` or `postgresql+asyncpg://`). Empty: embedded "
        "PostgreSQL 16 under `DATA_DIR`.",
        secret=True,
    ),
    Variable(
        "REDIS_URL",
        _redis_url,
        "",
        "Redis URL. Empty: embedded redis-server under `DATA_DIR`.",
        secret=True,
    ),
    Variable(
        "REDIS_CLUSTER",
        _parse_bool,
        "false",
        "`REDIS_URL` names one node of a Redis Cluster (7.0+): fan-out uses sharded pub/sub "
        "(SPUBLISH/SSUBSCRIBE). Every service of a deployment must agree. Needs `REDIS_URL`.",
    ),
    Variable(
        "SECRET_KEY",
        _text,
        "",
        "HS256 key for client JWTs (at least 32 characters). Empty in development: a random "
        "key is generated once and kept in `DATA_DIR/secrets.json`.",
        secret=True,
    ),
    Variable(
        "ANTHROPIC_API_KEY",
        _text,
        "",
        "Claude API key. Empty: the agent runs its clearly labelled offline model.",
        secret=True,
    ),
    Variable(
        "CORS_ORIGINS",
        _parse_list,
        "http://localhost:5173,http://127.0.0.1:5173",
        "Comma-separated browser origins allowed for CORS and WebSocket handshakes. "
        "`*` allows any origin.",
    ),
    Variable(
        "WS_HEARTBEAT_INTERVAL",
        _positive_float,
        "30",
        "Seconds between server heartbeats; registry entries expire after two missed beats.",
    ),
    Variable(
        "WS_MAX_CONNECTIONS_PER_SESSION",
        _positive_int,
        "5",
        "Connections allowed per session across all gateways; one more is closed with 1013.",
    ),
    Variable(
        "WS_CONNECTION_TIMEOUT",
        _positive_float,
        "300",
        "Seconds without any client frame before the connection is closed with 1000.",
    ),
    # Ours.
    Variable(
        "DATA_DIR",
        _text,
        ".data",
        "Folder of the embedded PostgreSQL/Redis data and development secrets.",
    ),
    Variable(
        "BIND_HOST",
        _text,
        "127.0.0.1",
        "Address the HTTP servers listen on (`0.0.0.0` in containers).",
    ),
    Variable(
        "FORWARDED_ALLOW_IPS",
        _trusted_proxies,
        "127.0.0.1,::1",
        "Comma-separated addresses or networks of the proxies whose `X-Forwarded-For` and "
        "`X-Forwarded-Proto` are believed (the client address in logs). `*` is refused.",
    ),
    Variable("GATEWAY_PORT", _port, "8000", "Gateway HTTP/WebSocket port."),
    Variable("NOTIFICATIONS_PORT", _port, "8001", "Notifications service port."),
    Variable("AGENT_PORT", _port, "8002", "Agent service port."),
    Variable(
        "NOTIFICATIONS_URL",
        _text,
        "",
        "Base URL of the notifications service as the others reach it. Empty: "
        "`http://127.0.0.1:$NOTIFICATIONS_PORT`.",
    ),
    Variable(
        "AGENT_URL",
        _text,
        "",
        "Base URL of the agent service. Empty: `http://127.0.0.1:$AGENT_PORT`.",
    ),
    Variable(
        "INTERNAL_TOKEN",
        _text,
        "",
        "Bearer token for `/internal/` endpoints (at least 32 characters). Empty in "
        "development: generated once into `DATA_DIR/secrets.json`.",
        secret=True,
    ),
    Variable("LOG_LEVEL", _log_level, "INFO", "DEBUG, INFO, WARNING or ERROR."),
    Variable(
        "JWT_ALGORITHM",
        _jwt_algorithm,
        "HS256",
        "Client JWT algorithm: HS256 (with SECRET_KEY), RS256 or ES256 (with "
        "JWT_PUBLIC_KEY or JWT_JWKS_URL).",
    ),
    Variable("JWT_PUBLIC_KEY", _text, "", "PEM public key for RS256/ES256 tokens."),
    Variable("JWT_JWKS_URL", _text, "", "JWKS URL for RS256/ES256 tokens."),
    Variable(
        "JWT_AUDIENCE",
        _text,
        "",
        "Required `aud` claim when set; must be set with RS256/ES256 or `JWT_JWKS_URL`.",
    ),
    Variable(
        "JWT_ISSUER",
        _text,
        "",
        "Required `iss` claim when set; must be set with RS256/ES256 or `JWT_JWKS_URL`.",
    ),
    Variable(
        "JWT_JWKS_REFETCH_INTERVAL",
        _non_negative_float,
        "30",
        "Least seconds between two fetches of `JWT_JWKS_URL` caused by tokens naming an unknown "
        "`kid` (the key set is also refreshed in the background before it expires).",
    ),
    Variable(
        "WS_MAX_MESSAGE_BYTES",
        _positive_int,
        "65536",
        "Largest client frame accepted; a larger one closes the connection with 1009.",
    ),
    Variable(
        "WS_MAX_CONNECTIONS",
        _positive_int,
        "20000",
        "Connections one gateway instance accepts; more are closed with 1013.",
    ),
    Variable(
        "WS_SEND_QUEUE_SIZE",
        _positive_int,
        "256",
        "Frames a connection may fall behind beyond its socket's write buffer (64 KiB); one more "
        "closes it with 1013 (slow consumer).",
    ),
    Variable(
        "WS_DELIVERY_CHUNK",
        _positive_int,
        "256",
        "Connections one published frame is queued to before the fan-out yields to the event loop.",
    ),
    Variable(
        "WS_LOG_HANDSHAKES",
        _parse_bool,
        "false",
        'Log every WebSocket handshake (uvicorn\'s `"WebSocket /path" [accepted]` line). Off: '
        "one in 1000 is logged, marked `sampled`, and `gateway_ws_handshakes_total` counts them "
        "all. `LOG_LEVEL=DEBUG` logs every one too.",
    ),
    Variable(
        "WS_OWNED_PROTOCOL",
        _parse_bool,
        "true",
        "Serve an established WebSocket from the gateway's own protocol (no ASGI task per idle "
        "connection; docs/performance-notes.md). Off: the endpoint reads every connection through "
        "ASGI, as under uvicorn's stock protocol.",
    ),
    Variable(
        "WS_RATE_LIMIT",
        _positive_float,
        "20",
        "Client frames per second allowed per connection (token bucket refill rate).",
    ),
    Variable(
        "WS_RATE_BURST",
        _positive_int,
        "40",
        "Client frames a connection may send in a burst (token bucket size).",
    ),
    Variable(
        "WS_USER_RATE_LIMIT",
        _positive_int,
        "60",
        "Client frames per second allowed per user across all of their connections on every "
        "gateway (a one-second window counted in Redis); frames over it get `RATE_LIMITED`.",
    ),
    Variable(
        "HTTP_MAX_BODY_BYTES",
        _positive_int,
        "65536",
        "Largest JSON request body; a larger one answers 413.",
    ),
    Variable(
        "UPSTREAM_TIMEOUT",
        _positive_float,
        "10",
        "Seconds the gateway waits for an internal service before answering 503.",
    ),
    Variable("ANTHROPIC_BASE_URL", _text, "", "Claude API base URL. Empty: the SDK's default."),
    Variable("ANTHROPIC_MODEL", _text, "claude-sonnet-4-6", "Claude model name."),
    Variable("ANTHROPIC_MAX_TOKENS", _positive_int, "1024", "Maximum tokens per model reply."),
    Variable(
        "ANTHROPIC_TIMEOUT",
        _positive_float,
        "60",
        "Seconds before a silent model call is abandoned with an error event.",
    ),
    Variable(
        "AGENT_SYSTEM_PROMPT",
        _text,
        "You are a helpful assistant inside a productivity app. Be concise.",
        "System prompt of the agent.",
    ),
    Variable(
        "AGENT_WORKERS",
        _non_negative_int,
        "1",
        "Chat workers run inside each agent_svc process (0: HTTP API only).",
    ),
    Variable(
        "AGENT_OFFLINE_DELAY",
        _positive_float,
        "0.03",
        "Seconds between the offline model's deltas.",
    ),
    Variable(
        "CHAT_REPLY_TTL",
        _positive_int,
        "3600",
        "Seconds a finished answer's reply stream stays readable for resume.",
    ),
    Variable(
        "AGENT_RECLAIM_IDLE",
        _positive_float,
        "30",
        "Seconds a chat request may sit unacknowledged with no worker heartbeat before another "
        "worker reclaims it and finishes the answer.",
    ),
    Variable(
        "AGENT_TOOL_MODULES",
        _text,
        "",
        "Comma-separated Python modules whose `register(registry)` adds deployer tools.",
    ),
    # Per-user limits (counted in Redis, so they hold across every instance).
    Variable(
        "CHAT_MAX_STREAMING_PER_USER",
        _positive_int,
        "1",
        "Answers of one user streaming at once; later questions wait in the user's queue. "
        "Every service must agree. With 1, another user's question waits for at most one "
        'answer of this user (docs/chat.md, "Fair use").',
    ),
    Variable(
        "CHAT_MAX_QUEUED_PER_USER",
        _non_negative_int,
        "5",
        "Questions of one user waiting for a stream slot; one more answers 429 `CHAT_QUEUE_FULL`.",
    ),
    Variable(
        "CHAT_MAX_NEW_SESSIONS_PER_HOUR",
        _positive_int,
        "60",
        "Chat sessions one user may create per hour (REST, WebSocket or chat); one more answers "
        "429 `SESSION_LIMIT` (WebSocket: close 1013).",
    ),
    Variable(
        "CHAT_DAILY_TOKEN_BUDGET",
        _positive_int,
        "200000",
        "Model tokens (as the model reports them, the offline model included) one user may use "
        "per UTC day; once spent, questions answer 429 `TOKEN_BUDGET_EXHAUSTED`.",
    ),
    Variable(
        "WS_MAX_CONNECTIONS_PER_USER",
        _positive_int,
        "20",
        "WebSocket connections one user may hold across every gateway; one more is closed with "
        "1013.",
    ),
    Variable(
        "HTTP_USER_RATE_LIMIT",
        _positive_float,
        "20",
        "REST and chat requests per second per user through the gateways (token bucket refill "
        "rate, counted in Redis); over it: 429 `RATE_LIMITED` with Retry-After.",
    ),
    Variable(
        "HTTP_USER_RATE_BURST",
        _positive_int,
        "40",
        "REST and chat requests a user may send in a burst (token bucket size).",
    ),
    Variable(
        "AGENT_MAX_REMINDERS_PER_USER",
        _positive_int,
        "50",
        "Notifications the agent may hold scheduled for one user; one more is refused to the "
        "model with `REMINDER_LIMIT`.",
    ),
    Variable(
        "TOPIC_NAMESPACES",
        _text,
        "",
        "Topic namespaces as JSON (docs/topics.md). Empty: `public`, `user` and `private` "
        "(or the file of `TOPIC_NAMESPACES_FILE`).",
    ),
    Variable(
        "TOPIC_NAMESPACES_FILE",
        _text,
        "",
        "A file holding the `TOPIC_NAMESPACES` JSON (set one of the two, not both).",
    ),
    Variable(
        "TOPICS_MAX_PER_CONNECTION",
        _positive_int,
        "100",
        "Topics one connection may subscribe to; one more is refused with `TOO_MANY_TOPICS`.",
    ),
    Variable(
        "TOPIC_MAX_PUBLICATION_BYTES",
        _positive_int,
        "16384",
        "Largest publication `data` (encoded JSON); a larger one is refused with "
        "`PUBLICATION_TOO_LARGE` (HTTP 413).",
    ),
    Variable(
        "TOPIC_MAX_HISTORY_SIZE",
        _positive_int,
        "1000",
        "Largest `history_size` a namespace may configure (publications kept per topic).",
    ),
    Variable(
        "TOPIC_MAX_PRESENCE",
        _positive_int,
        "1000",
        "Presence entries listed per topic (`presence_result`, the presence endpoint); more are "
        "left out and `truncated` says so (`presence_stats` still counts all).",
    ),
    Variable(
        "TOPIC_CLIENT_PUBLISH_RATE",
        _positive_float,
        "5",
        "Client `publish` frames per second per connection (where a namespace allows clients "
        "to publish; token bucket refill rate); over it: `RATE_LIMITED`.",
    ),
    Variable(
        "TOPIC_CLIENT_PUBLISH_BURST",
        _positive_int,
        "10",
        "Client `publish` frames a connection may send in a burst (token bucket size).",
    ),
    Variable(
        "VAPID_PRIVATE_KEY",
        _text,
        "",
        "Web Push VAPID private key: base64url of the 32-byte P-256 key, or PEM "
        "(`python -m shared.vapid` makes a pair). Empty in development: generated once into "
        "`DATA_DIR/vapid.json` (mode 0600).",
        secret=True,
    ),
    Variable(
        "VAPID_PUBLIC_KEY",
        _text,
        "",
        "Web Push VAPID public key (base64url, 65-byte uncompressed point); must match "
        "`VAPID_PRIVATE_KEY`. Empty: derived from it.",
    ),
    Variable(
        "VAPID_SUBJECT",
        _vapid_subject,
        "mailto:push@localhost",
        "Contact the push services may use (`mailto:` or `https://`); set a real one in "
        "production.",
    ),
    Variable(
        "PUSH_POLICY",
        _push_policy,
        "offline",
        "When a notification is also sent by Web Push: `offline` (the user had no live "
        "connection on any gateway when it committed), `always` or `never`.",
    ),
    Variable(
        "PUSH_POLICY_BY_TYPE",
        _push_policy_by_type,
        "",
        "Per notification type overrides of `PUSH_POLICY`, e.g. `chat_reply=always,digest=never`.",
    ),
    Variable(
        "PUSH_ALLOW_LOOPBACK",
        _parse_bool,
        "false",
        "Accept `http://127.0.0.1:<port>/...` push endpoints (development and tests only); "
        "otherwise endpoints must be https.",
    ),
    Variable(
        "PUSH_ENDPOINT_HOSTS",
        _parse_list,
        "fcm.googleapis.com,updates.push.services.mozilla.com,*.push.apple.com,"
        "*.notify.windows.com",
        "Hosts a push endpoint may name (`*.` matches subdomains; `*` any host): the browsers' "
        "push services, so a subscription cannot make the service POST to anything else.",
    ),
    Variable(
        "PUSH_MAX_SUBSCRIPTIONS",
        _positive_int,
        "10",
        "Push subscriptions one user may register; one more answers 409.",
    ),
    Variable(
        "PUSH_MAX_ATTEMPTS",
        _positive_int,
        "8",
        "Send attempts per push before it is dead-lettered.",
    ),
    Variable(
        "PUSH_TTL",
        _non_negative_int,
        "86400",
        "Seconds a push service keeps an undelivered push (the `TTL` header).",
    ),
    Variable(
        "PUSH_URGENCY",
        _push_urgency,
        "normal",
        "The `Urgency` header of pushes: very-low, low, normal or high.",
    ),
    Variable(
        "PUSH_TIMEOUT",
        _positive_float,
        "10",
        "Seconds one request to a push service may take; a push is leased for twice this plus "
        "one second, after which a crashed sender's push is sent again.",
    ),
    Variable(
        "PUSH_CONCURRENCY",
        _positive_int,
        "32",
        "Push requests one notifications_svc instance has in flight at once.",
    ),
    Variable(
        "SSE_KEEPALIVE_INTERVAL",
        _positive_float,
        "15",
        "Seconds of silence after which an SSE stream sends a `: keep-alive` comment.",
    ),
)


@dataclass(frozen=True)
class Settings:
    """Validated configuration of one process. Build it with `Settings.from_env()`."""

    database_url: str
    redis_url: str
    secret_key: str
    anthropic_api_key: str
    cors_origins: tuple[str, ...]
    ws_heartbeat_interval: float
    ws_max_connections_per_session: int
    ws_connection_timeout: float
    data_dir: str
    bind_host: str
    forwarded_allow_ips: tuple[str, ...]
    gateway_port: int
    notifications_port: int
    agent_port: int
    notifications_url: str
    agent_url: str
    internal_token: str
    log_level: str
    jwt_algorithm: str
    jwt_public_key: str
    jwt_jwks_url: str
    jwt_audience: str
    jwt_issuer: str
    jwt_jwks_refetch_interval: float
    ws_max_message_bytes: int
    ws_max_connections: int
    ws_send_queue_size: int
    ws_delivery_chunk: int
    ws_rate_limit: float
    ws_rate_burst: int
    ws_user_rate_limit: int
    http_max_body_bytes: int
    upstream_timeout: float
    anthropic_base_url: str
    anthropic_model: str
    anthropic_max_tokens: int
    anthropic_timeout: float
    agent_system_prompt: str
    agent_workers: int
    agent_offline_delay: float
    chat_reply_ttl: int
    agent_reclaim_idle: float
    agent_tool_modules: str
    sse_keepalive_interval: float
    chat_max_streaming_per_user: int
    chat_max_queued_per_user: int
    chat_max_new_sessions_per_hour: int
    chat_daily_token_budget: int
    ws_max_connections_per_user: int
    http_user_rate_limit: float
    http_user_rate_burst: int
    agent_max_reminders_per_user: int
    vapid_private_key: str = ""
    vapid_public_key: str = ""
    vapid_subject: str = "mailto:push@localhost"
    push_policy: str = "offline"
    push_policy_by_type: tuple[tuple[str, str], ...] = ()
    push_allow_loopback: bool = False
    push_endpoint_hosts: tuple[str, ...] = ()
    push_max_subscriptions: int = 10
    push_max_attempts: int = 8
    push_ttl: int = 86400
    push_urgency: str = "normal"
    push_timeout: float = 10.0
    push_concurrency: int = 32
    redis_cluster: bool = False
    topic_namespaces: str = ""
    topic_namespaces_file: str = ""
    topics_max_per_connection: int = 100
    topic_max_publication_bytes: int = 16384
    topic_max_history_size: int = 1000
    topic_max_presence: int = 1000
    topic_client_publish_rate: float = 5.0
    topic_client_publish_burst: int = 10
    ws_log_handshakes: bool = False
    ws_owned_protocol: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read, parse and validate every variable; raises `ConfigError` naming the culprit.

        Empty `SECRET_KEY` / `INTERNAL_TOKEN` are filled from `DATA_DIR/secrets.json`, created
        with random values on first use, so a development stack and `make token` agree.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for variable in VARIABLES:
            # An empty value means "use the default", as in most twelve-factor tools.
            raw = env.get(variable.name) or variable.default or ""
            try:
                values[variable.name.lower()] = variable.parse(raw)
            except ValueError as exc:
                raise ConfigError(f"{variable.name}: {exc}") from None
        settings = cls(**values)
        return settings._with_defaults_filled()

    def _with_defaults_filled(self) -> Settings:
        changes: dict[str, Any] = {}
        if not self.secret_key or not self.internal_token:
            generated = _dev_secrets(Path(self.data_dir))
            changes["secret_key"] = self.secret_key or generated["SECRET_KEY"]
            changes["internal_token"] = self.internal_token or generated["INTERNAL_TOKEN"]
        if not self.notifications_url:
            changes["notifications_url"] = f"http://127.0.0.1:{self.notifications_port}"
        if not self.agent_url:
            changes["agent_url"] = f"http://127.0.0.1:{self.agent_port}"
        changes |= self._vapid_keys()
        merged = {f.name: getattr(self, f.name) for f in fields(self)} | changes
        settings = Settings(**merged)
        settings._validate()
        return settings

    def _vapid_keys(self) -> dict[str, str]:
        """The VAPID pair, validated and normalised (base64url); generated in development."""
        if not self.vapid_private_key:
            if self.vapid_public_key:
                raise ConfigError("VAPID_PUBLIC_KEY: set without VAPID_PRIVATE_KEY")
            pair = _dev_vapid_keys(Path(self.data_dir))
        else:
            try:
                pair = vapid.keys_from(self.vapid_private_key, self.vapid_public_key)
            except vapid.VapidKeyError as exc:
                which, _, reason = str(exc).partition(": ")
                name = "VAPID_PRIVATE_KEY" if which == "private" else "VAPID_PUBLIC_KEY"
                raise ConfigError(f"{name}: {reason}") from None
        return {"vapid_private_key": pair.private_key, "vapid_public_key": pair.public_key}

    def push_policy_for(self, notification_type: str) -> str:
        """The push policy of one notification type (`PUSH_POLICY_BY_TYPE`, else the default)."""
        for name, policy in self.push_policy_by_type:
            if name == notification_type:
                return policy
        return self.push_policy

    def _validate(self) -> None:
        if self.jwt_algorithm == "HS256" and len(self.secret_key) < 32:
            raise ConfigError("SECRET_KEY: must be at least 32 characters for HS256")
        if self.jwt_algorithm != "HS256" and not (self.jwt_public_key or self.jwt_jwks_url):
            raise ConfigError(
                f"JWT_PUBLIC_KEY: {self.jwt_algorithm} needs JWT_PUBLIC_KEY or JWT_JWKS_URL"
            )
        if self.jwt_algorithm != "HS256" or self.jwt_jwks_url:
            # Keys of an identity provider sign tokens for all of its applications: without
            # both checks a token minted for another application would be accepted here.
            for name, value in (
                ("JWT_AUDIENCE", self.jwt_audience),
                ("JWT_ISSUER", self.jwt_issuer),
            ):
                if not value:
                    raise ConfigError(
                        f"{name}: required with {self.jwt_algorithm}"
                        f"{' and JWT_JWKS_URL' if self.jwt_jwks_url else ''} (tokens of other "
                        "applications of the same identity provider would be accepted)"
                    )
        if len(self.internal_token) < 32:
            raise ConfigError("INTERNAL_TOKEN: must be at least 32 characters")
        if self.redis_cluster and not self.redis_url:
            raise ConfigError("REDIS_CLUSTER: needs REDIS_URL (the embedded Redis is one server)")
        if self.ws_rate_burst < 1:
            raise ConfigError("WS_RATE_BURST: must be at least 1")
        try:
            self.namespaces()
        except ValueError as exc:
            name = "TOPIC_NAMESPACES_FILE" if self.topic_namespaces_file else "TOPIC_NAMESPACES"
            raise ConfigError(f"{name}: {exc}") from None
        if self.ws_connection_timeout <= self.ws_heartbeat_interval:
            raise ConfigError(
                "WS_CONNECTION_TIMEOUT: must be longer than WS_HEARTBEAT_INTERVAL "
                f"({self.ws_connection_timeout} <= {self.ws_heartbeat_interval})"
            )

    @property
    def asyncpg_dsn(self) -> str:
        """`DATABASE_URL` in the form asyncpg accepts (the SQLAlchemy driver suffix removed)."""
        return self.database_url.replace("postgresql+asyncpg://", "postgresql://", 1)

    def namespaces(self) -> dict[str, Namespace]:
        """The topic namespaces of this deployment (`shared.topics`); raises `ValueError`."""
        return load_namespaces(
            self.topic_namespaces,
            self.topic_namespaces_file,
            max_history_size=self.topic_max_history_size,
        )

    @property
    def offline_model(self) -> bool:
        return not self.anthropic_api_key

    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in logs: the keys, and the passwords inside the
        database and Redis URLs."""
        passwords = (_url_password(self.database_url), _url_password(self.redis_url))
        return tuple(
            value
            for value in (
                self.secret_key,
                self.internal_token,
                self.anthropic_api_key,
                self.vapid_private_key,
                *passwords,
            )
            if value
        )


def _url_password(url: str) -> str:
    try:
        return urlsplit(url).password or ""
    except ValueError:
        return ""


def private_dir(path: Path) -> None:
    """Create `path` and its missing parents, each 0700 from the start (`mkdir(parents=True)`
    would create the parents with the umask's mode). An existing folder is left as it is."""
    missing: list[Path] = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)


def write_private(path: Path, data: bytes) -> None:
    """Write a new file `path` created with mode 0600: it is never readable by others, not even
    between its creation and a chmod. Raises `FileExistsError` if it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)


def _dev_secrets(data_dir: Path) -> dict[str, str]:
    """Random development secrets, created once per data folder and reused after."""
    import json

    path = data_dir / "secrets.json"
    try:
        stored: dict[str, str] = json.loads(path.read_text())
        if stored.get("SECRET_KEY") and stored.get("INTERNAL_TOKEN"):
            return stored
    except (OSError, ValueError):
        pass
    private_dir(data_dir)
    stored = {
        "SECRET_KEY": secrets.token_urlsafe(48),
        "INTERNAL_TOKEN": secrets.token_urlsafe(48),
    }
    tmp = data_dir / f".secrets.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    write_private(tmp, json.dumps(stored).encode())
    try:
        # Two services starting at once must end up with the same secrets: first link wins.
        os.link(tmp, path)
    except FileExistsError:
        tmp.unlink()
        return dict(json.loads(path.read_text()))
    tmp.unlink()
    return stored


VAPID_FILE = "vapid.json"


def _dev_vapid_keys(data_dir: Path) -> vapid.VapidKeys:
    """The development VAPID pair of `data_dir`, generated once (0600 from the first byte, the
    first of two concurrent starts wins) and reused after, so subscriptions survive restarts."""
    import json

    path = data_dir / VAPID_FILE
    try:
        stored = json.loads(path.read_text())
        return vapid.keys_from(stored["private_key"], stored["public_key"])
    except FileNotFoundError:
        pass
    private_dir(data_dir)
    pair = vapid.generate()
    tmp = data_dir / f".vapid.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    body = {"private_key": pair.private_key, "public_key": pair.public_key}
    write_private(tmp, json.dumps(body).encode())
    try:
        os.link(tmp, path)
    except FileExistsError:
        stored = json.loads(path.read_text())
        return vapid.keys_from(stored["private_key"], stored["public_key"])
    finally:
        tmp.unlink()
    return pair


def load_or_exit() -> Settings:
    """`Settings.from_env()` for entry points: a configuration error ends the process with a
    one-line message naming the variable (exit status 2) instead of a traceback."""
    try:
        return Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def markdown_table() -> str:
    """The README's configuration table, generated from `VARIABLES`."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for v in VARIABLES:
        default = f"`{v.default}`" if v.default else "(empty)"
        lines.append(f"| `{v.name}` | {default} | {v.doc} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
