-- no-transaction
-- Receipt identity is per agency, deliveries may be cancelled, and payers record
-- how their identity was verified. SQLite cannot change a table's constraints in
-- place: receipts and deliveries are rebuilt (the documented procedure: foreign
-- keys off, one transaction, a foreign key check, foreign keys on again).
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

CREATE TABLE receipts_new (
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
    search_text           TEXT,
    -- Identity of a receipt within its agency.
    CONSTRAINT receipts_agency_bill_key UNIQUE (agency_id, bill_batch_code, bill_no),
    CONSTRAINT receipts_reversal_whole CHECK (
        (red_bill_batch_code IS NULL) = (red_bill_no IS NULL)
        AND (red_bill_batch_code IS NULL) = (red_random IS NULL)
        AND (red_bill_batch_code IS NULL) = (reversed_at IS NULL)
        AND (red_bill_batch_code IS NULL) = (reversal_reason IS NULL)
        AND (red_bill_batch_code IS NULL) = (reversal_recorded_at IS NULL)
    )
) STRICT;
INSERT INTO receipts_new (id, agency_id, issuer_app_id, bill_batch_code, bill_no, random, bus_no, bus_type, payer_type, issued_at, total_fen, content_hash, payer_sealed, payer_id_index, payer_phone_index, payer_name_index, open_id, details, file, received_at, reimbursement_state, red_bill_batch_code, red_bill_no, red_random, reversed_at, reversal_reason, reversal_recorded_at, updated_at, search_text)
    SELECT id, agency_id, issuer_app_id, bill_batch_code, bill_no, random, bus_no, bus_type, payer_type, issued_at, total_fen, content_hash, payer_sealed, payer_id_index, payer_phone_index, payer_name_index, open_id, details, file, received_at, reimbursement_state, red_bill_batch_code, red_bill_no, red_random, reversed_at, reversal_reason, reversal_recorded_at, updated_at, search_text FROM receipts;
DROP TABLE receipts;
ALTER TABLE receipts_new RENAME TO receipts;
CREATE INDEX receipts_agency_issued_idx ON receipts (agency_id, issued_at DESC);
CREATE INDEX receipts_agency_bus_no_idx ON receipts (agency_id, bus_no);
CREATE INDEX receipts_payer_id_idx ON receipts (payer_id_index) WHERE payer_id_index IS NOT NULL;
CREATE INDEX receipts_payer_phone_idx ON receipts (payer_phone_index) WHERE payer_phone_index IS NOT NULL;
CREATE INDEX receipts_open_id_idx ON receipts (open_id) WHERE open_id IS NOT NULL;
CREATE INDEX receipts_red_bill_idx ON receipts (red_bill_batch_code, red_bill_no)
    WHERE red_bill_batch_code IS NOT NULL;
-- Verification and possession still find a receipt by code and number alone.
CREATE INDEX receipts_bill_idx ON receipts (bill_batch_code, bill_no);

CREATE TABLE deliveries_new (
    id               BLOB    PRIMARY KEY CHECK (length(id) = 16),
    receipt_id       BLOB    NOT NULL REFERENCES receipts (id),
    agency_id        BLOB    NOT NULL REFERENCES agencies (id),
    event            TEXT    NOT NULL CHECK (event IN ('issued', 'reversed')),
    channel          TEXT    NOT NULL,
    target           TEXT    NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed', 'parked', 'cancelled')),
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    lease_owner      TEXT,
    lease_until      TEXT,
    last_error       TEXT,
    created_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    updated_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    delivered_at     TEXT,
    interface        TEXT    NOT NULL DEFAULT '',
    payload          TEXT    CHECK (payload IS NULL OR json_valid(payload)),
    park_reason      TEXT,
    provider_ref     TEXT
) STRICT;
INSERT INTO deliveries_new (id, receipt_id, agency_id, event, channel, target, status, attempts, next_attempt_at, lease_owner, lease_until, last_error, created_at, updated_at, delivered_at, interface, payload, park_reason, provider_ref)
    SELECT id, receipt_id, agency_id, event, channel, target, status, attempts, next_attempt_at, lease_owner, lease_until, last_error, created_at, updated_at, delivered_at, interface, payload, park_reason, provider_ref FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_new RENAME TO deliveries;
CREATE INDEX deliveries_receipt_idx ON deliveries (receipt_id, created_at);
CREATE INDEX deliveries_agency_status_idx ON deliveries (agency_id, status);
CREATE INDEX deliveries_due_idx ON deliveries (next_attempt_at, created_at) WHERE status = 'pending';
CREATE INDEX deliveries_provider_ref_idx ON deliveries (interface, provider_ref)
    WHERE provider_ref IS NOT NULL;
CREATE INDEX deliveries_status_created_idx ON deliveries (status, created_at);

ALTER TABLE payers ADD COLUMN identity_verified_via TEXT
    CHECK (identity_verified_via IN ('wechat_realname', 'phone'));
ALTER TABLE payers ADD COLUMN identity_verified_at TEXT;
UPDATE payers SET identity_verified_via = 'phone', identity_verified_at = updated_at
    WHERE registered_at IS NOT NULL AND phone_verified = 1 AND phone_index IS NOT NULL;
-- What was collected by an unverified identity goes back (possession stays).
DELETE FROM wallet_entries WHERE source = 'collected' AND NOT EXISTS (
    SELECT 1 FROM payers p JOIN receipts r ON r.id = wallet_entries.receipt_id
    WHERE p.id = wallet_entries.payer_id AND p.identity_verified_via = 'phone'
      AND r.payer_phone_index = p.phone_index AND r.payer_name_index = p.name_index);

PRAGMA foreign_key_check;
COMMIT;
PRAGMA foreign_keys = ON;
