-- Receipt identity is per agency: an issuer pushing another agency's code and
-- number first no longer blocks the real receipt, and learns nothing about it.
ALTER TABLE receipts DROP CONSTRAINT receipts_bill_key;
ALTER TABLE receipts ADD CONSTRAINT receipts_agency_bill_key UNIQUE (agency_id, bill_batch_code, bill_no);
-- Verification and possession still find a receipt by code and number alone.
CREATE INDEX receipts_bill_idx ON receipts (bill_batch_code, bill_no);

-- A delivery to a payer who erased their account is cancelled, never sent.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check
    CHECK (status IN ('pending', 'delivered', 'failed', 'parked', 'cancelled'));

-- Collection by identity needs a verified identity: WeChat's real-name check, or a
-- verified phone together with the name.
ALTER TABLE payers ADD COLUMN identity_verified_via text
    CHECK (identity_verified_via IN ('wechat_realname', 'phone'));
ALTER TABLE payers ADD COLUMN identity_verified_at timestamptz;
UPDATE payers SET identity_verified_via = 'phone', identity_verified_at = updated_at
    WHERE registered_at IS NOT NULL AND phone_verified AND phone_index IS NOT NULL;
-- What was collected by an unverified identity goes back (possession stays).
DELETE FROM wallet_entries w WHERE w.source = 'collected' AND NOT EXISTS (
    SELECT 1 FROM payers p JOIN receipts r ON r.id = w.receipt_id
    WHERE p.id = w.payer_id AND p.identity_verified_via = 'phone'
      AND r.payer_phone_index = p.phone_index AND r.payer_name_index = p.name_index);
