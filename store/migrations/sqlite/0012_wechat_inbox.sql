-- The message server's inbox (events written before WeChat is answered, claimed
-- with a lease, retried with backoff). Mirrors PostgreSQL's 0011.
CREATE TABLE wechat_inbox (
    id               BLOB    PRIMARY KEY,
    wechat_app_id    TEXT    NOT NULL,
    dedup_key        TEXT    NOT NULL,
    event            TEXT    NOT NULL,
    payload_sealed   TEXT    NOT NULL,
    state            TEXT    NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    received_at      TEXT    NOT NULL,
    next_attempt_at  TEXT    NOT NULL,
    lease_owner      TEXT,
    lease_until      TEXT,
    handled_at       TEXT,
    last_error       TEXT,
    UNIQUE (wechat_app_id, dedup_key)
) STRICT;
CREATE INDEX wechat_inbox_due_idx ON wechat_inbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX wechat_inbox_handled_idx ON wechat_inbox (handled_at) WHERE state <> 'pending';
