-- Reimbursement (#13): reimbursers as registered parties, the lock on a receipt
-- (who holds it, since when, what was paid), an append-only history of every
-- change, and the answers to reimbursers' requests by request id (idempotency).

CREATE TABLE reimbursers (
    app_id             TEXT    PRIMARY KEY REFERENCES apps (app_id),
    kind               TEXT    NOT NULL CHECK (kind IN ('medical_insurance', 'commercial_insurer', 'employer')),
    name               TEXT    NOT NULL,
    accepted_agencies  TEXT    NOT NULL CHECK (json_valid(accepted_agencies)),
    personal_fields    TEXT    NOT NULL CHECK (json_valid(personal_fields)),
    created_at         TEXT    NOT NULL,
    updated_at         TEXT    NOT NULL
);

ALTER TABLE receipts ADD COLUMN reimbursement_holder    TEXT;
ALTER TABLE receipts ADD COLUMN reimbursement_locked_at TEXT;
ALTER TABLE receipts ADD COLUMN reimbursement_paid_fen  INTEGER;
CREATE INDEX receipts_reimbursement_lock_idx ON receipts (reimbursement_locked_at)
    WHERE reimbursement_state = 'LOCK';

CREATE TABLE reimbursement_events (
    id          BLOB    PRIMARY KEY CHECK (length(id) = 16),
    receipt_id  BLOB    NOT NULL REFERENCES receipts (id),
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    from_state  TEXT    NOT NULL,
    to_state    TEXT    NOT NULL,
    paid_fen    INTEGER,
    reason      TEXT,
    remote_addr TEXT,
    request_id  TEXT,
    at          TEXT    NOT NULL
);
CREATE INDEX reimbursement_events_receipt_idx ON reimbursement_events (receipt_id, at);

CREATE TRIGGER reimbursement_events_no_update BEFORE UPDATE ON reimbursement_events
BEGIN
    SELECT RAISE(ABORT, 'reimbursement_events is append-only');
END;
CREATE TRIGGER reimbursement_events_no_delete BEFORE DELETE ON reimbursement_events
BEGIN
    SELECT RAISE(ABORT, 'reimbursement_events is append-only');
END;

CREATE TABLE reimbursement_requests (
    app_id       TEXT    NOT NULL,
    request_id   TEXT    NOT NULL,
    fingerprint  TEXT    NOT NULL,
    status       INTEGER NOT NULL,
    response     TEXT    NOT NULL CHECK (json_valid(response)),
    created_at   TEXT    NOT NULL,
    PRIMARY KEY (app_id, request_id)
);
