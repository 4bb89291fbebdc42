//! Signing in to the pages: WeChat's web OAuth (`snsapi_base`, silent inside
//! WeChat) gives the payer's openid; we keep a session in the store and give the
//! browser a random token in an `HttpOnly; Secure; SameSite=Lax` cookie scoped to
//! the account's pages (`Path=/h5/{appId}`). Only the token's keyed hash is stored.
//!
//! The OAuth `state` is random and bound to the browser that started the sign-in
//! (a short-lived cookie of its own), so nobody can sign a victim in as someone
//! else by sending them a callback link. Forms carry a CSRF token derived from the
//! session token.

use std::time::Instant;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use piaojia_core::pii::{self, purpose};
use piaojia_core::settings::WechatMode;
use piaojia_notifier::tracker::Scope;
use piaojia_store::Timestamp;
use piaojia_store::pages::NewWebSession;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{OfficialAccount, PageError, account_path};
use crate::state::AppState;

const SESSION_COOKIE: &str = "pj_h5";
const STATE_COOKIE: &str = "pj_h5_oauth";

/// A payer signed in to one official account's pages.
#[derive(Debug, Clone)]
pub struct PageSession {
    pub payer_id: Uuid,
    pub openid: String,
    /// The token forms must echo (see [`PageSession::check_csrf`]).
    pub csrf: String,
}

impl PageSession {
    /// True when a form's token is this session's.
    pub fn check_csrf(&self, given: &str) -> bool {
        !given.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(given.as_bytes()))
    }
}

/// The value of cookie `name`, if the request carries it.
fn cookie(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie(resp: &mut HttpResponse, name: &str, value: &str, path: &str, max_age: Option<u64>) {
    let age = max_age.map(|s| format!("; Max-Age={s}")).unwrap_or_default();
    let c = format!("{name}={value}; Path={path}; HttpOnly; Secure; SameSite=Lax{age}");
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn csrf_of(state: &AppState, token: &str) -> String {
    state.keyring.keyed_hash(purpose::hash::WEB_CSRF, token.as_bytes())
}

/// The signed-in payer of this account's pages, if any.
pub async fn current(
    req: &HttpRequest,
    state: &AppState,
    oa: &OfficialAccount,
) -> Result<Option<PageSession>, PageError> {
    let Some(token) = cookie(req, SESSION_COOKIE).filter(|t| !t.is_empty() && t.len() <= 128) else {
        return Ok(None);
    };
    let hash = state.keyring.keyed_hash(purpose::hash::WEB_SESSION, token.as_bytes());
    let session = state.store.web_session(&hash, Timestamp::now()).await?;
    Ok(session.filter(|s| s.wechat_app_id == oa.appid).map(|s| PageSession {
        payer_id: s.payer_id,
        openid: s.openid,
        csrf: csrf_of(state, &token),
    }))
}

/// Where WeChat's authorize page is: WeChat's own in live mode, the simulator's
/// (on this port) in sandbox mode.
fn authorize_base(state: &AppState) -> String {
    match state.settings.wechat.mode {
        WechatMode::Live => "https://open.weixin.qq.com/connect/oauth2/authorize".to_owned(),
        WechatMode::Sandbox => format!("{}/sandbox/wechat/connect/oauth2/authorize", state.base_url),
    }
}

/// `next` is one of this account's pages (never another site, never a sign-in loop).
fn safe_next(oa: &OfficialAccount, next: &str) -> String {
    let home = account_path(&oa.appid, "/receipts");
    let own = account_path(&oa.appid, "/");
    if next.starts_with(&own) && !next.starts_with(&account_path(&oa.appid, "/oauth")) && !next.contains("//") {
        next.to_owned()
    } else {
        home
    }
}

/// Sends the browser to WeChat's authorize page; it comes back to
/// [`callback`] with a code, then goes on to `next`.
pub fn sign_in(state: &AppState, oa: &OfficialAccount, next: &str) -> HttpResponse {
    let nonce = pii::random_alnum(32);
    let next = safe_next(oa, next);
    let redirect_uri = format!("{}{}", state.base_url, account_path(&oa.appid, "/oauth"));
    let mut url = match url::Url::parse(&authorize_base(state)) {
        Ok(u) => u,
        Err(_) => return PageError::unavailable().page(),
    };
    url.query_pairs_mut()
        .append_pair("appid", &oa.appid)
        .append_pair("redirect_uri", &redirect_uri)
        .append_pair("response_type", "code")
        .append_pair("scope", "snsapi_base")
        .append_pair("state", &nonce);
    url.set_fragment(Some("wechat_redirect"));
    let mut resp = HttpResponse::Found()
        .insert_header((header::LOCATION, url.as_str()))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish();
    let value = format!("{nonce}.{}", B64URL.encode(next.as_bytes()));
    set_cookie(
        &mut resp,
        STATE_COOKIE,
        &value,
        &account_path(&oa.appid, ""),
        Some(state.settings.pages.oauth_state_ttl.as_secs()),
    );
    resp
}

/// WeChat's redirect back: the code is exchanged for the openid
/// (`sns/oauth2/access_token`), the payer found or created, the session begun.
pub async fn callback(
    req: &HttpRequest,
    state: &AppState,
    oa: &OfficialAccount,
    code: &str,
    given_state: &str,
) -> Result<HttpResponse, PageError> {
    let started = cookie(req, STATE_COOKIE).unwrap_or_default();
    let (nonce, next) = started.split_once('.').unwrap_or_default();
    if nonce.is_empty() || given_state.is_empty() || !bool::from(nonce.as_bytes().ct_eq(given_state.as_bytes())) {
        return Err(PageError::sign_in_expired());
    }
    let next = B64URL
        .decode(next)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default();
    if code.is_empty() || code.len() > 128 {
        // The payer refused, or the link was tampered with.
        return Err(PageError::sign_in_failed());
    }
    let t0 = Instant::now();
    let result = state.wechat.oauth2_access_token(&oa.credentials, code).await;
    state.tracker.record(
        Scope::Interface,
        &format!("wechat:{}:oauth2_access_token", oa.appid),
        result.is_ok(),
        t0.elapsed().as_millis() as u64,
    );
    let web = result.map_err(|e| {
        tracing::info!(appid = %oa.appid, error = %e, "web OAuth code exchange failed");
        PageError::sign_in_failed()
    })?;
    // With a unionid (the account bound to an open-platform account), the payer
    // of this openid and the one of a mini-program sign-in become one wallet.
    let unionid = web
        .unionid
        .as_deref()
        .map(|u| state.keyring.blind_index(purpose::index::UNIONID, u));
    let openid = web.openid;
    let payer = state
        .store
        .login_payer(&oa.appid, &openid, unionid.as_deref())
        .await?
        .payer;
    let token = B64URL.encode(pii::random_bytes::<32>());
    let ttl = state.settings.pages.session_ttl;
    state
        .store
        .create_web_session(NewWebSession {
            token_hash: state.keyring.keyed_hash(purpose::hash::WEB_SESSION, token.as_bytes()),
            payer_id: payer.id,
            wechat_app_id: oa.appid.clone(),
            openid,
            expires_at: Timestamp::now() + chrono::TimeDelta::seconds(ttl.as_secs() as i64),
        })
        .await?;
    let mut resp = HttpResponse::SeeOther()
        .insert_header((header::LOCATION, safe_next(oa, &next)))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish();
    let path = account_path(&oa.appid, "");
    set_cookie(&mut resp, SESSION_COOKIE, &token, &path, Some(ttl.as_secs()));
    set_cookie(&mut resp, STATE_COOKIE, "", &path, Some(0));
    Ok(resp)
}
