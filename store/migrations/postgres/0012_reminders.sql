-- Reimbursement reminders (#13): one per receipt, payer and period, whichever
-- gateway finds it due first (the key decides). `delivery_id` is NULL when the
-- payer had no channel or no subscribe consent left: the period is spent anyway,
-- so a payer who cannot be told does not hold up the others' reminders.
CREATE TABLE reimbursement_reminders (
    receipt_id   uuid        NOT NULL REFERENCES receipts (id),
    payer_id     uuid        NOT NULL,
    period       text        NOT NULL CHECK (period IN ('unclaimed', 'deadline')),
    delivery_id  uuid,
    sent_at      timestamptz NOT NULL,
    PRIMARY KEY (receipt_id, payer_id, period)
);
CREATE INDEX reimbursement_reminders_payer_idx ON reimbursement_reminders (payer_id);

-- A reimburser that pays a receipt only within so many days of its issue
-- (NULL: no limit): claims after it are refused, and payers are reminded before it.
ALTER TABLE reimbursers ADD COLUMN claim_within_days bigint CHECK (claim_within_days > 0);
