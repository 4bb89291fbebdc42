-- Reimbursement reminders (#13): one per receipt, payer and period, whichever
-- process finds it due first (the key decides). `delivery_id` is NULL when the
-- payer had no channel or no subscribe consent left: the period is spent anyway.
CREATE TABLE reimbursement_reminders (
    receipt_id   BLOB NOT NULL REFERENCES receipts (id),
    payer_id     BLOB NOT NULL,
    period       TEXT NOT NULL CHECK (period IN ('unclaimed')),
    delivery_id  BLOB,
    sent_at      TEXT NOT NULL,
    PRIMARY KEY (receipt_id, payer_id, period)
);
CREATE INDEX reimbursement_reminders_payer_idx ON reimbursement_reminders (payer_id);
