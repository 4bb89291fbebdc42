-- The notifier's tables (SQLite), the same as PostgreSQL; types as in 0001.

ALTER TABLE deliveries ADD COLUMN interface TEXT NOT NULL DEFAULT '';
ALTER TABLE deliveries ADD COLUMN payload TEXT CHECK (payload IS NULL OR json_valid(payload));
ALTER TABLE deliveries ADD COLUMN park_reason TEXT;
ALTER TABLE deliveries ADD COLUMN provider_ref TEXT;

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
    id           BLOB    PRIMARY KEY CHECK (length(id) = 16),
    delivery_id  BLOB    NOT NULL REFERENCES deliveries (id),
    started_at   TEXT    NOT NULL,
    latency_ms   INTEGER NOT NULL,
    outcome      TEXT    NOT NULL CHECK (outcome IN ('success', 'retryable', 'permanent')),
    code         INTEGER,
    detail       TEXT
) STRICT;
CREATE INDEX delivery_attempts_delivery_idx ON delivery_attempts (delivery_id, started_at);

-- Each writer (process) owns its rows and replaces them on flush; readers sum.
-- The primary key leads with minute, so it also serves `minute >= since`.
CREATE TABLE tracking_stats (
    minute           TEXT    NOT NULL,
    scope            TEXT    NOT NULL,
    key              TEXT    NOT NULL,
    writer           TEXT    NOT NULL,
    attempts         INTEGER NOT NULL,
    successes        INTEGER NOT NULL,
    latency_buckets  TEXT    NOT NULL
                     CHECK (json_valid(latency_buckets) AND json_type(latency_buckets) = 'array'),
    PRIMARY KEY (minute, scope, key, writer)
) STRICT;

CREATE TABLE channels (
    id                       BLOB    PRIMARY KEY CHECK (length(id) = 16),
    agency_id                BLOB    NOT NULL REFERENCES agencies (id),
    kind                     TEXT    NOT NULL CHECK (kind IN ('wechat_template', 'wechat_subscribe')),
    wechat_app_id            TEXT    NOT NULL,
    secret_sealed            TEXT    NOT NULL,
    template_id              TEXT    NOT NULL,
    fields                   TEXT    NOT NULL CHECK (json_valid(fields)),
    page                     TEXT,
    message_token_sealed     TEXT,
    encoding_aes_key_sealed  TEXT,
    enabled                  INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    created_at               TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    updated_at               TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    CONSTRAINT channels_agency_kind_key UNIQUE (agency_id, kind)
) STRICT;
-- Several agencies may share one WeChat app (its events name only the app).
CREATE INDEX channels_wechat_app_idx ON channels (wechat_app_id);

CREATE TABLE alerts (
    id                BLOB    PRIMARY KEY CHECK (length(id) = 16),
    rule              TEXT    NOT NULL,
    key               TEXT    NOT NULL,
    state             TEXT    NOT NULL CHECK (state IN ('firing', 'resolved')),
    message           TEXT    NOT NULL,
    started_at        TEXT    NOT NULL,
    last_notified_at  TEXT    NOT NULL,
    resolved_at       TEXT
) STRICT;
-- One open incident per rule and key; resolved ones are history.
CREATE UNIQUE INDEX alerts_firing_key ON alerts (rule, key) WHERE state = 'firing';
CREATE INDEX alerts_started_idx ON alerts (started_at);
