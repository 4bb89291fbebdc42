-- Payer claims (#13): a payer sends receipts of their wallet to one reimburser,
-- consenting to exactly the personal fields it may receive. Personal data and the
-- claim's own fields (bank account, reference) are sealed for that reimburser.
-- `seq` orders a reimburser's claims for its pull cursor: claims of one
-- reimburser are written under a lock on its row, so they commit in `seq` order
-- and a cursor never skips one still being written.

CREATE TABLE claims (
    id                 uuid        PRIMARY KEY,
    -- NULL once the payer erased their account (the claim stays, its personal data goes).
    payer_id           uuid        REFERENCES payers (id),
    reimburser_app_id  text        NOT NULL REFERENCES reimbursers (app_id),
    -- The mini-program it was submitted through: where the payer is told of changes.
    mp_app_id          text        NOT NULL,
    seq                bigint      NOT NULL,
    status             text        NOT NULL CHECK (status IN ('submitted', 'received', 'locked', 'reimbursed',
                                                              'rejected', 'withdrawn', 'cancelled')),
    -- The personal fields the payer consented to share (JSON array of strings).
    consented_fields   jsonb       NOT NULL,
    personal_sealed    text,
    fields_sealed      text,
    paid_fen           bigint,
    reason             text,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    UNIQUE (reimburser_app_id, seq)
);
CREATE INDEX claims_payer_idx ON claims (payer_id, created_at);

CREATE TABLE claim_receipts (
    claim_id    uuid    NOT NULL REFERENCES claims (id),
    receipt_id  uuid    NOT NULL REFERENCES receipts (id),
    position    integer NOT NULL,
    -- True while the claim is open: a receipt is in at most one open claim.
    open        boolean NOT NULL,
    PRIMARY KEY (claim_id, receipt_id)
);
CREATE UNIQUE INDEX claim_receipts_one_open_idx ON claim_receipts (receipt_id) WHERE open;

CREATE TABLE claim_events (
    id           uuid        PRIMARY KEY,
    claim_id     uuid        NOT NULL REFERENCES claims (id),
    -- `payer`, the reimburser's app id, `issuer:<appId>` (reversal) or `system`.
    actor        text        NOT NULL,
    action       text        NOT NULL,
    from_status  text,
    to_status    text        NOT NULL,
    paid_fen     bigint,
    reason       text,
    remote_addr  text,
    request_id   text,
    at           timestamptz NOT NULL
);
CREATE INDEX claim_events_claim_idx ON claim_events (claim_id, at);

CREATE FUNCTION claim_events_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'claim_events is append-only';
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER claim_events_no_update BEFORE UPDATE OR DELETE ON claim_events
    FOR EACH ROW EXECUTE FUNCTION claim_events_append_only();
