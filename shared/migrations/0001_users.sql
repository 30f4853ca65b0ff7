-- Users as the seed references them. Rows are created on first use by an idempotent upsert
-- (identity lives in the JWT issuer; this table anchors foreign keys and per-user counters).
CREATE SCHEMA IF NOT EXISTS users;

CREATE TABLE users.users (
    id         uuid        PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);
