-- Initial schema of piaojia (SQLite), the same tables as PostgreSQL. STRICT tables
-- keep types honest: uuids are 16-byte BLOBs, times are UTC RFC 3339 TEXT as sqlx
-- encodes DateTime<Utc> (sorts chronologically), documents are JSON TEXT, booleans 0/1.

CREATE TABLE agencies (
    id          BLOB    PRIMARY KEY CHECK (length(id) = 16),
    code        TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    file_hosts  TEXT    NOT NULL DEFAULT '[]'
                        CHECK (json_valid(file_hosts) AND json_type(file_hosts) = 'array'),
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    updated_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    CONSTRAINT agencies_code_key UNIQUE (code)
) STRICT;

CREATE TABLE apps (
    app_id        TEXT    PRIMARY KEY NOT NULL,
    agency_id     BLOB    NOT NULL REFERENCES agencies (id),
    kind          TEXT    NOT NULL CHECK (kind IN ('issuer', 'reimburser')),
    name          TEXT    NOT NULL,
    enabled       INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    callback_url  TEXT,
    created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    updated_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
) STRICT;
CREATE INDEX apps_agency_idx ON apps (agency_id);

-- Secrets are never deleted, only retired, so a rotation can be audited.
CREATE TABLE app_secrets (
    id          BLOB    PRIMARY KEY CHECK (length(id) = 16),
    app_id      TEXT    NOT NULL REFERENCES apps (app_id),
    sealed      TEXT    NOT NULL,
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    retired_at  TEXT
) STRICT;
CREATE INDEX app_secrets_active_idx ON app_secrets (app_id, created_at DESC)
    WHERE retired_at IS NULL;

CREATE TABLE receipts (
    id                    BLOB    PRIMARY KEY CHECK (length(id) = 16),
    agency_id             BLOB    NOT NULL REFERENCES agencies (id),
    issuer_app_id         TEXT    NOT NULL,
    bill_batch_code       TEXT    NOT NULL,
    bill_no               TEXT    NOT NULL,
    random                TEXT    NOT NULL,
    bus_no                TEXT    NOT NULL,
    bus_type              TEXT    NOT NULL,
    payer_type            TEXT    NOT NULL,
    issued_at             TEXT    NOT NULL,
    total_fen             INTEGER NOT NULL,
    content_hash          TEXT    NOT NULL,
    payer_sealed          TEXT    NOT NULL,
    payer_id_index        TEXT,
    payer_phone_index     TEXT,
    payer_name_index      TEXT,
    open_id               TEXT,
    details               TEXT    NOT NULL CHECK (json_valid(details)),
    file                  TEXT    CHECK (file IS NULL OR json_valid(file)),
    received_at           TEXT    NOT NULL,
    reimbursement_state   TEXT    NOT NULL DEFAULT 'INIT'
                          CHECK (reimbursement_state IN ('INIT', 'LOCK', 'CLOSURE', 'CANCEL')),
    -- The reversal (红票) as columns rather than a document, so red numbers can be
    -- queried; all six are set together or not at all.
    red_bill_batch_code   TEXT,
    red_bill_no           TEXT,
    red_random            TEXT,
    reversed_at           TEXT,
    reversal_reason       TEXT,
    reversal_recorded_at  TEXT,
    updated_at            TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    -- Identity of a receipt across all agencies.
    CONSTRAINT receipts_bill_key UNIQUE (bill_batch_code, bill_no),
    CONSTRAINT receipts_reversal_whole CHECK (
        (red_bill_batch_code IS NULL) = (red_bill_no IS NULL)
        AND (red_bill_batch_code IS NULL) = (red_random IS NULL)
        AND (red_bill_batch_code IS NULL) = (reversed_at IS NULL)
        AND (red_bill_batch_code IS NULL) = (reversal_reason IS NULL)
        AND (red_bill_batch_code IS NULL) = (reversal_recorded_at IS NULL)
    )
) STRICT;
CREATE INDEX receipts_agency_issued_idx ON receipts (agency_id, issued_at DESC);
CREATE INDEX receipts_agency_bus_no_idx ON receipts (agency_id, bus_no);
CREATE INDEX receipts_payer_id_idx ON receipts (payer_id_index) WHERE payer_id_index IS NOT NULL;
CREATE INDEX receipts_payer_phone_idx ON receipts (payer_phone_index) WHERE payer_phone_index IS NOT NULL;
CREATE INDEX receipts_open_id_idx ON receipts (open_id) WHERE open_id IS NOT NULL;
CREATE INDEX receipts_red_bill_idx ON receipts (red_bill_batch_code, red_bill_no)
    WHERE red_bill_batch_code IS NOT NULL;

-- The outbox: written in the transaction of the receipt change it announces and
-- claimed by the notifier (UPDATE … RETURNING on the lease columns).
CREATE TABLE deliveries (
    id               BLOB    PRIMARY KEY CHECK (length(id) = 16),
    receipt_id       BLOB    NOT NULL REFERENCES receipts (id),
    agency_id        BLOB    NOT NULL REFERENCES agencies (id),
    event            TEXT    NOT NULL CHECK (event IN ('issued', 'reversed')),
    channel          TEXT    NOT NULL,
    target           TEXT    NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed', 'parked')),
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    lease_owner      TEXT,
    lease_until      TEXT,
    last_error       TEXT,
    created_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    updated_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    delivered_at     TEXT
) STRICT;
-- Only pending rows are ever polled: keep that index small.
CREATE INDEX deliveries_pending_idx ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_receipt_idx ON deliveries (receipt_id, created_at);
CREATE INDEX deliveries_agency_status_idx ON deliveries (agency_id, status);
