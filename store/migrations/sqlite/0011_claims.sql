-- Payer claims (#13): a payer sends receipts of their wallet to one reimburser,
-- consenting to exactly the personal fields it may receive. Personal data and the
-- claim's own fields (bank account, reference) are sealed for that reimburser.
-- `seq` orders a reimburser's claims for its pull cursor (one writer: commit order).

CREATE TABLE claims (
    id                 BLOB    PRIMARY KEY CHECK (length(id) = 16),
    payer_id           BLOB    REFERENCES payers (id),
    reimburser_app_id  TEXT    NOT NULL REFERENCES reimbursers (app_id),
    mp_app_id          TEXT    NOT NULL,
    seq                INTEGER NOT NULL,
    status             TEXT    NOT NULL CHECK (status IN ('submitted', 'received', 'locked', 'reimbursed',
                                                          'rejected', 'withdrawn', 'cancelled')),
    consented_fields   TEXT    NOT NULL CHECK (json_valid(consented_fields)),
    personal_sealed    TEXT,
    fields_sealed      TEXT,
    paid_fen           INTEGER,
    reason             TEXT,
    created_at         TEXT    NOT NULL,
    updated_at         TEXT    NOT NULL,
    UNIQUE (reimburser_app_id, seq)
);
CREATE INDEX claims_payer_idx ON claims (payer_id, created_at);

CREATE TABLE claim_receipts (
    claim_id    BLOB    NOT NULL REFERENCES claims (id),
    receipt_id  BLOB    NOT NULL REFERENCES receipts (id),
    position    INTEGER NOT NULL,
    open        INTEGER NOT NULL,
    PRIMARY KEY (claim_id, receipt_id)
);
CREATE UNIQUE INDEX claim_receipts_one_open_idx ON claim_receipts (receipt_id) WHERE open;

CREATE TABLE claim_events (
    id           BLOB    PRIMARY KEY CHECK (length(id) = 16),
    claim_id     BLOB    NOT NULL REFERENCES claims (id),
    actor        TEXT    NOT NULL,
    action       TEXT    NOT NULL,
    from_status  TEXT,
    to_status    TEXT    NOT NULL,
    paid_fen     INTEGER,
    reason       TEXT,
    remote_addr  TEXT,
    request_id   TEXT,
    at           TEXT    NOT NULL
);
CREATE INDEX claim_events_claim_idx ON claim_events (claim_id, at);

CREATE TRIGGER claim_events_no_update BEFORE UPDATE ON claim_events
BEGIN
    SELECT RAISE(ABORT, 'claim_events is append-only');
END;
CREATE TRIGGER claim_events_no_delete BEFORE DELETE ON claim_events
BEGIN
    SELECT RAISE(ABORT, 'claim_events is append-only');
END;
