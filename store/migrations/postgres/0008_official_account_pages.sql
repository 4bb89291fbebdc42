-- The official account's pages (H5) and WeChat's own channel: sessions of payers
-- signed in through web OAuth (snsapi_base), and the scenes of temporary
-- parametric QR codes that deliver one receipt to whoever scans them first.
-- Mirrored by SQLite (0009).

-- A payer signed in to an official account's pages. The cookie holds a random
-- token; only its keyed hash is stored. Expired rows are swept at sign-in.
CREATE TABLE web_sessions (
    token_hash     text        PRIMARY KEY,
    payer_id       uuid        NOT NULL REFERENCES payers (id) ON DELETE CASCADE,
    wechat_app_id  text        NOT NULL,
    openid         text        NOT NULL,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL
);
CREATE INDEX web_sessions_expiry_idx ON web_sessions (expires_at);
CREATE INDEX web_sessions_payer_idx ON web_sessions (payer_id);

-- The scene of a temporary QR code for one receipt (`qrcode/create`,
-- QR_STR_SCENE). The scene value is random; only its keyed hash is stored. The
-- first openid to scan it takes the receipt; anyone else is refused.
CREATE TABLE receipt_scenes (
    scene_hash     text        PRIMARY KEY,
    receipt_id     uuid        NOT NULL REFERENCES receipts (id),
    agency_id      uuid        NOT NULL,
    wechat_app_id  text        NOT NULL,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    scanned_by     text,
    scanned_at     timestamptz
);
CREATE INDEX receipt_scenes_receipt_idx ON receipt_scenes (receipt_id);
