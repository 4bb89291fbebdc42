-- The official account's followers (unsubscribe stops template sends), WeChat's
-- final reports of what a provider did with a delivery (TEMPLATESENDJOBFINISH), and
-- the card package (卡包): one card template per agency, one authorisation order
-- per receipt with the card it became.

CREATE TABLE wechat_followers (
    wechat_app_id  TEXT    NOT NULL,
    open_id        TEXT    NOT NULL,
    following      INTEGER NOT NULL CHECK (following IN (0, 1)),
    changed_at     TEXT    NOT NULL,
    PRIMARY KEY (wechat_app_id, open_id)
) STRICT;

CREATE TABLE provider_reports (
    delivery_id  BLOB    PRIMARY KEY CHECK (length(delivery_id) = 16) REFERENCES deliveries (id),
    status       TEXT    NOT NULL,
    reported_at  TEXT    NOT NULL
) STRICT;

CREATE TABLE card_units (
    agency_id      BLOB    PRIMARY KEY CHECK (length(agency_id) = 16) REFERENCES agencies (id),
    wechat_app_id  TEXT    NOT NULL,
    s_pappid       TEXT    NOT NULL,
    card_id        TEXT    NOT NULL,
    payee          TEXT    NOT NULL,
    logo_url       TEXT    NOT NULL,
    enabled        INTEGER NOT NULL CHECK (enabled IN (0, 1)),
    created_at     TEXT    NOT NULL,
    updated_at     TEXT    NOT NULL
) STRICT;

CREATE TABLE card_orders (
    order_id           TEXT    PRIMARY KEY NOT NULL,
    receipt_id         BLOB    NOT NULL CHECK (length(receipt_id) = 16) REFERENCES receipts (id),
    agency_id          BLOB    NOT NULL REFERENCES agencies (id),
    wechat_app_id      TEXT    NOT NULL,
    open_id            TEXT    NOT NULL,
    card_id            TEXT    NOT NULL,
    requested_at       TEXT    NOT NULL,
    authorized_at      TEXT,
    code               TEXT,
    inserted_at        TEXT,
    card_status        TEXT,
    wechat_status      TEXT,
    wechat_status_at   TEXT,
    updated_at         TEXT    NOT NULL,
    CONSTRAINT card_orders_receipt_key UNIQUE (receipt_id)
) STRICT;
CREATE UNIQUE INDEX card_orders_card_idx ON card_orders (card_id, code) WHERE code IS NOT NULL;
