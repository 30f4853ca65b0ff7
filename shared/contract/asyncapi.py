"""AsyncAPI 3.0 documents: the public WebSocket endpoint, and the internal Redis channels and
streams between the services (docs/internal-api.md).

Actions are the application's: in the public document the application is the gateway, so a
frame the gateway `send`s is one the client receives. Message payloads are the msgspec frame
types (`shared.contract.schemas`); the close codes and error codes are enums in the code
(`shared.wire.CloseCode`, `shared.wire.FrameErrorCode`), listed here from them.
"""

from __future__ import annotations

import re
from typing import Any, Union

import msgspec

from gateway import chat, frames
from gateway.handshake import HandshakeHeaders, HandshakePath, HandshakeQuery
from notifications_svc.wire import CreateNotification
from shared import chat_wire, keys, topic_wire, wire
from shared.contract.schemas import Schemas, discriminators_as_names, fields

VERSION = "1.0.0"

# Server -> client, in the order a client meets them.
SERVER_FRAMES: tuple[type[msgspec.Struct], ...] = (
    wire.ConnectionEstablished,
    wire.Pong,
    wire.Message,
    wire.Notification,
    wire.NotificationsChanged,
    wire.Error,
    frames.TokenExpiring,
    frames.TokenRefreshed,
    chat_wire.ChatEventFrame,
    topic_wire.Subscribed,
    topic_wire.Unsubscribed,
    topic_wire.Publication,
    topic_wire.Join,
    topic_wire.Leave,
    topic_wire.PresenceResult,
    topic_wire.PresenceStats,
    topic_wire.Published,
    topic_wire.SubRefreshed,
)
CLIENT_FRAMES: tuple[type[msgspec.Struct], ...] = (
    frames.Ping,
    chat.WsMessage,
    chat.WsCancel,
    frames.RefreshToken,
    topic_wire.Subscribe,
    topic_wire.Unsubscribe,
    topic_wire.SubRefresh,
    topic_wire.PresenceRequest,
    topic_wire.PresenceStatsRequest,
    topic_wire.Publish,
)

_SUMMARIES: dict[type[msgspec.Struct], str] = {
    wire.ConnectionEstablished: "First frame of a connection, once its subscriptions are live.",
    wire.Pong: "Answer to `ping`.",
    wire.Message: "A complete chat answer (after `chat_event` frames when streaming).",
    wire.Notification: "A notification of the user; `data.seq` orders them (resume with "
    "`?last_seq=`).",
    wire.NotificationsChanged: "The user's notifications were marked read or deleted (by any "
    "client): update the inbox and the badge.",
    wire.Error: "Bad input or a failed request; `error.code` is stable. The connection stays open.",
    frames.TokenExpiring: "About 60 s before the token's `exp`: send `refresh_token`.",
    frames.TokenRefreshed: "Answer to a successful `refresh_token`.",
    chat_wire.ChatEventFrame: "One event of a streaming answer (asked with `stream: true`).",
    topic_wire.Subscribed: "Answer to `subscribe`: the topic's position and, with `since`, the "
    "missed publications (`recovered` false: some were lost, reload the state).",
    topic_wire.Unsubscribed: "The subscription ended: asked for, or `code` says why "
    "(`TOPIC_TOKEN_EXPIRED`, `INSUFFICIENT_STATE`: subscribe again with `since`).",
    topic_wire.Publication: "A publication of a subscribed topic; offsets are gapless per epoch.",
    topic_wire.Join: "A connection joined the topic (namespaces with `join_leave`).",
    topic_wire.Leave: "A connection left the topic (namespaces with `join_leave`).",
    topic_wire.PresenceResult: "Answer to `presence`: the topic's live connections.",
    topic_wire.PresenceStats: "Answer to `presence_stats`: connections and distinct users.",
    topic_wire.Published: "Answer to a client's `publish`.",
    topic_wire.SubRefreshed: "Answer to `sub_refresh`: the subscription now lasts until "
    "`expires_at`.",
    topic_wire.Subscribe: "Subscribe to a topic (`token` for token namespaces; `since` to "
    "recover what was missed).",
    topic_wire.Unsubscribe: "Stop receiving a topic; answered `unsubscribed`.",
    topic_wire.SubRefresh: "A fresh subscription token before the current one expires.",
    topic_wire.PresenceRequest: "Ask who is subscribed; answered `presence_result`.",
    topic_wire.PresenceStatsRequest: "Ask how many are subscribed; answered `presence_stats`.",
    topic_wire.Publish: "Publish to a topic whose namespace lets clients publish; answered "
    "`published`.",
    frames.Ping: "Keeps the connection from the idle timeout; answered with `pong`.",
    chat.WsMessage: "Ask the agent; `stream: true` adds `chat_event` frames before `message`.",
    chat.WsCancel: "Stop the session's running answer (or the one named).",
    frames.RefreshToken: "A new JWT for the same user; answered `token_refreshed` or `error` "
    "`TOKEN_INVALID`.",
}


def _tag(struct: type[msgspec.Struct]) -> str:
    tag = struct.__struct_config__.tag
    assert isinstance(tag, str), struct
    return tag


def _message_name(struct: type[msgspec.Struct]) -> str:
    # `shared.wire.Error` and `shared.chat_wire.Error` share a class name; messages are named
    # after the frame's `type`, which is unique per direction.
    return "".join(part.capitalize() for part in _tag(struct).split("_"))


def _enum_table(enum_doc: str) -> str:
    return re.sub(r"\s+", " ", enum_doc).strip()


def public_asyncapi() -> dict[str, Any]:
    """The WebSocket endpoint `/api/v1/ws/{session_id}`."""
    server_union: Any = Union[SERVER_FRAMES]  # noqa: UP007  (a runtime union of a tuple)
    client_union: Any = Union[CLIENT_FRAMES]  # noqa: UP007
    schemas = Schemas(
        [
            wire.CloseCode,
            wire.FrameErrorCode,
            chat_wire.ChatErrorCode,
            topic_wire.TopicErrorCode,
            *SERVER_FRAMES,
            *CLIENT_FRAMES,
        ],
        named={
            "ServerFrame": server_union,
            "ClientFrame": client_union,
            "ChatEvent": chat_wire.ChatEvent,
        },
    )
    sent = {"Server" + _message_name(s): s for s in SERVER_FRAMES}
    received = {"Client" + _message_name(c): c for c in CLIENT_FRAMES}
    messages = {
        name: {
            "name": _tag(struct),
            "title": f"{_tag(struct)} ({'server → client' if name in sent else 'client → server'})",
            "summary": _SUMMARIES[struct],
            "contentType": "application/json",
            "payload": schemas.of(struct),
        }
        for name, struct in {**sent, **received}.items()
    }
    query = _object_schema(HandshakeQuery)
    headers = _object_schema(HandshakeHeaders)
    close_codes = {str(int(code)): code.name for code in wire.CloseCode}
    document = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Real-time backend: WebSocket protocol",
            "version": VERSION,
            "description": (
                "The normative list of frames of `WS /api/v1/ws/{session_id}`. Every frame is "
                "one JSON object in a text frame, tagged by `type`; fields may be added to "
                "server frames, never removed or renamed. Bad input is answered with an "
                "`error` frame (codes: schemas `FrameErrorCode` and, for chat, "
                "`ChatErrorCode`) and never closes the connection; the connection closes with one "
                "of the codes of schema `CloseCode`, always with a short reason. Frames that "
                "internal services publish through `POST /internal/v1/publish` are forwarded "
                "as published (any JSON object with a string `type`). Behaviour (ordering, "
                "resume, limits) is described in docs/protocol.md."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "gateway": {
                "host": "localhost:8000",
                "protocol": "ws",
                "description": "Any gateway instance (`wss` behind TLS).",
                "security": [
                    {"$ref": "#/components/securitySchemes/subprotocol"},
                    {"$ref": "#/components/securitySchemes/bearerHeader"},
                    {"$ref": "#/components/securitySchemes/queryToken"},
                ],
            }
        },
        "channels": {
            "session": {
                "address": "/api/v1/ws/{session_id}",
                "title": "A chat session's WebSocket",
                "description": (
                    "A session belongs to the first user who uses it; another user's "
                    "connection is closed 1008. A refused connection is accepted, then closed "
                    "with a code and reason. Resume with `?last_seq=N`: every notification "
                    "with `seq > N`, in order, then live ones."
                ),
                "parameters": {
                    "session_id": {"description": fields(HandshakePath)[0][1]["description"]}
                },
                "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
                "bindings": {"ws": {"method": "GET", "query": query, "headers": headers}},
            }
        },
        "operations": {
            "sendServerFrames": {
                "action": "send",
                "channel": {"$ref": "#/channels/session"},
                "title": "Frames the gateway sends (server → client)",
                "messages": [{"$ref": f"#/channels/session/messages/{n}"} for n in sent],
            },
            "receiveClientFrames": {
                "action": "receive",
                "channel": {"$ref": "#/channels/session"},
                "title": "Frames the gateway receives (client → server)",
                "messages": [{"$ref": f"#/channels/session/messages/{n}"} for n in received],
            },
        },
        "components": {
            "schemas": schemas.components,
            "messages": messages,
            "securitySchemes": {
                "subprotocol": {
                    "type": "httpApiKey",
                    "in": "header",
                    "name": "Sec-WebSocket-Protocol",
                    "description": "`bearer, <JWT>` (browsers); the server echoes `bearer`.",
                },
                "bearerHeader": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "`Authorization: Bearer <JWT>` (non-browser clients).",
                },
                "queryToken": {
                    "type": "httpApiKey",
                    "in": "query",
                    "name": "token",
                    "description": "`?token=<JWT>` (the seed's way; proxies may log URLs).",
                },
            },
        },
        "x-close-codes": close_codes,
        "x-close-codes-description": _enum_table(wire.CloseCode.__doc__ or ""),
        "x-error-codes": sorted(
            {code.value for code in wire.FrameErrorCode}
            | {code.value for code in chat_wire.ChatErrorCode}
            | {code.value for code in topic_wire.TopicErrorCode}
        ),
    }
    return discriminators_as_names(document)  # type: ignore[no-any-return]


def _object_schema(struct: type[msgspec.Struct]) -> dict[str, Any]:
    properties = {name: schema for name, schema, _ in fields(struct)}
    return {"type": "object", "properties": properties}


def internal_asyncapi() -> dict[str, Any]:
    """Redis pub/sub channels and streams between the services."""
    reply_event: Any = chat_wire.ReplyEvent
    server_union: Any = Union[SERVER_FRAMES]  # noqa: UP007
    schemas = Schemas(
        [wire.EnvelopeMeta, chat_wire.ChatRequest, CreateNotification, topic_wire.IngestEntry],
        named={"ReplyEvent": reply_event, "ServerFrame": server_union},
    )
    envelope = {
        "name": "envelope",
        "title": "Fan-out envelope",
        "contentType": "text/plain",
        "summary": "`<EnvelopeMeta JSON>\\n<ServerFrame JSON>`: the gateway reads the meta and "
        "forwards the frame bytes untouched.",
        "payload": {"type": "string"},
        "x-parts": [
            {"$ref": "#/components/schemas/EnvelopeMeta"},
            {"$ref": "#/components/schemas/ServerFrame"},
        ],
    }
    redis_channels = {
        "userChannel": (keys.user_channel("{user_id}"), "A user's frames (notifications)."),
        "sessionChannel": (keys.session_channel("{session_id}"), "A session's frames."),
        "broadcast": (keys.BROADCAST_CHANNEL, "Frames for every connection."),
        "topicChannel": (
            keys.topic_channel("{topic}"),
            "A topic's publication, join and leave frames (meta: `topic`, and `offset` and "
            "`epoch` for publications); SPUBLISH on a cluster. Publications only by the "
            "gateway's publish script (docs/topics.md).",
        ),
    }
    streams = {
        "chatRequests": (
            keys.CHAT_REQUESTS_STREAM,
            f"Questions for the agent workers (group `{keys.CHAT_REQUESTS_GROUP}`), field "
            f"`{chat_wire.REQUEST_FIELD.decode()}`.",
            "ChatRequest",
            "gateway",
        ),
        "chatReply": (
            keys.chat_reply_stream("{message_id}"),
            f"One answer's events, field `{chat_wire.EVENT_FIELD.decode()}` (the `start` entry "
            f"also has `{chat_wire.OWNER_FIELD.decode()}`, the owner's user id); entry ids are "
            "the SSE event ids.",
            "ReplyEvent",
            "agent",
        ),
        "notificationsIngest": (
            keys.NOTIFICATIONS_INGEST_STREAM,
            f"Notification creates from producers without HTTP (group "
            f"`{keys.NOTIFICATIONS_INGEST_GROUP}`, field `payload`; bad entries go to "
            f"`{keys.NOTIFICATIONS_DEAD_LETTER_STREAM}`).",
            "CreateNotification",
            "producers",
        ),
        "topicsIngest": (
            keys.TOPICS_INGEST_STREAM,
            f"Topic publications from producers without HTTP (group "
            f"`{keys.TOPICS_INGEST_GROUP}` of the gateways, field `publication`).",
            "IngestEntry",
            "producers",
        ),
    }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {"Envelope": envelope}
    for name, (address, description) in redis_channels.items():
        channels[name] = _redis_channel(address, description, {"Envelope": envelope})
        operations[f"publish{name[0].upper()}{name[1:]}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": "Published by notifications_svc, agent workers, the gateway's publish "
            "endpoint; each gateway subscribes only to the users and sessions it holds.",
            "messages": [{"$ref": f"#/channels/{name}/messages/Envelope"}],
        }
    for name, (address, description, schema, writer) in streams.items():
        message = {
            "name": schema,
            "title": schema,
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{schema}"},
        }
        messages[schema] = message
        channels[name] = _redis_channel(address, description, {schema: message})
        operations[f"add{name[0].upper()}{name[1:]}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{name}"},
            "summary": f"XADD by the {writer}.",
            "messages": [{"$ref": f"#/channels/{name}/messages/{schema}"}],
        }
    document = {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Real-time backend: internal Redis channels and streams",
            "version": VERSION,
            "description": "Pub/sub fan-out and Redis streams between the services "
            "(docs/internal-api.md). Not served publicly.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "redis": {"host": "localhost:6379", "protocol": "redis", "description": "REDIS_URL"}
        },
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas.components, "messages": messages},
    }
    return discriminators_as_names(document)  # type: ignore[no-any-return]


def _redis_channel(address: str, description: str, messages: dict[str, Any]) -> dict[str, Any]:
    params = re.findall(r"\{(\w+)\}", address)
    channel: dict[str, Any] = {
        "address": address,
        "description": description,
        "messages": {name: {"$ref": f"#/components/messages/{name}"} for name in messages},
    }
    if params:
        channel["parameters"] = {
            p: {"description": "a topic, namespace:name" if p == "topic" else f"a {p} (UUID)"}
            for p in params
        }
    return channel
