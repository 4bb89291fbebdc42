-- The receipt wallet (SQLite), the same tables as PostgreSQL: payers of the
-- mini-programs, their WeChat identities and refresh tokens, wallet entries,
-- subscription credits, an audit trail, and the platform wallet as a channel
-- without an agency.

ALTER TABLE receipts ADD COLUMN search_text TEXT;

-- SQLite cannot relax a NOT NULL or a CHECK in place: rebuild channels.
CREATE TABLE channels_new (
    id                       BLOB    PRIMARY KEY CHECK (length(id) = 16),
    agency_id                BLOB    REFERENCES agencies (id),
    kind                     TEXT    NOT NULL
                             CHECK (kind IN ('wechat_template', 'wechat_subscribe', 'wallet_subscribe')),
    wechat_app_id            TEXT    NOT NULL,
    secret_sealed            TEXT    NOT NULL,
    template_id              TEXT    NOT NULL,
    fields                   TEXT    NOT NULL CHECK (json_valid(fields)),
    page                     TEXT,
    message_token_sealed     TEXT,
    encoding_aes_key_sealed  TEXT,
    enabled                  INTEGER NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    created_at               TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    updated_at               TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    long_term                INTEGER NOT NULL DEFAULT 0 CHECK (long_term IN (0, 1)),
    CONSTRAINT channels_agency_kind_key UNIQUE (agency_id, kind),
    CONSTRAINT channels_platform_check CHECK ((agency_id IS NULL) = (kind = 'wallet_subscribe'))
) STRICT;
INSERT INTO channels_new (id, agency_id, kind, wechat_app_id, secret_sealed, template_id, fields, page,
                          message_token_sealed, encoding_aes_key_sealed, enabled, created_at, updated_at)
    SELECT id, agency_id, kind, wechat_app_id, secret_sealed, template_id, fields, page,
           message_token_sealed, encoding_aes_key_sealed, enabled, created_at, updated_at
    FROM channels;
DROP TABLE channels;
ALTER TABLE channels_new RENAME TO channels;
CREATE INDEX channels_wechat_app_idx ON channels (wechat_app_id);
CREATE UNIQUE INDEX channels_platform_key ON channels (kind) WHERE agency_id IS NULL;

CREATE TABLE payers (
    id                 BLOB    PRIMARY KEY CHECK (length(id) = 16),
    unionid_index      TEXT,
    profile_sealed     TEXT,
    id_index           TEXT,
    name_index         TEXT,
    phone_index        TEXT,
    phone_verified     INTEGER NOT NULL DEFAULT 0 CHECK (phone_verified IN (0, 1)),
    consent_version    TEXT,
    consent_at         TEXT,
    reminders          INTEGER NOT NULL DEFAULT 1 CHECK (reminders IN (0, 1)),
    registered_at      TEXT,
    created_at         TEXT    NOT NULL,
    updated_at         TEXT    NOT NULL,
    CONSTRAINT payers_registered_whole CHECK (
        (registered_at IS NULL) = (profile_sealed IS NULL)
        AND (registered_at IS NULL) = (id_index IS NULL)
        AND (registered_at IS NULL) = (name_index IS NULL)
    )
) STRICT;
CREATE UNIQUE INDEX payers_unionid_key ON payers (unionid_index) WHERE unionid_index IS NOT NULL;
CREATE INDEX payers_id_idx ON payers (id_index, name_index) WHERE id_index IS NOT NULL;
CREATE INDEX payers_phone_idx ON payers (phone_index, name_index) WHERE phone_verified = 1;

CREATE TABLE payer_identities (
    app_id         TEXT    NOT NULL,
    openid         TEXT    NOT NULL,
    payer_id       BLOB    NOT NULL REFERENCES payers (id) ON DELETE CASCADE,
    created_at     TEXT    NOT NULL,
    last_login_at  TEXT    NOT NULL,
    PRIMARY KEY (app_id, openid)
) STRICT;
CREATE INDEX payer_identities_payer_idx ON payer_identities (payer_id, app_id);

CREATE TABLE refresh_tokens (
    id          BLOB    PRIMARY KEY CHECK (length(id) = 16),
    family_id   BLOB    NOT NULL,
    payer_id    BLOB    NOT NULL REFERENCES payers (id) ON DELETE CASCADE,
    app_id      TEXT    NOT NULL,
    token_hash  TEXT    NOT NULL,
    created_at  TEXT    NOT NULL,
    expires_at  TEXT    NOT NULL,
    used_at     TEXT,
    revoked_at  TEXT,
    CONSTRAINT refresh_tokens_hash_key UNIQUE (token_hash)
) STRICT;
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_payer_idx ON refresh_tokens (payer_id);

CREATE TABLE wallet_entries (
    payer_id     BLOB    NOT NULL REFERENCES payers (id) ON DELETE CASCADE,
    receipt_id   BLOB    NOT NULL REFERENCES receipts (id),
    agency_id    BLOB    NOT NULL,
    issued_at    TEXT    NOT NULL,
    source       TEXT    NOT NULL CHECK (source IN ('collected', 'possession')),
    tags         TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(tags) AND json_type(tags) = 'array'),
    note_sealed  TEXT,
    added_at     TEXT    NOT NULL,
    removed_at   TEXT,
    PRIMARY KEY (payer_id, receipt_id)
) STRICT;
CREATE INDEX wallet_entries_page_idx ON wallet_entries (payer_id, issued_at DESC, receipt_id DESC)
    WHERE removed_at IS NULL;
CREATE INDEX wallet_entries_receipt_idx ON wallet_entries (receipt_id);

CREATE TABLE subscription_credits (
    payer_id     BLOB    NOT NULL REFERENCES payers (id) ON DELETE CASCADE,
    app_id       TEXT    NOT NULL,
    template_id  TEXT    NOT NULL,
    remaining    INTEGER NOT NULL DEFAULT 0 CHECK (remaining >= 0),
    long_term    INTEGER NOT NULL DEFAULT 0 CHECK (long_term IN (0, 1)),
    updated_at   TEXT    NOT NULL,
    PRIMARY KEY (payer_id, app_id, template_id)
) STRICT;

CREATE TABLE payer_audit (
    id        BLOB    PRIMARY KEY CHECK (length(id) = 16),
    payer_id  BLOB    NOT NULL,
    event     TEXT    NOT NULL,
    at        TEXT    NOT NULL,
    detail    TEXT    CHECK (detail IS NULL OR json_valid(detail))
) STRICT;
CREATE INDEX payer_audit_payer_idx ON payer_audit (payer_id, at);
