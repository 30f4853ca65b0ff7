-- Web Push (docs/push.md): the browsers' push subscriptions and the outbox of pushes to send.

-- One row per browser subscription (a PushSubscription's endpoint and keys). The endpoint is
-- unique: registering it again is idempotent, and a browser that changes user moves it.
CREATE TABLE notifications.push_subscriptions (
    id         uuid        PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES users.users (id) ON DELETE CASCADE,
    endpoint   text        NOT NULL,
    p256dh     text        NOT NULL,
    auth       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX push_subscriptions_endpoint ON notifications.push_subscriptions (endpoint);
-- A user's subscriptions (list, cap, fan-out of a notification to its user's browsers).
CREATE INDEX push_subscriptions_user ON notifications.push_subscriptions (user_id, created_at);

-- One row per (notification, subscription) still to push, inserted in the notification's own
-- transaction. Deleted once the push service accepted it; deleted with its subscription (404 or
-- 410, or the user removed it) or its notification. `next_attempt_at` is when it is due: the
-- sender leases a job by moving it forward, so a sender that dies mid-send leaves it due again
-- when the lease ends. A job that failed `PUSH_MAX_ATTEMPTS` times stays with `dead_at` set.
CREATE TABLE notifications.push_jobs (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notification_id uuid        NOT NULL
                                REFERENCES notifications.notifications (id) ON DELETE CASCADE,
    subscription_id uuid        NOT NULL
                                REFERENCES notifications.push_subscriptions (id) ON DELETE CASCADE,
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error      text,
    dead_at         timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- The sender's poll: due jobs, oldest first. Dead jobs are not in it.
CREATE INDEX push_jobs_due ON notifications.push_jobs (next_attempt_at) WHERE dead_at IS NULL;
-- ON DELETE CASCADE lookups from a notification or a subscription.
CREATE INDEX push_jobs_notification ON notifications.push_jobs (notification_id);
CREATE INDEX push_jobs_subscription ON notifications.push_jobs (subscription_id);
