-- The reference transaction of issue #11: a durable receipt-shaped write, one
-- ~1.5 KB jsonb row and two outbox rows, in four round trips (BEGIN, the receipt,
-- the outbox rows, COMMIT). pgbench runs it prepared (-M prepared).
\set n random(1, 2000000000)
BEGIN;
INSERT INTO ref_receipts (id, agency, bill_no, body) VALUES (gen_random_uuid(), 'A001', :n, :body::jsonb) RETURNING id \gset
INSERT INTO ref_outbox (receipt_id, channel, status) VALUES (:id::uuid, 'wechat_template', 'pending'), (:id::uuid, 'issuer_webhook', 'pending');
END;
