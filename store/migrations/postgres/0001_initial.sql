-- Initial schema of piaojia (PostgreSQL). The SQLite schema mirrors it column for
-- column; times are timestamptz (UTC), identifiers uuid, documents jsonb.

CREATE TABLE agencies (
    id          uuid        PRIMARY KEY,
    code        text        NOT NULL,
    name        text        NOT NULL,
    -- jsonb (not text[]) so both backends decode the same JSON array.
    file_hosts  jsonb       NOT NULL DEFAULT '[]'::jsonb
                            CHECK (jsonb_typeof(file_hosts) = 'array'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT agencies_code_key UNIQUE (code)
);

CREATE TABLE apps (
    app_id        text        PRIMARY KEY,
    agency_id     uuid        NOT NULL REFERENCES agencies (id),
    kind          text        NOT NULL CHECK (kind IN ('issuer', 'reimburser')),
    name          text        NOT NULL,
    enabled       boolean     NOT NULL DEFAULT true,
    callback_url  text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX apps_agency_idx ON apps (agency_id);

-- Secrets are never deleted, only retired, so a rotation can be audited.
CREATE TABLE app_secrets (
    id          uuid        PRIMARY KEY,
    app_id      text        NOT NULL REFERENCES apps (app_id),
    sealed      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);
CREATE INDEX app_secrets_active_idx ON app_secrets (app_id, created_at DESC)
    WHERE retired_at IS NULL;

CREATE TABLE receipts (
    id                    uuid        PRIMARY KEY,
    agency_id             uuid        NOT NULL REFERENCES agencies (id),
    issuer_app_id         text        NOT NULL,
    bill_batch_code       text        NOT NULL,
    bill_no               text        NOT NULL,
    random                text        NOT NULL,
    bus_no                text        NOT NULL,
    bus_type              text        NOT NULL,
    payer_type            text        NOT NULL,
    issued_at             timestamptz NOT NULL,
    total_fen             bigint      NOT NULL,
    content_hash          text        NOT NULL,
    payer_sealed          text        NOT NULL,
    payer_id_index        text,
    payer_phone_index     text,
    payer_name_index      text,
    open_id               text,
    details               jsonb       NOT NULL,
    file                  jsonb,
    received_at           timestamptz NOT NULL,
    reimbursement_state   text        NOT NULL DEFAULT 'INIT'
                          CHECK (reimbursement_state IN ('INIT', 'LOCK', 'CLOSURE', 'CANCEL')),
    -- The reversal (红票) as columns rather than a document, so red numbers can be
    -- queried; all six are set together or not at all.
    red_bill_batch_code   text,
    red_bill_no           text,
    red_random            text,
    reversed_at           timestamptz,
    reversal_reason       text,
    reversal_recorded_at  timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    -- Identity of a receipt across all agencies.
    CONSTRAINT receipts_bill_key UNIQUE (bill_batch_code, bill_no),
    CONSTRAINT receipts_reversal_whole CHECK (
        (red_bill_batch_code IS NULL) = (red_bill_no IS NULL)
        AND (red_bill_batch_code IS NULL) = (red_random IS NULL)
        AND (red_bill_batch_code IS NULL) = (reversed_at IS NULL)
        AND (red_bill_batch_code IS NULL) = (reversal_reason IS NULL)
        AND (red_bill_batch_code IS NULL) = (reversal_recorded_at IS NULL)
    )
);
CREATE INDEX receipts_agency_issued_idx ON receipts (agency_id, issued_at DESC);
CREATE INDEX receipts_agency_bus_no_idx ON receipts (agency_id, bus_no);
CREATE INDEX receipts_payer_id_idx ON receipts (payer_id_index) WHERE payer_id_index IS NOT NULL;
CREATE INDEX receipts_payer_phone_idx ON receipts (payer_phone_index) WHERE payer_phone_index IS NOT NULL;
CREATE INDEX receipts_open_id_idx ON receipts (open_id) WHERE open_id IS NOT NULL;
CREATE INDEX receipts_red_bill_idx ON receipts (red_bill_batch_code, red_bill_no)
    WHERE red_bill_batch_code IS NOT NULL;

-- The outbox: written in the transaction of the receipt change it announces and
-- claimed by the notifier (FOR UPDATE SKIP LOCKED, lease columns).
CREATE TABLE deliveries (
    id               uuid        PRIMARY KEY,
    receipt_id       uuid        NOT NULL REFERENCES receipts (id),
    agency_id        uuid        NOT NULL REFERENCES agencies (id),
    event            text        NOT NULL CHECK (event IN ('issued', 'reversed')),
    channel          text        NOT NULL,
    target           text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed', 'parked')),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_until      timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);
-- Only pending rows are ever polled: keep that index small.
CREATE INDEX deliveries_pending_idx ON deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_receipt_idx ON deliveries (receipt_id, created_at);
CREATE INDEX deliveries_agency_status_idx ON deliveries (agency_id, status);
