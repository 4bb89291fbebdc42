-- WeChat Pay payments the agency's payment system reported the moment they
-- succeeded ("payments we know"): a receipt pushed without an `openID` whose
-- `weChatOrderNo` is one of them is announced to, and collected for, the payer's
-- openid in the app they paid in. One row per (agency, order): a repeat report is
-- idempotent. Mirrored by SQLite (0016).
CREATE TABLE wechat_payments (
    agency_id        uuid        NOT NULL REFERENCES agencies (id),
    -- WeChat Pay's transaction_id (digits).
    wechat_order_no  text        NOT NULL,
    -- The official account or mini-program the payer paid in (one of the agency's channels).
    wechat_app_id    text        NOT NULL,
    -- Stored as receipts store `openID`.
    openid           text        NOT NULL,
    total_fen        bigint      NOT NULL,
    paid_at          timestamptz NOT NULL,
    issuer_app_id    text        NOT NULL,
    received_at      timestamptz NOT NULL,
    PRIMARY KEY (agency_id, wechat_order_no)
);

-- The receipt's `weChatOrderNo`, so a payment reported after the receipt finds it.
ALTER TABLE receipts ADD COLUMN wechat_order_no text;
-- Only receipts still waiting for their payer's openid are looked up by order.
CREATE INDEX receipts_awaiting_payment_idx ON receipts (agency_id, wechat_order_no)
    WHERE wechat_order_no IS NOT NULL AND open_id IS NULL;
