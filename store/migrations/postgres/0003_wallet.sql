-- The receipt wallet (PostgreSQL): payers of the mini-programs, their WeChat
-- identities and refresh tokens, wallet entries, subscription credits, an audit
-- trail, and the platform wallet as a channel without an agency. Mirrored by SQLite.

-- Item names for the payers' free-text search (not personal data).
ALTER TABLE receipts ADD COLUMN search_text text;

-- The platform's shared wallet mini-program is a channel of no agency.
ALTER TABLE channels ALTER COLUMN agency_id DROP NOT NULL;
ALTER TABLE channels DROP CONSTRAINT channels_kind_check;
ALTER TABLE channels ADD CONSTRAINT channels_kind_check
    CHECK (kind IN ('wechat_template', 'wechat_subscribe', 'wallet_subscribe'));
ALTER TABLE channels ADD CONSTRAINT channels_platform_check
    CHECK ((agency_id IS NULL) = (kind = 'wallet_subscribe'));
-- A long-term subscribe template (medical accounts): no per-message consent.
ALTER TABLE channels ADD COLUMN long_term boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX channels_platform_key ON channels (kind) WHERE agency_id IS NULL;

-- A person paying receipts. Personal data is sealed; matching uses blind indexes.
CREATE TABLE payers (
    id                 uuid        PRIMARY KEY,
    unionid_index      text,
    profile_sealed     text,
    id_index           text,
    name_index         text,
    phone_index        text,
    phone_verified     boolean     NOT NULL DEFAULT false,
    consent_version    text,
    consent_at         timestamptz,
    reminders          boolean     NOT NULL DEFAULT true,
    registered_at      timestamptz,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    CONSTRAINT payers_registered_whole CHECK (
        (registered_at IS NULL) = (profile_sealed IS NULL)
        AND (registered_at IS NULL) = (id_index IS NULL)
        AND (registered_at IS NULL) = (name_index IS NULL)
    )
);
-- One payer per WeChat unionid (the same person across our mini-programs).
CREATE UNIQUE INDEX payers_unionid_key ON payers (unionid_index) WHERE unionid_index IS NOT NULL;
CREATE INDEX payers_id_idx ON payers (id_index, name_index) WHERE id_index IS NOT NULL;
CREATE INDEX payers_phone_idx ON payers (phone_index, name_index) WHERE phone_verified;

-- Who the payer is in each mini-program (openids are per app).
CREATE TABLE payer_identities (
    app_id         text        NOT NULL,
    openid         text        NOT NULL,
    payer_id       uuid        NOT NULL REFERENCES payers (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL,
    last_login_at  timestamptz NOT NULL,
    PRIMARY KEY (app_id, openid)
);
CREATE INDEX payer_identities_payer_idx ON payer_identities (payer_id, app_id);

-- Refresh tokens, stored as keyed hashes. Each use rotates within a family; a
-- token used twice revokes the whole family.
CREATE TABLE refresh_tokens (
    id          uuid        PRIMARY KEY,
    family_id   uuid        NOT NULL,
    payer_id    uuid        NOT NULL REFERENCES payers (id) ON DELETE CASCADE,
    app_id      text        NOT NULL,
    token_hash  text        NOT NULL,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz,
    CONSTRAINT refresh_tokens_hash_key UNIQUE (token_hash)
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_payer_idx ON refresh_tokens (payer_id);

-- A receipt in a payer's wallet. issued_at and agency_id are copied from the
-- receipt so a page of the wallet is one index range scan.
CREATE TABLE wallet_entries (
    payer_id     uuid        NOT NULL REFERENCES payers (id) ON DELETE CASCADE,
    receipt_id   uuid        NOT NULL REFERENCES receipts (id),
    agency_id    uuid        NOT NULL,
    issued_at    timestamptz NOT NULL,
    source       text        NOT NULL CHECK (source IN ('collected', 'possession')),
    tags         jsonb       NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(tags) = 'array'),
    note_sealed  text,
    added_at     timestamptz NOT NULL,
    -- Removed by the payer: hidden, and never collected again.
    removed_at   timestamptz,
    PRIMARY KEY (payer_id, receipt_id)
);
CREATE INDEX wallet_entries_page_idx ON wallet_entries (payer_id, issued_at DESC, receipt_id DESC)
    WHERE removed_at IS NULL;
CREATE INDEX wallet_entries_receipt_idx ON wallet_entries (receipt_id);

-- Subscribe-message consents the mini-program reported (wx.requestSubscribeMessage):
-- one message per accepted one-time consent; long-term templates need one acceptance.
CREATE TABLE subscription_credits (
    payer_id     uuid        NOT NULL REFERENCES payers (id) ON DELETE CASCADE,
    app_id       text        NOT NULL,
    template_id  text        NOT NULL,
    remaining    integer     NOT NULL DEFAULT 0 CHECK (remaining >= 0),
    long_term    boolean     NOT NULL DEFAULT false,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (payer_id, app_id, template_id)
);

-- What happened to payer accounts, without personal data; outlives the payer.
CREATE TABLE payer_audit (
    id        uuid        PRIMARY KEY,
    payer_id  uuid        NOT NULL,
    event     text        NOT NULL,
    at        timestamptz NOT NULL,
    detail    jsonb
);
CREATE INDEX payer_audit_payer_idx ON payer_audit (payer_id, at);
