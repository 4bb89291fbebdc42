//! A faithful simulator of the WeChat server APIs piaojia calls (DOMAIN.md §4).
//!
//! Serves the real paths and wire formats: stable/classic access tokens, jscode2session,
//! subscribe and template messages (with TEMPLATESENDJOBFINISH pushed to the app's message
//! server, plain or secure mode), web OAuth (the authorize page too), parametric QR codes,
//! phone numbers, the city-service real-name check, custom menus, follower events
//! (subscribe, SCAN, CLICK, unsubscribe) with the message server's passive replies, and the
//! card package for fiscal receipts (tickets, templates, authorisation pages, PDFs, cards,
//! reimbursers). Faults (latency, errors, timeouts, quotas, outages) can be set at run time
//! through the Rust API or the `/sim/…` admin API, and every call is recorded for assertions.
//!
//! Mount it under a scope with [`Simulator::configure`], or serve it alone with [`Simulator::start`].

mod admin;
mod api;
mod card_package;
pub mod cards;
pub mod config;
pub mod faults;
mod ids;
mod pages;
mod push;
pub mod record;
mod reply;
pub mod secure;
mod state;
mod users;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpServer, web};
use chrono::{DateTime, Utc};

pub use cards::{BillCard, CardStatus, ChosenInvoice, InvoiceOrder, SimCard};
pub use config::{AppKind, MessageServer, SimApp, SimConfig};
pub use faults::{FaultScope, Faults, LatencyDist, OutageMode};
pub use ids::new_openid;
pub use record::{
    PassiveReply, PushAttempt, PushedEvent, QrCode, RecordedCall, ReplyArticle, SentSubscribeMessage,
    SentTemplateMessage, TemplateStatus,
};

use crate::api::Api;
use crate::push::PushJob;
use crate::state::{CodeKind, RealName, State, TokenSource, delta};

/// The WeChat paths the simulator serves, relative to where it is mounted.
pub mod paths {
    pub const STABLE_TOKEN: &str = "/cgi-bin/stable_token";
    pub const TOKEN: &str = "/cgi-bin/token";
    pub const JSCODE2SESSION: &str = "/sns/jscode2session";
    pub const SUBSCRIBE_SEND: &str = "/cgi-bin/message/subscribe/send";
    pub const TEMPLATE_SEND: &str = "/cgi-bin/message/template/send";
    pub const OAUTH_ACCESS_TOKEN: &str = "/sns/oauth2/access_token";
    pub const QRCODE_CREATE: &str = "/cgi-bin/qrcode/create";
    pub const PHONE_NUMBER: &str = "/wxa/business/getuserphonenumber";
    pub const CHECK_REAL_NAME: &str = "/intp/realname/checkrealnameinfo";
    pub const MENU_CREATE: &str = "/cgi-bin/menu/create";
    pub const MENU_GET: &str = "/cgi-bin/menu/get";
    pub const MENU_DELETE: &str = "/cgi-bin/menu/delete";
    pub const GET_TICKET: &str = "/cgi-bin/ticket/getticket";
    pub const INVOICE_SET_URL: &str = "/card/invoice/seturl";
    pub const CREATE_BILL_CARD: &str = "/nontax/createbillcard";
    pub const GET_BILL_AUTH_URL: &str = "/nontax/getbillauthurl";
    pub const GET_AUTH_DATA: &str = "/card/invoice/getauthdata";
    pub const SET_PDF: &str = "/card/invoice/platform/setpdf";
    pub const INSERT_BILL: &str = "/nontax/insertbill";
    pub const REJECT_INSERT: &str = "/card/invoice/rejectinsert";
    pub const PLATFORM_UPDATE_STATUS: &str = "/card/invoice/platform/updatestatus";
    pub const REIMBURSE_GET_INFO: &str = "/card/invoice/reimburse/getinvoiceinfo";
    pub const REIMBURSE_GET_BATCH: &str = "/card/invoice/reimburse/getinvoicebatch";
    pub const REIMBURSE_UPDATE_STATUS: &str = "/card/invoice/reimburse/updateinvoicestatus";
    pub const REIMBURSE_UPDATE_BATCH: &str = "/card/invoice/reimburse/updatestatusbatch";
    /// Browser pages (not API calls): web OAuth, the card-package authorisation page, receipt PDFs.
    pub const OAUTH_AUTHORIZE: &str = "/connect/oauth2/authorize";
    pub const INVOICE_AUTH_PAGE: &str = "/bizmall/authinvoice";
    pub const INVOICE_PDF: &str = "/card/invoice/pdf";
}

/// Errors of the simulator's own Rust API (not WeChat errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimError {
    UnknownApp(String),
    UnknownTicket,
    QrCodeExpired,
    NoMessageServer(String),
    /// Not a 28-character openid.
    InvalidOpenid,
    /// `follow` by a user who already followed through the simulator.
    AlreadyFollowing,
    /// Clicking or unfollowing needs a follower.
    NotFollowing,
    /// The app's menu has no button with this key.
    UnknownMenuKey(String),
    /// No such card-package authorisation link.
    UnknownAuthUrl,
    AuthUrlExpired,
    /// Another payer already agreed to this order.
    OrderTakenByOther,
    /// No such card in the user's package.
    UnknownCard,
    /// The card is closed, cancelled or locked by another reimburser.
    CardNotChoosable,
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownApp(a) => write!(f, "unknown appid {a}"),
            Self::UnknownTicket => f.write_str("unknown QR ticket"),
            Self::QrCodeExpired => f.write_str("QR code expired"),
            Self::NoMessageServer(a) => write!(f, "app {a} has no message server"),
            Self::InvalidOpenid => f.write_str("an openid is 28 characters [A-Za-z0-9_-]"),
            Self::AlreadyFollowing => f.write_str("the user already follows the account"),
            Self::NotFollowing => f.write_str("the user does not follow the account"),
            Self::UnknownMenuKey(k) => write!(f, "the menu has no button with key {k}"),
            Self::UnknownAuthUrl => f.write_str("unknown card-package authorisation link"),
            Self::AuthUrlExpired => f.write_str("the authorisation link expired"),
            Self::OrderTakenByOther => f.write_str("another user already agreed to this order"),
            Self::UnknownCard => f.write_str("no such card in the user's card package"),
            Self::CardNotChoosable => f.write_str("the card is closed, cancelled or locked by another account"),
        }
    }
}

impl std::error::Error for SimError {}

struct Inner {
    state: Mutex<State>,
    http: reqwest::Client,
}

/// The simulated WeChat server. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").finish_non_exhaustive()
    }
}

impl Simulator {
    pub fn new(config: SimConfig) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        // No pooling: pushes run on whichever actix worker runtime handled the call.
        let http = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .user_agent("Mozilla/4.0")
            .build()
            .expect("reqwest client with the ring provider installed");
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::new(config)),
                http,
            }),
        }
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut guard = self
            .inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// Mounts the WeChat endpoints and the `/sim/…` admin API.
    pub fn configure(&self, cfg: &mut web::ServiceConfig) {
        self.configure_wechat(cfg);
        self.configure_admin(cfg);
    }

    /// Mounts only the WeChat endpoints (and the pages browsers open: OAuth authorize,
    /// card-package authorisation, receipt PDFs).
    pub fn configure_wechat(&self, cfg: &mut web::ServiceConfig) {
        pages::configure_pages(self, cfg);
        for api in Api::ALL {
            let sim = self.clone();
            cfg.route(
                api.path(),
                web::route().to(move |req: HttpRequest, body: web::Bytes| {
                    let sim = sim.clone();
                    async move { sim.dispatch(api, req, body).await }
                }),
            );
        }
    }

    /// Mounts only the `/sim/…` admin API (and the sandbox pages under it).
    pub fn configure_admin(&self, cfg: &mut web::ServiceConfig) {
        admin::configure(self, cfg);
        pages::configure_admin_pages(self, cfg);
    }

    /// Serves the simulator alone on 127.0.0.1 at a free port. Needs a Tokio runtime.
    pub async fn start(&self) -> std::io::Result<(SocketAddr, ServerHandle)> {
        let sim = self.clone();
        let server = HttpServer::new(move || {
            let sim = sim.clone();
            App::new().configure(move |c| sim.configure(c))
        })
        .workers(2)
        .disable_signals()
        .shutdown_timeout(1)
        .bind(("127.0.0.1", 0))?;
        let addr = server
            .addrs()
            .first()
            .copied()
            .ok_or_else(|| std::io::Error::other("simulator bound no address"))?;
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Ok((addr, handle))
    }

    // ---- clock and apps ----

    /// The simulator's clock: wall time plus any [`advance_clock`](Self::advance_clock).
    pub fn now(&self) -> DateTime<Utc> {
        self.with_state(|st| st.now())
    }

    /// Moves the simulator's clock forward (token and code expiry, daily quotas).
    pub fn advance_clock(&self, by: Duration) {
        self.with_state(|st| st.clock_offset += delta(by));
    }

    pub fn add_app(&self, app: SimApp) {
        self.with_state(|st| st.apps.insert(app.appid.clone(), app));
    }

    pub fn app(&self, appid: &str) -> Option<SimApp> {
        self.with_state(|st| st.apps.get(appid).cloned())
    }

    /// Points an app's event pushes somewhere (or nowhere).
    pub fn set_message_server(&self, appid: &str, server: Option<MessageServer>) -> Result<(), SimError> {
        self.with_state(|st| match st.apps.get_mut(appid) {
            Some(app) => {
                app.message_server = server;
                Ok(())
            }
            None => Err(SimError::UnknownApp(appid.to_owned())),
        })
    }

    // ---- users ----

    /// Emulates wx.login: a single-use code for jscode2session.
    pub fn issue_login_code(&self, appid: &str, openid: &str, unionid: Option<&str>) -> String {
        self.with_state(|st| st.issue_code(CodeKind::Login, appid, openid, unionid, None))
    }

    /// Binds `appid` (an app of an open-platform account) so that `openid`'s
    /// sign-ins there, web OAuth included, report `unionid`.
    pub fn bind_unionid(&self, appid: &str, openid: &str, unionid: &str) {
        self.with_state(|st| {
            st.unionids
                .insert((appid.to_owned(), openid.to_owned()), unionid.to_owned())
        });
    }

    /// Emulates the OAuth redirect: a single-use code for /sns/oauth2/access_token.
    pub fn issue_oauth_code(&self, appid: &str, openid: &str) -> String {
        self.with_state(|st| st.issue_code(CodeKind::OAuth, appid, openid, None, None))
    }

    /// Emulates getPhoneNumber: a code for getuserphonenumber. `phone` is `13800138000` or `+852 91234567`.
    pub fn issue_phone_code(&self, appid: &str, phone: &str) -> String {
        self.with_state(|st| st.issue_code(CodeKind::Phone, appid, "", None, Some(phone)))
    }

    /// Emulates the city-service real-name authorisation a mini-program opens: a
    /// single-use code for checkrealnameinfo, bound to the app and the user.
    pub fn issue_real_name_code(&self, appid: &str, openid: &str) -> String {
        self.with_state(|st| st.issue_code(CodeKind::RealName, appid, openid, None, None))
    }

    /// The user's WeChat Pay real-name record (name and mainland ID number).
    pub fn set_real_name(&self, openid: &str, real_name: &str, cred_id: &str) {
        self.with_state(|st| {
            st.real_names.insert(
                openid.to_owned(),
                RealName {
                    name: real_name.to_owned(),
                    cred_id: cred_id.to_owned(),
                },
            )
        });
    }

    /// The user has no WeChat Pay real name (checks answer `V_OP_NA`).
    pub fn clear_real_name(&self, openid: &str) {
        self.with_state(|st| st.real_names.remove(openid));
    }

    /// Sets the app's web authorisation domains (empty: any `redirect_uri`).
    pub fn set_oauth_domains(&self, appid: &str, domains: &[&str]) -> Result<(), SimError> {
        self.with_state(|st| match st.apps.get_mut(appid) {
            Some(app) => {
                app.oauth_domains = domains.iter().map(|d| (*d).to_owned()).collect();
                Ok(())
            }
            None => Err(SimError::UnknownApp(appid.to_owned())),
        })
    }

    /// The session_key issued at the user's last jscode2session.
    pub fn session_key(&self, appid: &str, openid: &str) -> Option<String> {
        self.with_state(|st| st.session_keys.get(&(appid.to_owned(), openid.to_owned())).cloned())
    }

    /// Adds one-time subscription consents (wx.requestSubscribeMessage accepted `count` times).
    pub fn grant_subscription(&self, appid: &str, openid: &str, template_id: &str, count: u32) {
        self.with_state(|st| {
            let n = st
                .subscriptions
                .entry((appid.to_owned(), openid.to_owned(), template_id.to_owned()))
                .or_insert(0);
            *n = n.saturating_add(count);
        });
    }

    /// Withdraws a user's remaining one-time consents for a template.
    pub fn revoke_subscription(&self, appid: &str, openid: &str, template_id: &str) {
        self.with_state(|st| {
            st.subscriptions
                .remove(&(appid.to_owned(), openid.to_owned(), template_id.to_owned()))
        });
    }

    /// Makes a template long-term: sends to any user without consuming consents.
    pub fn grant_long_term(&self, appid: &str, template_id: &str) {
        self.with_state(|st| st.long_term.insert((appid.to_owned(), template_id.to_owned())));
    }

    pub fn subscription_quota(&self, appid: &str, openid: &str, template_id: &str) -> u32 {
        self.with_state(|st| {
            st.subscriptions
                .get(&(appid.to_owned(), openid.to_owned(), template_id.to_owned()))
                .copied()
                .unwrap_or(0)
        })
    }

    /// Whether a user follows the official account; template sends to non-followers get 43004.
    /// Everyone follows unless told otherwise.
    pub fn set_following(&self, appid: &str, openid: &str, following: bool) {
        self.with_state(|st| {
            let key = (appid.to_owned(), openid.to_owned());
            if following {
                st.unfollowed.remove(&key);
            } else {
                st.unfollowed.insert(key);
            }
        });
    }

    /// The Status of future TEMPLATESENDJOBFINISH events for this user.
    pub fn set_template_status(&self, appid: &str, openid: &str, status: TemplateStatus) {
        self.with_state(|st| st.template_status.insert((appid.to_owned(), openid.to_owned()), status));
    }

    // ---- tokens ----

    /// All current tokens answer 40001, as after another party's force_refresh.
    pub fn invalidate_tokens(&self, appid: &str) {
        self.with_state(|st| {
            let now = st.now();
            st.invalidate(appid, None, now);
        });
    }

    /// All current tokens answer 42001.
    pub fn expire_tokens(&self, appid: &str) {
        self.with_state(|st| st.expire(appid));
    }

    /// `getticket` tickets minted for the app, ever.
    pub fn ticket_issues(&self, appid: &str) -> u64 {
        self.with_state(|st| st.ticket_issues.get(appid).copied().unwrap_or(0))
    }

    /// Tokens minted for the app (stable and classic), ever.
    pub fn token_issues(&self, appid: &str) -> u64 {
        self.with_state(|st| st.token_issues.get(appid).copied().unwrap_or(0))
    }

    /// force_refresh calls today (Beijing day).
    pub fn force_refreshes_today(&self, appid: &str) -> u64 {
        self.with_state(|st| st.daily_count(appid, "force_refresh"))
    }

    /// Whether a token would currently be accepted.
    pub fn token_is_valid(&self, token: &str) -> bool {
        self.with_state(|st| matches!(st.token_state(token), state::TokenState::Valid(_)))
    }

    /// The current stable token, if any (does not count as a call).
    pub fn current_stable_token(&self, appid: &str) -> Option<String> {
        self.with_state(|st| st.current_stable.get(appid).cloned())
    }

    /// Mints a stable token directly (as if another party called stable_token).
    pub fn mint_stable_token(&self, appid: &str) -> String {
        self.with_state(|st| st.mint_token(appid, TokenSource::Stable))
    }

    // ---- faults ----

    pub fn set_faults(&self, scope: FaultScope, faults: Faults) {
        self.with_state(|st| match scope {
            FaultScope::All => st.faults_all = Some(faults),
            FaultScope::Path(p) => {
                st.faults_by_path.insert(p, faults);
            }
        });
    }

    pub fn clear_faults(&self) {
        self.with_state(|st| {
            st.faults_all = None;
            st.faults_by_path.clear();
        });
    }

    pub fn faults(&self) -> Vec<(FaultScope, Faults)> {
        self.with_state(|st| {
            let all = st.faults_all.clone().map(|f| (FaultScope::All, f));
            all.into_iter()
                .chain(
                    st.faults_by_path
                        .iter()
                        .map(|(p, f)| (FaultScope::Path(p.clone()), f.clone())),
                )
                .collect()
        })
    }

    /// Restarts the fault PRNG, so the same calls meet the same faults again.
    pub fn reseed(&self, seed: u64) {
        self.with_state(|st| st.prng = faults::Prng::new(seed));
    }

    /// Forgets today's call counts, so quotas start over.
    pub fn reset_quotas(&self) {
        self.with_state(|st| st.daily.clear());
    }

    // ---- records ----

    pub fn calls(&self) -> Vec<RecordedCall> {
        self.with_state(|st| st.calls.iter().cloned().collect())
    }

    pub fn calls_to(&self, path: &str) -> Vec<RecordedCall> {
        self.with_state(|st| st.calls.iter().filter(|c| c.path == path).cloned().collect())
    }

    pub fn clear_calls(&self) {
        self.with_state(|st| st.calls.clear());
    }

    pub fn sent_subscribe_messages(&self) -> Vec<SentSubscribeMessage> {
        self.with_state(|st| st.subscribe_sent.iter().cloned().collect())
    }

    pub fn sent_template_messages(&self) -> Vec<SentTemplateMessage> {
        self.with_state(|st| st.template_sent.iter().cloned().collect())
    }

    /// How many template messages are recorded, without copying them (load runs poll it).
    pub fn sent_template_count(&self) -> usize {
        self.with_state(|st| st.template_sent.len())
    }

    pub fn pushed_events(&self) -> Vec<PushedEvent> {
        self.with_state(|st| st.pushes.iter().cloned().collect())
    }

    pub fn qrcodes(&self) -> Vec<QrCode> {
        self.with_state(|st| st.qrcodes.iter().cloned().collect())
    }

    /// The passive replies message servers gave to pushes (valid or not), oldest first.
    pub fn passive_replies(&self) -> Vec<PassiveReply> {
        self.with_state(|st| st.pushes.iter().filter_map(|p| p.reply.clone()).collect())
    }

    /// Clears calls, sent messages and pushes (not QR codes, tokens, codes or faults).
    pub fn clear_records(&self) {
        self.with_state(|st| {
            st.calls.clear();
            st.subscribe_sent.clear();
            st.template_sent.clear();
            st.pushes.clear();
        });
    }

    /// Waits until at least `n` events have been pushed (all attempts done), or `timeout`.
    pub async fn wait_for_pushes(&self, n: usize, timeout: Duration) -> Vec<PushedEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pushes = self.pushed_events();
            if pushes.len() >= n || tokio::time::Instant::now() >= deadline {
                return pushes;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // ---- events ----

    /// A user scans a parametric QR code: `subscribe` + `qrscene_<scene>` for a new follower,
    /// `SCAN` + `<scene>` otherwise. Returns after delivery.
    pub async fn scan_qrcode(&self, ticket: &str, openid: &str, new_follower: bool) -> Result<PushedEvent, SimError> {
        let job = self.with_state(|st| {
            let now = st.now();
            let qr = st
                .qrcodes
                .iter()
                .find(|q| q.ticket == ticket)
                .cloned()
                .ok_or(SimError::UnknownTicket)?;
            if qr
                .expire_seconds
                .is_some_and(|e| qr.at + delta(Duration::from_secs(e)) <= now)
            {
                return Err(SimError::QrCodeExpired);
            }
            let app = st
                .apps
                .get(&qr.appid)
                .ok_or_else(|| SimError::UnknownApp(qr.appid.clone()))?;
            let server = app
                .message_server
                .as_ref()
                .ok_or_else(|| SimError::NoMessageServer(qr.appid.clone()))?;
            let xml = push::scan_xml(
                &app.original_id,
                openid,
                now.timestamp(),
                new_follower,
                &qr.scene,
                ticket,
            );
            let event = if new_follower { "subscribe" } else { "SCAN" };
            let job = PushJob::new(app, server, Some(openid), event, xml, None);
            st.unfollowed.remove(&(qr.appid.clone(), openid.to_owned()));
            Ok(job)
        })?;
        Ok(self.deliver(job).await)
    }

    /// Pushes any event XML to the app's message server. Returns after delivery.
    pub async fn push_xml(&self, appid: &str, openid: Option<&str>, xml: &str) -> Result<PushedEvent, SimError> {
        let job = self.with_state(|st| {
            let app = st
                .apps
                .get(appid)
                .ok_or_else(|| SimError::UnknownApp(appid.to_owned()))?;
            let server = app
                .message_server
                .as_ref()
                .ok_or_else(|| SimError::NoMessageServer(appid.to_owned()))?;
            Ok(PushJob::new(
                app,
                server,
                openid,
                &push::event_name(xml),
                xml.to_owned(),
                None,
            ))
        })?;
        Ok(self.deliver(job).await)
    }
}
