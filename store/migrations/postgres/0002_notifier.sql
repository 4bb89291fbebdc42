-- The notifier's tables (PostgreSQL): delivery metadata and attempts, per-minute
-- tracking, WeChat channels of agencies and operator alerts. Mirrored by SQLite.

ALTER TABLE deliveries
    ADD COLUMN interface     text  NOT NULL DEFAULT '',
    ADD COLUMN payload       jsonb,
    ADD COLUMN park_reason   text,
    ADD COLUMN provider_ref  text;

-- Claim walks this index in its ORDER BY (oldest due first, then oldest created),
-- so a claim stops after `limit` pending rows instead of sorting them all.
DROP INDEX deliveries_pending_idx;
CREATE INDEX deliveries_due_idx ON deliveries (next_attempt_at, created_at) WHERE status = 'pending';
-- Provider reports (e.g. TEMPLATESENDJOBFINISH) find their delivery by msgid.
CREATE INDEX deliveries_provider_ref_idx ON deliveries (channel, provider_ref)
    WHERE provider_ref IS NOT NULL;
-- Operators list and re-drive by status (parked, failed), oldest or newest first.
CREATE INDEX deliveries_status_created_idx ON deliveries (status, created_at);

CREATE TABLE delivery_attempts (
    id           uuid        PRIMARY KEY,
    delivery_id  uuid        NOT NULL REFERENCES deliveries (id),
    started_at   timestamptz NOT NULL,
    latency_ms   bigint      NOT NULL,
    outcome      text        NOT NULL CHECK (outcome IN ('success', 'retryable', 'permanent')),
    code         bigint,
    detail       text
);
CREATE INDEX delivery_attempts_delivery_idx ON delivery_attempts (delivery_id, started_at);

-- Each writer (process) owns its rows and replaces them on flush; readers sum.
-- The primary key leads with minute, so it also serves `minute >= since`.
CREATE TABLE tracking_stats (
    minute           timestamptz NOT NULL,
    scope            text        NOT NULL,
    key              text        NOT NULL,
    writer           text        NOT NULL,
    attempts         bigint      NOT NULL,
    successes        bigint      NOT NULL,
    latency_buckets  jsonb       NOT NULL CHECK (jsonb_typeof(latency_buckets) = 'array'),
    PRIMARY KEY (minute, scope, key, writer)
);

CREATE TABLE channels (
    id                       uuid        PRIMARY KEY,
    agency_id                uuid        NOT NULL REFERENCES agencies (id),
    kind                     text        NOT NULL CHECK (kind IN ('wechat_template', 'wechat_subscribe')),
    wechat_app_id            text        NOT NULL,
    secret_sealed            text        NOT NULL,
    template_id              text        NOT NULL,
    fields                   jsonb       NOT NULL,
    page                     text,
    message_token_sealed     text,
    encoding_aes_key_sealed  text,
    enabled                  boolean     NOT NULL DEFAULT true,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT channels_agency_kind_key UNIQUE (agency_id, kind)
);
-- Several agencies may share one WeChat app (its events name only the app).
CREATE INDEX channels_wechat_app_idx ON channels (wechat_app_id);

CREATE TABLE alerts (
    id                uuid        PRIMARY KEY,
    rule              text        NOT NULL,
    key               text        NOT NULL,
    state             text        NOT NULL CHECK (state IN ('firing', 'resolved')),
    message           text        NOT NULL,
    started_at        timestamptz NOT NULL,
    last_notified_at  timestamptz NOT NULL,
    resolved_at       timestamptz
);
-- One open incident per rule and key; resolved ones are history.
CREATE UNIQUE INDEX alerts_firing_key ON alerts (rule, key) WHERE state = 'firing';
CREATE INDEX alerts_started_idx ON alerts (started_at);
