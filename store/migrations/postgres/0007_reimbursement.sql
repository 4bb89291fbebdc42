-- Reimbursement (#13): reimbursers as registered parties, the lock on a receipt
-- (who holds it, since when, what was paid), an append-only history of every
-- change, and the answers to reimbursers' requests by request id (idempotency).

CREATE TABLE reimbursers (
    app_id             text        PRIMARY KEY REFERENCES apps (app_id),
    kind               text        NOT NULL CHECK (kind IN ('medical_insurance', 'commercial_insurer', 'employer')),
    name               text        NOT NULL,
    -- Codes of the agencies whose receipts it accepts (JSON array of strings).
    accepted_agencies  jsonb       NOT NULL,
    -- Personal fields a payer may share with it (JSON array of strings).
    personal_fields    jsonb       NOT NULL,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);

ALTER TABLE receipts ADD COLUMN reimbursement_holder    text;
ALTER TABLE receipts ADD COLUMN reimbursement_locked_at timestamptz;
ALTER TABLE receipts ADD COLUMN reimbursement_paid_fen  bigint;
CREATE INDEX receipts_reimbursement_lock_idx ON receipts (reimbursement_locked_at)
    WHERE reimbursement_state = 'LOCK';

CREATE TABLE reimbursement_events (
    id          uuid        PRIMARY KEY,
    receipt_id  uuid        NOT NULL REFERENCES receipts (id),
    -- The reimburser's app id, or `system` (lock expiry) / `issuer:<appId>` (reversal).
    actor       text        NOT NULL,
    action      text        NOT NULL,
    from_state  text        NOT NULL,
    to_state    text        NOT NULL,
    paid_fen    bigint,
    reason      text,
    remote_addr text,
    request_id  text,
    at          timestamptz NOT NULL
);
CREATE INDEX reimbursement_events_receipt_idx ON reimbursement_events (receipt_id, at);

CREATE FUNCTION reimbursement_events_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'reimbursement_events is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER reimbursement_events_no_update BEFORE UPDATE OR DELETE ON reimbursement_events
    FOR EACH ROW EXECUTE FUNCTION reimbursement_events_append_only();

CREATE TABLE reimbursement_requests (
    app_id       text        NOT NULL,
    request_id   text        NOT NULL,
    -- SHA-256 of what was asked, so a reused id with another request is refused.
    fingerprint  text        NOT NULL,
    status       integer     NOT NULL,
    response     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL,
    PRIMARY KEY (app_id, request_id)
);
