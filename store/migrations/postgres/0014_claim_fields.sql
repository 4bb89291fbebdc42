-- The claim's own fields a reimburser asks payers for (#13): a JSON array of
-- {name, label, required}. Empty: it names none, and the claim's fields are free.
ALTER TABLE reimbursers ADD COLUMN claim_fields jsonb NOT NULL DEFAULT '[]';
