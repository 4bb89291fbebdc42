//! Simulated official-account users: following (plain or through a parametric QR code),
//! scanning, clicking menu buttons, unfollowing. Each pushes the event WeChat pushes.

use serde_json::Value;

use crate::push::{self, PushJob};
use crate::record::PushedEvent;
use crate::state::{State, delta};
use crate::{SimError, Simulator, ids};

/// Whether the app's menu has a key-carrying button with `key`.
fn menu_has_key(menu: &Value, key: &str) -> bool {
    let buttons = menu
        .get("button")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    buttons.iter().any(|b| {
        b.get("key").and_then(Value::as_str) == Some(key)
            || b.get("sub_button")
                .and_then(Value::as_array)
                .is_some_and(|subs| subs.iter().any(|s| s.get("key").and_then(Value::as_str) == Some(key)))
    })
}

/// A push to `appid`'s message server about `openid`.
fn job(st: &State, appid: &str, openid: &str, event: &str, xml: String) -> Result<PushJob, SimError> {
    let app = st
        .apps
        .get(appid)
        .ok_or_else(|| SimError::UnknownApp(appid.to_owned()))?;
    let server = app
        .message_server
        .as_ref()
        .ok_or_else(|| SimError::NoMessageServer(appid.to_owned()))?;
    Ok(PushJob::new(app, server, Some(openid), event, xml, None))
}

fn check_openid(openid: &str) -> Result<(), SimError> {
    if ids::is_openid(openid) {
        Ok(())
    } else {
        Err(SimError::InvalidOpenid)
    }
}

fn user_app(st: &State, appid: &str) -> Result<String, SimError> {
    let app = st
        .apps
        .get(appid)
        .ok_or_else(|| SimError::UnknownApp(appid.to_owned()))?;
    Ok(app.original_id.clone())
}

impl Simulator {
    /// Whether the user follows the account (everyone does unless they unfollowed).
    pub fn is_following(&self, appid: &str, openid: &str) -> bool {
        self.with_state(|st| st.is_following(appid, openid))
    }

    /// The user follows the account (search, profile card…): `subscribe` without a scene.
    /// A user the simulator never saw follow counts as a new follower.
    pub async fn follow(&self, appid: &str, openid: &str) -> Result<PushedEvent, SimError> {
        check_openid(openid)?;
        let job = self.with_state(|st| {
            let key = (appid.to_owned(), openid.to_owned());
            let to = user_app(st, appid)?;
            if st.followed.contains(&key) && st.is_following(appid, openid) {
                return Err(SimError::AlreadyFollowing);
            }
            let xml = push::user_event_xml(&to, openid, st.now().timestamp(), "subscribe", None);
            let job = job(st, appid, openid, "subscribe", xml)?;
            st.people.person(appid, openid);
            st.unfollowed.remove(&key);
            st.followed.insert(key);
            Ok(job)
        })?;
        Ok(self.deliver(job).await)
    }

    /// The user scans a parametric QR code (`qrcode/create` ticket, expiry honoured):
    /// `subscribe` with `qrscene_<scene>` unless they already follow through the simulator,
    /// then `SCAN` with `<scene>`. Both carry the `Ticket`.
    pub async fn scan(&self, ticket: &str, openid: &str) -> Result<PushedEvent, SimError> {
        check_openid(openid)?;
        let appid = self.with_state(|st| {
            let qr = st
                .qrcodes
                .iter()
                .find(|q| q.ticket == ticket)
                .ok_or(SimError::UnknownTicket)?;
            if qr
                .expire_seconds
                .is_some_and(|e| qr.at + delta(std::time::Duration::from_secs(e)) <= st.now())
            {
                return Err(SimError::QrCodeExpired);
            }
            Ok(qr.appid.clone())
        })?;
        let key = (appid.clone(), openid.to_owned());
        let follower = self.with_state(|st| {
            st.people.person(&appid, openid);
            st.followed.contains(&key) && st.is_following(&appid, openid)
        });
        let event = self.scan_qrcode(ticket, openid, !follower).await?;
        self.with_state(|st| st.followed.insert(key));
        Ok(event)
    }

    /// The user clicks a `click` (or other key-carrying) button of the app's menu.
    pub async fn click_menu(&self, appid: &str, openid: &str, key: &str) -> Result<PushedEvent, SimError> {
        check_openid(openid)?;
        let job = self.with_state(|st| {
            let to = user_app(st, appid)?;
            if !st.is_following(appid, openid) {
                return Err(SimError::NotFollowing);
            }
            if !st.menus.get(appid).is_some_and(|m| menu_has_key(m, key)) {
                return Err(SimError::UnknownMenuKey(key.to_owned()));
            }
            let xml = push::user_event_xml(&to, openid, st.now().timestamp(), "CLICK", Some(key));
            st.people.person(appid, openid);
            job(st, appid, openid, "CLICK", xml)
        })?;
        Ok(self.deliver(job).await)
    }

    /// The user unfollows: `unsubscribe`; template sends to them then get 43004.
    pub async fn unfollow(&self, appid: &str, openid: &str) -> Result<PushedEvent, SimError> {
        check_openid(openid)?;
        let job = self.with_state(|st| {
            let to = user_app(st, appid)?;
            if !st.is_following(appid, openid) {
                return Err(SimError::NotFollowing);
            }
            let xml = push::user_event_xml(&to, openid, st.now().timestamp(), "unsubscribe", None);
            let job = job(st, appid, openid, "unsubscribe", xml)?;
            let key = (appid.to_owned(), openid.to_owned());
            st.followed.remove(&key);
            st.unfollowed.insert(key);
            Ok(job)
        })?;
        Ok(self.deliver(job).await)
    }

    /// The menu the app last created (`{"button": [...]}`).
    pub fn menu(&self, appid: &str) -> Option<Value> {
        self.with_state(|st| st.menus.get(appid).cloned())
    }
}
