"""Chat messages in PostgreSQL (`chat.messages`): the stored question and answer of every turn.

Every statement is scoped by the session's owner, so a request for a session the user does not
own stores and reads nothing. Writes are idempotent (keyed by the message ids the gateway chose),
so a reclaimed request never stores a turn twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from agent_svc.model import HistoryMessage
from shared.chat_wire import ChatRequest

HISTORY_LIMIT = 50  # turns sent to the model: bounded context, oldest dropped first


def storable(value: Any) -> Any:
    """`value` with every NUL character in its strings (dict keys included) replaced by U+FFFD.

    PostgreSQL text and jsonb cannot hold NUL; a model that streams one would otherwise make the
    answer unstorable, so every redelivery would call the model again until `AGENT_FAILED`.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, list):
        return [storable(item) for item in value]
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    return value


async def store_question(pool: asyncpg.Pool, request: ChatRequest) -> None:
    """Store the user's message (once) and touch the session (title from the first message)."""
    async with pool.acquire() as conn, conn.transaction():
        owned = await conn.fetchval(
            "UPDATE chat.sessions SET updated_at = now(), "
            "title = COALESCE(title, left($3, 80)) "
            "WHERE id = $1 AND user_id = $2 RETURNING true",
            UUID(request.session_id),
            UUID(request.user_id),
            storable(request.message.strip()),
        )
        if not owned:
            return
        await conn.execute(
            "INSERT INTO chat.messages (id, session_id, role, content, created_at) "
            "VALUES ($1, $2, 'user', $3, $4) ON CONFLICT (id) DO NOTHING",
            UUID(request.user_message_id),
            UUID(request.session_id),
            storable(request.message),
            datetime.fromisoformat(request.created_at),
        )


async def history(pool: asyncpg.Pool, request: ChatRequest) -> list[HistoryMessage]:
    """The session's finished turns before this request, oldest first, at most HISTORY_LIMIT
    (answers that failed are left out; cancelled ones keep their partial text)."""
    rows = await pool.fetch(
        "SELECT m.role, m.content FROM chat.messages m "
        "JOIN chat.sessions s ON s.id = m.session_id AND s.user_id = $2 "
        "WHERE m.session_id = $1 AND m.id <> ALL($3::uuid[]) "
        "AND m.status IN ('complete', 'cancelled') AND m.content <> '' "
        "ORDER BY m.created_at DESC, m.id DESC LIMIT $4",
        UUID(request.session_id),
        UUID(request.user_id),
        [UUID(request.user_message_id), UUID(request.message_id)],
        HISTORY_LIMIT,
    )
    return [HistoryMessage(row["role"], row["content"]) for row in reversed(rows)]


async def stored_answer(pool: asyncpg.Pool, request: ChatRequest) -> asyncpg.Record | None:
    """The answer already stored for this request (a worker died after storing it), if any."""
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT m.status, m.tokens_used FROM chat.messages m "
        "JOIN chat.sessions s ON s.id = m.session_id AND s.user_id = $3 "
        "WHERE m.id = $1 AND m.session_id = $2",
        UUID(request.message_id),
        UUID(request.session_id),
        UUID(request.user_id),
    )
    return row


async def store_answer(
    pool: asyncpg.Pool,
    request: ChatRequest,
    *,
    content: str,
    tool_calls: list[dict[str, Any]],
    tokens_used: int,
    status: str,
) -> None:
    """Store the assistant's answer under the request's `message_id` (idempotent; NULs stored as
    U+FFFD, see `storable`)."""
    await pool.execute(
        "INSERT INTO chat.messages (id, session_id, role, content, tool_calls, tokens_used, status)"
        " SELECT $1, s.id, 'assistant', $3, $4, $5, $6 FROM chat.sessions s"
        " WHERE s.id = $2 AND s.user_id = $7"
        " ON CONFLICT (id) DO UPDATE SET content = EXCLUDED.content,"
        " tool_calls = EXCLUDED.tool_calls, tokens_used = EXCLUDED.tokens_used,"
        " status = EXCLUDED.status",
        UUID(request.message_id),
        UUID(request.session_id),
        storable(content),
        storable(tool_calls),
        tokens_used,
        status,
        UUID(request.user_id),
    )
