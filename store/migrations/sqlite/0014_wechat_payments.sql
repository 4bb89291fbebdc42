-- WeChat Pay payments reported by the agency's payment system, and the receipts'
-- `weChatOrderNo`. Mirrors PostgreSQL's 0015.
CREATE TABLE wechat_payments (
    agency_id        BLOB    NOT NULL REFERENCES agencies (id),
    wechat_order_no  TEXT    NOT NULL,
    wechat_app_id    TEXT    NOT NULL,
    openid           TEXT    NOT NULL,
    total_fen        INTEGER NOT NULL,
    paid_at          TEXT    NOT NULL,
    issuer_app_id    TEXT    NOT NULL,
    received_at      TEXT    NOT NULL,
    PRIMARY KEY (agency_id, wechat_order_no)
) STRICT;

ALTER TABLE receipts ADD COLUMN wechat_order_no TEXT;
CREATE INDEX receipts_awaiting_payment_idx ON receipts (agency_id, wechat_order_no)
    WHERE wechat_order_no IS NOT NULL AND open_id IS NULL;
