//! `POST /cgi-bin/stable_token` and the classic `GET /cgi-bin/token`.

use serde_json::{Value, json};

use super::{Call, Reply, WxErr, app, field};
use crate::state::{State, TokenSource, TokenState, delta};

fn quota_exceeded() -> WxErr {
    WxErr::new(45009, "reach max api daily quota limit")
}

fn token_reply(token: String, expires_in: i64) -> Reply {
    Reply::json(json!({ "access_token": token, "expires_in": expires_in }))
}

/// Normal mode reuses the current token (new one within the refresh window or after expiry);
/// force_refresh invalidates the current ones at once and is limited per day.
pub(super) fn stable_token(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let body = call.object()?;
    if field(body, "grant_type") != Some("client_credential") {
        return Err(WxErr::new(40002, "invalid grant_type"));
    }
    let appid = field(body, "appid").ok_or_else(|| WxErr::new(41002, "appid missing"))?;
    let secret = field(body, "secret").ok_or_else(|| WxErr::new(41004, "appsecret missing"))?;
    if app(st, appid)?.secret != secret {
        return Err(WxErr::new(40125, "invalid appsecret"));
    }
    let lifetime = i64::try_from(st.cfg.token_lifetime.as_secs()).unwrap_or(i64::MAX);
    if body.get("force_refresh").and_then(Value::as_bool).unwrap_or(false) {
        if st.count_daily(appid, "force_refresh") > st.cfg.force_refresh_per_day {
            return Err(quota_exceeded());
        }
        let now = st.now();
        st.invalidate(appid, Some(TokenSource::Stable), now);
        return Ok(token_reply(st.mint_token(appid, TokenSource::Stable), lifetime));
    }
    let window = delta(st.cfg.stable_refresh_window);
    if let Some(current) = st.current_stable.get(appid)
        && let TokenState::Valid(t) = st.token_state(current)
    {
        let left = t.expires_at - st.now();
        if left > window {
            return Ok(token_reply(current.clone(), left.num_seconds()));
        }
    }
    Ok(token_reply(st.mint_token(appid, TokenSource::Stable), lifetime))
}

/// Every call mints a new token; the previous classic one dies after `classic_grace`.
/// Stable tokens are unaffected, as at WeChat.
pub(super) fn classic_token(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    if call.q("grant_type") != Some("client_credential") {
        return Err(WxErr::new(40002, "invalid grant_type"));
    }
    let appid = call.q("appid").ok_or_else(|| WxErr::new(41002, "appid missing"))?;
    let secret = call.q("secret").ok_or_else(|| WxErr::new(41004, "appsecret missing"))?;
    if app(st, appid)?.secret != secret {
        return Err(WxErr::new(
            40001,
            "invalid credential, access_token is invalid or not latest",
        ));
    }
    if st.count_daily(appid, "classic_token") > st.cfg.classic_token_per_day {
        return Err(quota_exceeded());
    }
    let grace_end = st.now() + delta(st.cfg.classic_grace);
    st.invalidate(appid, Some(TokenSource::Classic), grace_end);
    let lifetime = i64::try_from(st.cfg.token_lifetime.as_secs()).unwrap_or(i64::MAX);
    Ok(token_reply(st.mint_token(appid, TokenSource::Classic), lifetime))
}
