-- The official account's followers (unsubscribe stops template sends), WeChat's
-- final reports of what a provider did with a delivery (TEMPLATESENDJOBFINISH), and
-- the card package (卡包): one card template per agency, one authorisation order
-- per receipt with the card it became.

CREATE TABLE wechat_followers (
    wechat_app_id  text        NOT NULL,
    open_id        text        NOT NULL,
    following      boolean     NOT NULL,
    changed_at     timestamptz NOT NULL,
    PRIMARY KEY (wechat_app_id, open_id)
);

CREATE TABLE provider_reports (
    delivery_id  uuid        PRIMARY KEY REFERENCES deliveries (id),
    status       text        NOT NULL,
    reported_at  timestamptz NOT NULL
);

CREATE TABLE card_units (
    agency_id      uuid        PRIMARY KEY REFERENCES agencies (id),
    wechat_app_id  text        NOT NULL,
    s_pappid       text        NOT NULL,
    card_id        text        NOT NULL,
    payee          text        NOT NULL,
    logo_url       text        NOT NULL,
    enabled        boolean     NOT NULL,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);

CREATE TABLE card_orders (
    order_id           text        PRIMARY KEY,
    receipt_id         uuid        NOT NULL REFERENCES receipts (id),
    agency_id          uuid        NOT NULL REFERENCES agencies (id),
    wechat_app_id      text        NOT NULL,
    open_id            text        NOT NULL,
    card_id            text        NOT NULL,
    requested_at       timestamptz NOT NULL,
    authorized_at      timestamptz,
    code               text,
    inserted_at        timestamptz,
    card_status        text,
    wechat_status      text,
    wechat_status_at   timestamptz,
    updated_at         timestamptz NOT NULL,
    CONSTRAINT card_orders_receipt_key UNIQUE (receipt_id)
);
CREATE UNIQUE INDEX card_orders_card_idx ON card_orders (card_id, code) WHERE code IS NOT NULL;
