-- Chat sessions and their messages, owned by agent_svc.
CREATE SCHEMA IF NOT EXISTS chat;

-- A session belongs to the first user who uses it, for ever (the gateway's WebSocket ownership
-- check and the sessions API both read this row).
CREATE TABLE chat.sessions (
    id         uuid         PRIMARY KEY,
    user_id    uuid         NOT NULL REFERENCES users.users (id),
    title      varchar(255),
    created_at timestamptz  NOT NULL DEFAULT now(),
    updated_at timestamptz  NOT NULL DEFAULT now()
);
CREATE INDEX sessions_user_recent ON chat.sessions (user_id, updated_at DESC);

CREATE TABLE chat.messages (
    id          uuid        PRIMARY KEY,
    session_id  uuid        NOT NULL REFERENCES chat.sessions (id) ON DELETE CASCADE,
    role        varchar(16) NOT NULL CHECK (role IN ('user', 'assistant')),
    content     text        NOT NULL,
    tool_calls  jsonb       NOT NULL DEFAULT '[]'::jsonb,
    tokens_used integer     NOT NULL DEFAULT 0,
    status      varchar(16) NOT NULL DEFAULT 'complete'
                CHECK (status IN ('complete', 'cancelled', 'error', 'streaming')),
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_session_created ON chat.messages (session_id, created_at, id);
