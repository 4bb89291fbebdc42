//! Scan to view (WeChat's own channel): an issuer asks for a temporary
//! parametric QR code for one receipt (`qrcode/create`, `QR_STR_SCENE`) to show
//! on a kiosk or window screen; the payer scans it with WeChat, which pushes
//! `subscribe` (`qrscene_<scene>`, a new follower) or `SCAN` (`<scene>`) to our
//! message server, and [`deliver_scanned_receipt`] hands the receipt to that
//! openid: collected into their wallet and announced by a template message
//! whose link opens the receipt's page.
//!
//! Scene values are 40 random characters (never derived from the receipt) and
//! only their keyed hash is stored; a scene expires with its QR code and the
//! first openid to scan it takes it. A forged, expired or someone else's scene
//! delivers nothing and reveals nothing.

use std::io::Cursor;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use piaojia_core::pii::{self, purpose};
use piaojia_notifier::routing;
use piaojia_notifier::tracker::Scope;
use piaojia_store::pages::{NewScene, Scan, ScanOutcome};
use piaojia_store::{ChannelKind, DeliveryEvent, StoredReceipt, Timestamp};
use piaojia_wechat::client::AppCredentials;
use secrecy::SecretString;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// Scene values we make start with this (WeChat allows 1-64 characters).
pub const SCENE_PREFIX: &str = "pj";
const SCENE_RANDOM_CHARS: usize = 40;

/// A temporary QR code for one receipt.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceiptQrView {
    /// WeChat's ticket (`showqrcode?ticket=` shows WeChat's own image of it).
    pub ticket: String,
    /// What the QR code encodes (WeChat's URL).
    #[schema(example = "http://weixin.qq.com/q/02abcdef")]
    pub url: String,
    /// The QR code as a PNG, base64 (a `data:image/png;base64,` URI without the prefix).
    pub image_png_base64: String,
    pub expire_seconds: u32,
    pub expires_at: DateTime<Utc>,
    /// The official account that will announce the receipt to the scanner.
    pub wechat_app_id: String,
}

/// The agency's enabled official account, with its credentials.
async fn agency_account(state: &AppState, agency_id: Uuid) -> Result<Option<(String, AppCredentials)>, ApiError> {
    let channels = state.apps.channels(agency_id).await?;
    let Some(channel) = channels
        .iter()
        .find(|c| c.kind == ChannelKind::WechatTemplate && c.enabled)
    else {
        return Ok(None);
    };
    let secret = state
        .keyring
        .open(&channel.secret_sealed, &purpose::wechat_app(&channel.wechat_app_id))
        .map_err(|e| ApiError::internal(anyhow::anyhow!("opening the channel secret: {e}")))?;
    Ok(Some((
        channel.wechat_app_id.clone(),
        AppCredentials {
            appid: channel.wechat_app_id.clone(),
            secret: SecretString::from(String::from_utf8_lossy(&secret).into_owned()),
        },
    )))
}

/// The QR code of `content` as a PNG (black on white, 8 px a module, quiet zone).
pub fn qr_png(content: &str) -> Result<Vec<u8>, ApiError> {
    let code = qrcode::QrCode::new(content.as_bytes()).map_err(|e| ApiError::internal(anyhow::anyhow!("QR: {e}")))?;
    let modules = code.width();
    let scale = 8usize;
    let quiet = 4usize;
    let side = (modules + 2 * quiet) * scale;
    let colors = code.to_colors();
    let mut pixels = vec![255u8; side * side];
    for y in 0..modules {
        for x in 0..modules {
            if colors[y * modules + x] == qrcode::Color::Dark {
                for dy in 0..scale {
                    let row = (y + quiet) * scale + dy;
                    let start = row * side + (x + quiet) * scale;
                    pixels[start..start + scale].fill(0);
                }
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(Cursor::new(&mut out), side as u32, side as u32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder
            .write_header()
            .map_err(|e| ApiError::internal(anyhow::anyhow!("PNG: {e}")))?;
        writer
            .write_image_data(&pixels)
            .map_err(|e| ApiError::internal(anyhow::anyhow!("PNG: {e}")))?;
    }
    Ok(out)
}

/// Asks WeChat for a temporary QR code of one receipt through the agency's
/// official account and records its scene.
pub async fn create_receipt_qr(state: &AppState, receipt: &StoredReceipt) -> Result<ReceiptQrView, ApiError> {
    let Some((appid, credentials)) = agency_account(state, receipt.agency_id).await? else {
        return Err(ApiError::with(
            ErrorCode::NoOfficialAccount,
            "the agency has no enabled official account (channel wechat_template) to announce the receipt",
        ));
    };
    let ttl = state.settings.pages.qr_ttl.as_secs() as u32;
    let scene = format!("{SCENE_PREFIX}{}", pii::random_alnum(SCENE_RANDOM_CHARS));
    let t0 = Instant::now();
    let result = state.wechat.create_qrcode(&credentials, &scene, Some(ttl)).await;
    state.tracker.record(
        Scope::Interface,
        &format!("wechat:{appid}:qrcode_create"),
        result.is_ok(),
        t0.elapsed().as_millis() as u64,
    );
    let qr = result.map_err(|e| {
        tracing::warn!(appid = %appid, error = %e, "qrcode/create failed");
        ApiError::with(ErrorCode::WechatUnavailable, format!("WeChat refused the QR code: {e}"))
    })?;
    let expire_seconds = qr.expire_seconds.unwrap_or(ttl).min(ttl);
    let expires_at = Timestamp::now() + chrono::TimeDelta::seconds(i64::from(expire_seconds));
    state
        .store
        .insert_scene(NewScene {
            scene_hash: state.keyring.keyed_hash(purpose::hash::QR_SCENE, scene.as_bytes()),
            receipt_id: receipt.id,
            agency_id: receipt.agency_id,
            wechat_app_id: appid.clone(),
            expires_at,
        })
        .await?;
    let png = qr_png(&qr.url)?;
    Ok(ReceiptQrView {
        ticket: qr.ticket,
        url: qr.url,
        image_png_base64: B64.encode(png),
        expire_seconds,
        expires_at: expires_at.as_datetime(),
        wechat_app_id: appid,
    })
}

/// What a scan did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScannedReceipt {
    /// The receipt is in the scanner's wallet; `announced`: a template message is
    /// queued (first scan). `url` opens the receipt's page (for a passive reply).
    Delivered {
        receipt_id: Uuid,
        url: String,
        announced: bool,
    },
    /// Not one of our scenes (another feature's QR code): nothing to do.
    NotOurs,
    /// Ours, but forged, expired or taken by someone else: nothing delivered.
    Refused,
}

/// Delivers the receipt behind a scanned QR scene to the scanning openid: called
/// by the message server on `subscribe` with `qrscene_<scene>` and on `SCAN`
/// with `<scene>` (pass the scene without the `qrscene_` prefix; `Event::qr_scene`
/// gives it). Idempotent per openid: WeChat's retries and repeated scans by the
/// same payer announce once.
pub async fn deliver_scanned_receipt(
    state: &AppState,
    wechat_app_id: &str,
    openid: &str,
    scene: &str,
) -> Result<ScannedReceipt, ApiError> {
    let Some(random) = scene.strip_prefix(SCENE_PREFIX) else {
        return Ok(ScannedReceipt::NotOurs);
    };
    if random.len() != SCENE_RANDOM_CHARS || !random.bytes().all(|b| b.is_ascii_alphanumeric()) || openid.is_empty() {
        return Ok(ScannedReceipt::Refused);
    }
    let channels = state.store.channel_by_wechat_app(wechat_app_id).await?;
    let announce = channels
        .iter()
        .find(|c| c.kind == ChannelKind::WechatTemplate && c.enabled)
        .map(|c| routing::payer_delivery(DeliveryEvent::Issued, c, openid, &[ChannelKind::WechatTemplate]));
    let outcome = state
        .store
        .scan_scene(Scan {
            scene_hash: state.keyring.keyed_hash(purpose::hash::QR_SCENE, scene.as_bytes()),
            wechat_app_id: wechat_app_id.to_owned(),
            openid: openid.to_owned(),
            now: Timestamp::now(),
            announce,
        })
        .await?;
    match outcome {
        ScanOutcome::Delivered { receipt_id, first, .. } => {
            if first {
                state.wake.notify().await;
            }
            tracing::info!(appid = %wechat_app_id, receipt_id = %receipt_id, first, "scanned receipt delivered");
            Ok(ScannedReceipt::Delivered {
                receipt_id,
                url: super::receipt_url(&state.base_url, wechat_app_id, receipt_id),
                announced: first,
            })
        }
        ScanOutcome::Unknown | ScanOutcome::Expired | ScanOutcome::Taken => {
            tracing::info!(appid = %wechat_app_id, outcome = ?outcome, "scanned QR scene refused");
            Ok(ScannedReceipt::Refused)
        }
    }
}
