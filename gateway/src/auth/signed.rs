//! Signed app callers (issuers and reimbursers): PJ1-HMAC-SHA256 over the
//! method, raw request target, timestamp, nonce and body hash (DOMAIN.md §3).
//!
//! The extractor reads the body to hash it and hands those same bytes to the
//! handler, so what is parsed is exactly what was signed.
//!
//! Order, so a stranger can neither make us buffer a large body nor learn which app
//! ids exist: the header is parsed (nonce format included) and the timestamp window
//! checked first; a body is buffered only for a known, enabled app of the right
//! kind. For any other app id the body is hashed as it streams past and dropped,
//! and the signature checked against a dummy secret when the app is unknown: an
//! unknown app id and a wrong signature get the same answer, after the same work.
//! Only a caller who proves the secret learns that its app is disabled.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use piaojia_core::signing;
use piaojia_store::{Agency, AppKind};
use ring::digest;
use secrecy::{ExposeSecret, SecretString};

use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// An authenticated app of some kind.
#[derive(Debug, Clone)]
pub struct SignedApp {
    pub app_id: String,
    pub kind: AppKind,
    pub agency: Agency,
    pub callback_url: Option<String>,
}

/// Marks the request for per-app metrics once its caller is known.
#[derive(Debug, Clone)]
pub struct CallerAppId(pub String);

/// A hospital's receipt system, authenticated by signature, with the body the
/// signature covers (read once, here).
#[derive(Debug, Clone)]
pub struct Issuer {
    pub app: SignedApp,
    pub body: Bytes,
}

impl std::ops::Deref for Issuer {
    type Target = SignedApp;
    fn deref(&self) -> &SignedApp {
        &self.app
    }
}

impl FromRequest for Issuer {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = payload.take();
        Box::pin(async move {
            let (app, body) = authenticate(&req, payload, AppKind::Issuer).await?;
            Ok(Issuer { app, body })
        })
    }
}

/// A reimburser (medical insurance, insurer, employer), authenticated by
/// signature exactly like an issuer, with its registered profile.
#[derive(Debug, Clone)]
pub struct Reimburser {
    pub app: SignedApp,
    pub profile: piaojia_store::Reimburser,
    /// The ids of the agencies whose receipts it accepts.
    pub accepted_agency_ids: Vec<uuid::Uuid>,
    pub body: Bytes,
}

impl FromRequest for Reimburser {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let payload = payload.take();
        Box::pin(async move {
            let (app, body) = authenticate(&req, payload, AppKind::Reimburser).await?;
            let state = req
                .app_data::<web::Data<AppState>>()
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("AppState missing")))?;
            let found = state.apps.reimburser(&app.app_id).await?.ok_or_else(|| {
                ApiError::with(
                    ErrorCode::ReimburserNotRegistered,
                    "this app has no reimburser profile; ask the operator to register it",
                )
            })?;
            Ok(Reimburser {
                app,
                profile: found.profile.clone(),
                accepted_agency_ids: found.accepted_agency_ids.clone(),
                body,
            })
        })
    }
}

/// Reads the whole body up to the configured limit.
pub async fn read_body(limit: usize, mut payload: Payload) -> Result<Bytes, ApiError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(crate::error::handlers::payload)?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Hashes the body as it streams in, keeping none of it.
async fn hash_body(limit: usize, mut payload: Payload) -> Result<String, ApiError> {
    let mut hash = digest::Context::new(&digest::SHA256);
    let mut seen = 0usize;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(crate::error::handlers::payload)?;
        seen += chunk.len();
        if seen > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        hash.update(&chunk);
    }
    Ok(hex::encode(hash.finish()))
}

/// What an unknown app id is checked against, so it costs what a known one does.
fn dummy_secret() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(piaojia_core::pii::generate_secret)
}

/// The one answer to a wrong signature and to an unknown app id alike.
fn bad_signature() -> ApiError {
    ApiError::with(
        ErrorCode::AuthBadSignature,
        "the signature does not match the appId's secret",
    )
}

async fn authenticate(req: &HttpRequest, payload: Payload, kind: AppKind) -> Result<(SignedApp, Bytes), ApiError> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("AppState missing")))?
        .clone();

    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::with(ErrorCode::AuthMissing, "the Authorization header is missing"))?
        .to_str()
        .map_err(|_| ApiError::with(ErrorCode::AuthMalformed, "the Authorization header is not ASCII"))?;
    let params = signing::parse_authorization(header).map_err(|e| match e {
        signing::HeaderError::WrongScheme => ApiError::with(ErrorCode::AuthWrongScheme, e.to_string()),
        signing::HeaderError::Malformed(_) => ApiError::with(ErrorCode::AuthMalformed, e.to_string()),
    })?;

    let now = chrono::Utc::now().timestamp();
    let skew = state.settings.security.clock_skew.as_secs() as i64;
    if (now - params.timestamp).abs() > skew {
        return Err(ApiError::with(
            ErrorCode::AuthStaleTimestamp,
            format!("the timestamp is more than {skew} s away from the server clock ({now})"),
        ));
    }

    let limit = state.settings.server.body_limit_bytes;
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path(), |pq| pq.as_str());
    let method = req.method().as_str();
    let app = state.apps.get(&params.app_id).await?;
    let app = match app {
        Some(app) if app.kind == kind && app.enabled => app,
        other => {
            // Unknown, disabled or of another kind: nothing is buffered, and nothing
            // is said that the secret does not prove.
            let body_hash = hash_body(limit, payload).await?;
            let Some(app) = other else {
                let _ = signing::verify_body_hash(dummy_secret(), &params, method, target, &body_hash);
                return Err(bad_signature());
            };
            let valid = app.secrets.iter().any(|secret: &SecretString| {
                signing::verify_body_hash(secret.expose_secret(), &params, method, target, &body_hash)
            });
            if !valid {
                return Err(bad_signature());
            }
            return Err(if app.kind == kind {
                ApiError::with(ErrorCode::AppDisabled, "this app is disabled")
            } else {
                ApiError::with(
                    ErrorCode::AppWrongKind,
                    format!("this API is for {} apps", kind.as_str()),
                )
            });
        }
    };

    let body = read_body(limit, payload).await?;
    let valid = app
        .secrets
        .iter()
        .any(|secret: &SecretString| signing::verify(secret.expose_secret(), &params, method, target, &body));
    if !valid {
        return Err(bad_signature());
    }

    // Only after the signature holds, so nobody can burn another app's nonces.
    let fresh = state
        .nonces
        .first_use(&params.app_id, &params.nonce)
        .await
        .map_err(|e| ApiError::unavailable(ErrorCode::NonceStoreUnavailable, e))?;
    if !fresh {
        return Err(ApiError::with(
            ErrorCode::AuthReplayedNonce,
            "this nonce was already used",
        ));
    }

    req.extensions_mut().insert(CallerAppId(app.app_id.clone()));
    Ok((
        SignedApp {
            app_id: app.app_id.clone(),
            kind: app.kind,
            agency: app.agency.clone(),
            callback_url: app.callback_url.clone(),
        },
        body,
    ))
}
