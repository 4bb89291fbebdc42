-- One index for a receipt's identity, in its agency and across agencies: (code,
-- number, agency) answers both the push's ON CONFLICT (agency, code, number) and
-- verification's lookup by code and number, where two were kept up on every push.
CREATE UNIQUE INDEX receipts_bill_agency_key ON receipts (bill_batch_code, bill_no, agency_id);
ALTER TABLE receipts DROP CONSTRAINT receipts_agency_bill_key;
DROP INDEX receipts_bill_idx;
