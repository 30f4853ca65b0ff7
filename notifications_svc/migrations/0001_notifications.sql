-- Notifications, owned by notifications_svc: the seed's table plus what ordered, never-lost
-- delivery needs (per-user seq, outbox marker, producer dedupe key).
CREATE SCHEMA IF NOT EXISTS notifications;

-- One row per user: the last seq handed out. Creating a notification increments it in the same
-- transaction, so the row lock serialises a user's concurrent creates and a rolled-back create
-- gives its number back: seqs are gapless and increase in commit order.
CREATE TABLE notifications.user_counters (
    user_id  uuid   PRIMARY KEY REFERENCES users.users (id) ON DELETE CASCADE,
    last_seq bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0)
);

CREATE TABLE notifications.notifications (
    id                  uuid         PRIMARY KEY,
    user_id             uuid         NOT NULL REFERENCES users.users (id) ON DELETE CASCADE,
    seq                 bigint       NOT NULL CHECK (seq > 0),
    title               varchar(255) NOT NULL,
    content             text         NOT NULL,
    type                varchar(50)  NOT NULL,
    action              jsonb,
    related_entity_type varchar(50),
    related_entity_id   uuid,
    is_read             boolean      NOT NULL DEFAULT false,
    read_at             timestamptz,
    created_at          timestamptz  NOT NULL DEFAULT now(),
    updated_at          timestamptz  NOT NULL DEFAULT now(),
    -- false: stored and listed, never pushed nor replayed (the producer asked for no push).
    push                boolean      NOT NULL DEFAULT true,
    -- Outbox marker: NULL until the frame went out on the user's channel.
    published_at        timestamptz,
    -- Producer idempotency key (Idempotency-Key header, dedupe_key field, stream entry id).
    dedupe_key          varchar(255),
    CONSTRAINT notifications_read_at_when_read CHECK (is_read OR read_at IS NULL)
);

-- A user's notifications newest first (list, cursor pages) and oldest first after N (replay).
CREATE UNIQUE INDEX notifications_user_seq ON notifications.notifications (user_id, seq);
-- unread_only lists and the unread badge count: only unread rows are in it, so it stays small.
CREATE INDEX notifications_user_unread ON notifications.notifications (user_id, seq)
    WHERE NOT is_read;
-- notification_type filter (with or without unread_only), newest first.
CREATE INDEX notifications_user_type ON notifications.notifications (user_id, type, seq);
-- Idempotent create: one notification per (user, key).
CREATE UNIQUE INDEX notifications_user_dedupe ON notifications.notifications (user_id, dedupe_key)
    WHERE dedupe_key IS NOT NULL;
-- The outbox: rows still to publish. Empty in steady state, so the relay's poll is nearly free.
CREATE INDEX notifications_unpublished ON notifications.notifications (user_id, seq)
    WHERE published_at IS NULL;
