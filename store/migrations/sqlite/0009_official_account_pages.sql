-- The official account's pages (H5) and WeChat's own channel: web OAuth sessions
-- and the scenes of temporary parametric QR codes. Mirrors PostgreSQL's 0008.

CREATE TABLE web_sessions (
    token_hash     TEXT    PRIMARY KEY,
    payer_id       BLOB    NOT NULL REFERENCES payers (id) ON DELETE CASCADE,
    wechat_app_id  TEXT    NOT NULL,
    openid         TEXT    NOT NULL,
    created_at     TEXT    NOT NULL,
    expires_at     TEXT    NOT NULL
) STRICT;
CREATE INDEX web_sessions_expiry_idx ON web_sessions (expires_at);
CREATE INDEX web_sessions_payer_idx ON web_sessions (payer_id);

CREATE TABLE receipt_scenes (
    scene_hash     TEXT    PRIMARY KEY,
    receipt_id     BLOB    NOT NULL REFERENCES receipts (id),
    agency_id      BLOB    NOT NULL,
    wechat_app_id  TEXT    NOT NULL,
    created_at     TEXT    NOT NULL,
    expires_at     TEXT    NOT NULL,
    scanned_by     TEXT,
    scanned_at     TEXT
) STRICT;
CREATE INDEX receipt_scenes_receipt_idx ON receipt_scenes (receipt_id);
