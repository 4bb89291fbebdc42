//! The hospital's official-account pages inside WeChat (H5), under
//! `/h5/{appId}` (`appId`: the official account's WeChat appid): my receipts with
//! the wallet's filters, one receipt, its download, adding a receipt held on
//! paper (its QR code) to the wallet, and an error page for every failure. And
//! WeChat's own channel: temporary parametric QR codes for one receipt
//! ([`scan`]), delivered to whoever scans them first.
//!
//! Payers sign in by web OAuth ([`session`]); a page shows only what is in the
//! signed-in payer's wallet and of the account's agency (the mini-program API's
//! rule: one payer never sees another's receipt). Pages are server-rendered
//! ([`views`]), need no script and load nothing from elsewhere.

pub mod claims;
pub mod routes;
pub mod scan;
pub mod session;
pub mod views;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use piaojia_store::{ChannelKind, StoreError};
use piaojia_wechat::client::AppCredentials;
use secrecy::SecretString;
use uuid::Uuid;

use crate::state::AppState;

pub use scan::deliver_scanned_receipt;

/// Where the pages live.
pub const PREFIX: &str = "/h5";

pub fn configure(cfg: &mut web::ServiceConfig) {
    routes::configure(cfg);
}

/// `/h5/{appid}{rest}`.
pub fn account_path(appid: &str, rest: &str) -> String {
    format!("{PREFIX}/{appid}{rest}")
}

/// The URL of one receipt's page, as a template message links it.
pub fn receipt_url(base_url: &str, appid: &str, receipt_id: Uuid) -> String {
    format!("{base_url}{}", account_path(appid, &format!("/receipts/{receipt_id}")))
}

/// An official account whose pages these are: its agency and credentials.
#[derive(Clone)]
pub struct OfficialAccount {
    pub appid: String,
    pub agency_id: Uuid,
    pub agency_name: String,
    pub credentials: AppCredentials,
}

/// The enabled official account (`wechat_template` channel) with this appid.
pub async fn official_account(state: &AppState, appid: &str) -> Result<OfficialAccount, PageError> {
    if appid.is_empty()
        || appid.len() > 64
        || !appid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(PageError::unknown_account());
    }
    let channels = state.store.channel_by_wechat_app(appid).await?;
    let Some((channel, agency_id)) = channels
        .into_iter()
        .filter(|c| c.kind == ChannelKind::WechatTemplate && c.enabled)
        .find_map(|c| c.agency_id.map(|a| (c, a)))
    else {
        return Err(PageError::unknown_account());
    };
    let agency = state
        .store
        .agency(agency_id)
        .await?
        .ok_or_else(PageError::unknown_account)?;
    let secret = state
        .keyring
        .open(&channel.secret_sealed, &piaojia_core::pii::purpose::wechat_app(appid))
        .map_err(|_| PageError::unavailable())?;
    Ok(OfficialAccount {
        appid: appid.to_owned(),
        agency_id,
        agency_name: agency.name,
        credentials: AppCredentials {
            appid: appid.to_owned(),
            secret: SecretString::from(String::from_utf8_lossy(&secret).into_owned()),
        },
    })
}

/// A failure, shown as a page (never problem+json: a person reads it). Says
/// what the payer can do, and nothing about what exists.
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    title: &'static str,
    message: &'static str,
    back: Option<String>,
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.title)
    }
}

impl PageError {
    pub fn new(status: StatusCode, title: &'static str, message: &'static str) -> Self {
        Self {
            status,
            title,
            message,
            back: None,
        }
    }

    /// Offers the way back to the account's receipt list.
    pub fn back_to(mut self, appid: &str) -> Self {
        self.back = Some(account_path(appid, "/receipts"));
        self
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "页面不存在",
            "您访问的页面不存在，请从公众号菜单重新进入。",
        )
    }

    pub fn unknown_account() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "公众号未开通票据服务",
            "该公众号尚未开通电子票据查询服务。",
        )
    }

    pub fn receipt_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "未找到票据",
            "您的票夹中没有这张票据。如果您持有纸质票据，请扫描票据上的二维码添加。",
        )
    }

    pub fn paper_not_proven() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "未找到票据",
            "二维码中的票据信息无法核对，请确认扫描的是本院开具的电子票据二维码。",
        )
    }

    pub fn scene_invalid() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "二维码无效或已过期",
            "该二维码无效、已过期或已被领取。请向收费窗口重新获取。",
        )
    }

    pub fn sign_in_expired() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "登录已失效",
            "登录请求已过期或不是从本页面发起的，请从公众号重新打开页面。",
        )
    }

    pub fn sign_in_failed() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "微信授权失败",
            "未能确认您的微信身份，请稍后从公众号重新打开页面。",
        )
    }

    pub fn csrf() -> Self {
        Self::new(StatusCode::FORBIDDEN, "页面已过期", "页面已过期，请返回后刷新重试。")
    }

    pub fn too_many() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "操作过于频繁",
            "操作过于频繁，请一分钟后再试。",
        )
    }

    pub fn bad_request() -> Self {
        Self::new(StatusCode::BAD_REQUEST, "请求有误", "请求的内容有误，请返回后重试。")
    }

    pub fn claim_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "未找到报销申请",
            "您没有这笔报销申请，请从“我的报销”重新进入。",
        )
    }

    pub fn already_claimed() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "已在报销中",
            "这张票据已在报销申请中，不能重复申请。您可以在“我的报销”查看进度。",
        )
    }

    pub fn not_claimable() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "不能申请报销",
            "这张票据已冲红、已报销或正在报销中，不能申请报销。",
        )
    }

    pub fn claim_locked() -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "无法撤回",
            "报销方已锁定这笔申请的票据，不能再撤回。",
        )
    }

    pub fn claim_closed() -> Self {
        Self::new(StatusCode::CONFLICT, "无法撤回", "这笔报销申请已结束，不能再撤回。")
    }

    pub fn no_file() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "暂无票据文件",
            "开票单位尚未提供这张票据的版式文件，请稍后再试。",
        )
    }

    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "服务暂不可用",
            "服务暂时不可用，请稍后再试。",
        )
    }

    /// The page itself.
    pub fn page(&self) -> HttpResponse {
        let body = views::error_page(self.title, self.message, self.back.as_deref());
        HttpResponse::build(self.status)
            .content_type("text/html; charset=utf-8")
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(body.into_string())
    }
}

impl ResponseError for PageError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        self.page()
    }
}

impl From<StoreError> for PageError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "a page failed in the store");
        Self::unavailable()
    }
}

/// Unknown routes: a page under `/h5/`, problem+json elsewhere.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    if req.path() == PREFIX || req.path().starts_with("/h5/") {
        return PageError::not_found().page();
    }
    crate::error::handlers::not_found(req).await
}

/// An HTML page answer.
pub fn page(markup: maud::Markup) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(markup.into_string())
}
