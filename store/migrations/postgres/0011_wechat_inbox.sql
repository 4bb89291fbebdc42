-- The message server's inbox: every verified, decrypted event WeChat pushes is
-- written here before WeChat gets its answer, so an event acknowledged is an event
-- kept, whatever happens to the process afterwards. Workers in any gateway claim
-- due rows with a lease (a crashed claimer's rows are taken again once it
-- expires), handle them and mark them done; failures wait out a backoff and end
-- `failed` (reported) after the last retry. Mirrored by SQLite (0012).
CREATE TABLE wechat_inbox (
    id               uuid        PRIMARY KEY,
    wechat_app_id    text        NOT NULL,
    -- WeChat's MsgId, else FromUserName + CreateTime + Event (+ EventKey, card
    -- fields): WeChat's retries of one push insert nothing.
    dedup_key        text        NOT NULL,
    -- The event's name (figures and logs only).
    event            text        NOT NULL,
    -- The decrypted XML, sealed (it names payers' openids and cards).
    payload_sealed   text        NOT NULL,
    state            text        NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
    -- Claims so far (a claim whose process died counts too).
    attempts         integer     NOT NULL DEFAULT 0,
    received_at      timestamptz NOT NULL,
    next_attempt_at  timestamptz NOT NULL,
    lease_owner      text,
    lease_until      timestamptz,
    -- When it ended done or failed; done rows are kept a while for de-duplication.
    handled_at       timestamptz,
    last_error       text,
    UNIQUE (wechat_app_id, dedup_key)
);
CREATE INDEX wechat_inbox_due_idx ON wechat_inbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX wechat_inbox_handled_idx ON wechat_inbox (handled_at) WHERE state <> 'pending';
