//! The WeChat endpoints: request parsing, fault application, recording, and dispatch.

pub(crate) mod card;
mod login;
mod menu;
mod message;
pub(crate) mod multipart;
mod qrcode;
mod realname;
mod token;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actix_web::http::{Method, StatusCode};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse};
use serde_json::{Map, Value, json};

use crate::config::{AppKind, SimApp};
use crate::faults::OutageMode;
use crate::paths;
use crate::push::PushJob;
use crate::record::RecordedCall;
use crate::state::{State, TokenState, push_bounded};
use crate::{Simulator, ids};

const REDACTED: &str = "<redacted>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    StableToken,
    ClassicToken,
    JsCode2Session,
    SubscribeSend,
    TemplateSend,
    OAuthAccessToken,
    QrCodeCreate,
    PhoneNumber,
    CheckRealName,
    MenuCreate,
    MenuGet,
    MenuDelete,
    GetTicket,
    InvoiceSetUrl,
    CreateBillCard,
    GetBillAuthUrl,
    GetAuthData,
    SetPdf,
    InsertBill,
    RejectInsert,
    PlatformUpdateStatus,
    ReimburseGetInfo,
    ReimburseGetBatch,
    ReimburseUpdateStatus,
    ReimburseUpdateBatch,
}

impl Api {
    pub const ALL: [Api; 25] = [
        Api::StableToken,
        Api::ClassicToken,
        Api::JsCode2Session,
        Api::SubscribeSend,
        Api::TemplateSend,
        Api::OAuthAccessToken,
        Api::QrCodeCreate,
        Api::PhoneNumber,
        Api::CheckRealName,
        Api::MenuCreate,
        Api::MenuGet,
        Api::MenuDelete,
        Api::GetTicket,
        Api::InvoiceSetUrl,
        Api::CreateBillCard,
        Api::GetBillAuthUrl,
        Api::GetAuthData,
        Api::SetPdf,
        Api::InsertBill,
        Api::RejectInsert,
        Api::PlatformUpdateStatus,
        Api::ReimburseGetInfo,
        Api::ReimburseGetBatch,
        Api::ReimburseUpdateStatus,
        Api::ReimburseUpdateBatch,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Api::StableToken => paths::STABLE_TOKEN,
            Api::ClassicToken => paths::TOKEN,
            Api::JsCode2Session => paths::JSCODE2SESSION,
            Api::SubscribeSend => paths::SUBSCRIBE_SEND,
            Api::TemplateSend => paths::TEMPLATE_SEND,
            Api::OAuthAccessToken => paths::OAUTH_ACCESS_TOKEN,
            Api::QrCodeCreate => paths::QRCODE_CREATE,
            Api::PhoneNumber => paths::PHONE_NUMBER,
            Api::CheckRealName => paths::CHECK_REAL_NAME,
            Api::MenuCreate => paths::MENU_CREATE,
            Api::MenuGet => paths::MENU_GET,
            Api::MenuDelete => paths::MENU_DELETE,
            Api::GetTicket => paths::GET_TICKET,
            Api::InvoiceSetUrl => paths::INVOICE_SET_URL,
            Api::CreateBillCard => paths::CREATE_BILL_CARD,
            Api::GetBillAuthUrl => paths::GET_BILL_AUTH_URL,
            Api::GetAuthData => paths::GET_AUTH_DATA,
            Api::SetPdf => paths::SET_PDF,
            Api::InsertBill => paths::INSERT_BILL,
            Api::RejectInsert => paths::REJECT_INSERT,
            Api::PlatformUpdateStatus => paths::PLATFORM_UPDATE_STATUS,
            Api::ReimburseGetInfo => paths::REIMBURSE_GET_INFO,
            Api::ReimburseGetBatch => paths::REIMBURSE_GET_BATCH,
            Api::ReimburseUpdateStatus => paths::REIMBURSE_UPDATE_STATUS,
            Api::ReimburseUpdateBatch => paths::REIMBURSE_UPDATE_BATCH,
        }
    }

    fn is_get(self) -> bool {
        matches!(
            self,
            Api::ClassicToken
                | Api::JsCode2Session
                | Api::OAuthAccessToken
                | Api::GetTicket
                | Api::MenuGet
                | Api::MenuDelete
        )
    }

    fn handle(self, st: &mut State, call: &Call) -> Result<Reply, WxErr> {
        match self {
            Api::StableToken => token::stable_token(st, call),
            Api::ClassicToken => token::classic_token(st, call),
            Api::JsCode2Session => login::jscode2session(st, call),
            Api::SubscribeSend => message::subscribe_send(st, call),
            Api::TemplateSend => message::template_send(st, call),
            Api::OAuthAccessToken => login::oauth_access_token(st, call),
            Api::QrCodeCreate => qrcode::create(st, call),
            Api::PhoneNumber => login::phone_number(st, call),
            Api::CheckRealName => realname::check(st, call),
            Api::MenuCreate => menu::create(st, call),
            Api::MenuGet => menu::get(st, call),
            Api::MenuDelete => menu::delete(st, call),
            Api::GetTicket => card::get_ticket(st, call),
            Api::InvoiceSetUrl => card::set_url(st, call),
            Api::CreateBillCard => card::create_bill_card(st, call),
            Api::GetBillAuthUrl => card::get_bill_auth_url(st, call),
            Api::GetAuthData => card::get_auth_data(st, call),
            Api::SetPdf => card::set_pdf(st, call),
            Api::InsertBill => card::insert_bill(st, call),
            Api::RejectInsert => card::reject_insert(st, call),
            Api::PlatformUpdateStatus => card::platform_update_status(st, call),
            Api::ReimburseGetInfo => card::reimburse_get_info(st, call),
            Api::ReimburseGetBatch => card::reimburse_get_batch(st, call),
            Api::ReimburseUpdateStatus => card::reimburse_update_status(st, call),
            Api::ReimburseUpdateBatch => card::reimburse_update_batch(st, call),
        }
    }
}

/// A parsed request.
pub(crate) struct Call {
    pub query: BTreeMap<String, String>,
    pub body: Value,
    /// The body as sent (multipart uploads).
    pub raw: Bytes,
    pub content_type: String,
    /// Where browsers reach the simulator (scheme, host and mount point), for `auth_url`s.
    pub base_url: String,
}

impl Call {
    /// A non-empty query parameter.
    pub fn q(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str).filter(|s| !s.is_empty())
    }

    pub fn object(&self) -> Result<&Map<String, Value>, WxErr> {
        self.body
            .as_object()
            .ok_or_else(|| WxErr::new(47001, "data format error"))
    }
}

/// A non-empty string field.
pub(crate) fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    obj.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

#[derive(Debug, Clone)]
pub(crate) struct WxErr {
    pub code: i64,
    pub msg: String,
}

impl WxErr {
    pub fn new(code: i64, msg: impl Into<String>) -> Self {
        Self { code, msg: msg.into() }
    }

    fn body(&self) -> Value {
        json!({ "errcode": self.code, "errmsg": format!("{} rid: {}", self.msg, ids::rid()) })
    }
}

pub(crate) struct Reply {
    pub body: Value,
    pub pushes: Vec<PushJob>,
}

impl Reply {
    pub fn json(body: Value) -> Self {
        Self {
            body,
            pushes: Vec::new(),
        }
    }
}

pub(crate) fn app<'a>(st: &'a State, appid: &str) -> Result<&'a SimApp, WxErr> {
    st.apps.get(appid).ok_or_else(|| WxErr::new(40013, "invalid appid"))
}

/// Checks `?access_token=` and that the app may call this API; returns the appid.
pub(crate) fn authorize(st: &State, call: &Call, kind: AppKind) -> Result<String, WxErr> {
    authorize_kinds(st, call, &[kind])
}

/// [`authorize`] for APIs both official accounts and mini-programs may call.
pub(crate) fn authorize_any(st: &State, call: &Call) -> Result<String, WxErr> {
    authorize_kinds(st, call, &[AppKind::OfficialAccount, AppKind::MiniProgram])
}

fn authorize_kinds(st: &State, call: &Call, kinds: &[AppKind]) -> Result<String, WxErr> {
    let token = call
        .q("access_token")
        .ok_or_else(|| WxErr::new(41001, "access_token missing"))?;
    match st.token_state(token) {
        TokenState::Valid(t) => {
            let app = app(st, &t.appid)?;
            if !kinds.contains(&app.kind) {
                return Err(WxErr::new(48001, "api unauthorized"));
            }
            Ok(t.appid.clone())
        }
        TokenState::Expired => Err(WxErr::new(42001, "access_token expired")),
        TokenState::Unknown if !ids::looks_like_token(token) => Err(WxErr::new(40014, "invalid access_token")),
        TokenState::Invalid | TokenState::Unknown => Err(WxErr::new(
            40001,
            "invalid credential, access_token is invalid or not latest",
        )),
    }
}

/// Fault decisions for one call, taken under the lock before any waiting.
#[derive(Default)]
struct Plan {
    appid: Option<String>,
    latency_ms: u64,
    outage: Option<OutageMode>,
    timeout_ms: Option<u64>,
    error: Option<WxErr>,
    over_quota: bool,
}

fn plan(st: &mut State, api: Api, call: &Call) -> Plan {
    let appid = call
        .q("access_token")
        .and_then(|t| st.tokens.get(t))
        .map(|t| t.appid.clone())
        .or_else(|| call.q("appid").map(str::to_owned))
        .or_else(|| call.body.get("appid").and_then(Value::as_str).map(str::to_owned));
    let mut p = Plan {
        appid,
        ..Plan::default()
    };
    let faults = st.faults_for(api.path()).cloned();
    let mut fault_quota = None;
    if let Some(f) = faults {
        let jitter = if f.latency.jitter_ms > 0 {
            st.prng.next_u64() % (f.latency.jitter_ms + 1)
        } else {
            0
        };
        p.latency_ms = f.latency.fixed_ms.saturating_add(jitter);
        if f.in_outage(st.now()) {
            p.outage = Some(f.outage_mode);
            return p;
        }
        if st.prng.chance(f.timeout_rate) {
            p.timeout_ms = Some(f.timeout_ms);
        }
        if st.prng.chance(f.error_rate) {
            p.error = Some(WxErr::new(f.errcode, f.errmsg));
            return p;
        }
        fault_quota = f.daily_quota;
    }
    let used = st.count_daily(p.appid.as_deref().unwrap_or(""), api.path());
    let quota = match (st.cfg.daily_quotas.get(api.path()).copied(), fault_quota) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    p.over_quota = quota.is_some_and(|q| used > q);
    p
}

/// The scope the simulator is mounted under: `path` up to where `route` begins.
pub(crate) fn mount_prefix<'a>(path: &'a str, route: &str) -> &'a str {
    path.rfind(route).map_or("", |i| &path[..i])
}

fn parse_body(raw: &Bytes) -> Value {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(raw).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(raw).into_owned()))
}

impl Simulator {
    /// Where browsers reach the simulator: the configured public URL, or this request's
    /// scheme and host plus the scope the simulator is mounted under (`route` stripped).
    pub(crate) fn base_url(&self, req: &HttpRequest, route: &str) -> String {
        if let Some(url) = self.with_state(|st| st.cfg.public_base_url.clone()) {
            return url.trim_end_matches('/').to_owned();
        }
        let info = req.connection_info();
        format!("{}://{}{}", info.scheme(), info.host(), mount_prefix(req.path(), route))
    }

    pub(crate) async fn dispatch(&self, api: Api, req: HttpRequest, raw: Bytes) -> HttpResponse {
        let started = Instant::now();
        let query = url::form_urlencoded::parse(req.query_string().as_bytes())
            .into_owned()
            .collect();
        let content_type = req
            .headers()
            .get(actix_web::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let multipart = content_type.starts_with("multipart/form-data");
        let body = if multipart {
            multipart::summary(&content_type, &raw)
        } else {
            parse_body(&raw)
        };
        let base_url = self.base_url(&req, api.path());
        let call = Call {
            query,
            body,
            raw,
            content_type,
            base_url,
        };

        // A timeout fault answers late, after the call has taken effect: the caller
        // gives up on a message WeChat did send, as in real timeouts.
        let mut hold = None;
        let (status, reply, pushes, appid) = if (*req.method() == Method::GET) != api.is_get() {
            let e = if api.is_get() {
                (43001, "require GET method")
            } else {
                (43002, "require POST method")
            };
            (StatusCode::OK, WxErr::new(e.0, e.1).body(), Vec::new(), None)
        } else {
            let plan = self.with_state(|st| plan(st, api, &call));
            if plan.latency_ms > 0 {
                tokio::time::sleep(Duration::from_millis(plan.latency_ms)).await;
            }
            match plan.outage {
                Some(OutageMode::Http503) => (StatusCode::SERVICE_UNAVAILABLE, Value::Null, Vec::new(), plan.appid),
                Some(OutageMode::SystemError) => (
                    StatusCode::OK,
                    WxErr::new(-1, "system error").body(),
                    Vec::new(),
                    plan.appid,
                ),
                None => {
                    hold = plan.timeout_ms;
                    let result = if let Some(e) = plan.error {
                        Err(e)
                    } else if plan.over_quota {
                        Err(WxErr::new(45009, "reach max api daily quota limit"))
                    } else {
                        self.with_state(|st| api.handle(st, &call))
                    };
                    match result {
                        Ok(r) => (StatusCode::OK, r.body, r.pushes, plan.appid),
                        Err(e) => (StatusCode::OK, e.body(), Vec::new(), plan.appid),
                    }
                }
            }
        };

        for job in pushes {
            let sim = self.clone();
            tokio::spawn(async move {
                sim.deliver(job).await;
            });
        }
        if let Some(ms) = hold {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }

        let errcode = if status == StatusCode::OK {
            reply.get("errcode").and_then(Value::as_i64).unwrap_or(0)
        } else {
            -1
        };
        let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // App secrets are not kept in records (the admin API serves them).
        let Call {
            mut query, mut body, ..
        } = call;
        if let Some(s) = query.get_mut("secret") {
            *s = REDACTED.to_owned();
        }
        // Nor app secrets, nor the identities a real-name check carries (PIPL).
        for key in ["secret", "real_name", "cred_id"] {
            if let Some(s) = body.get_mut(key) {
                *s = json!(REDACTED);
            }
        }
        self.with_state(|st| {
            let rec = RecordedCall {
                at: st.now(),
                method: req.method().to_string(),
                path: api.path().to_owned(),
                query,
                body,
                appid,
                http_status: status.as_u16(),
                response_errcode: errcode,
                latency_ms,
            };
            let limit = st.cfg.record_limit;
            push_bounded(&mut st.calls, rec, limit);
            st.calls_since_prune += 1;
            if st.calls_since_prune >= 1024 {
                st.calls_since_prune = 0;
                st.prune();
            }
        });

        if status == StatusCode::OK {
            HttpResponse::Ok()
                .content_type("application/json; encoding=utf-8")
                .body(reply.to_string())
        } else {
            HttpResponse::build(status)
                .content_type("text/html")
                .body("<html><body>503 Service Unavailable</body></html>")
        }
    }
}
