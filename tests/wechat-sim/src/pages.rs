//! What a payer's browser sees: the web-OAuth authorize step, the card-package
//! authorisation page (收入微信卡包), receipt PDFs, and (under `/sim/`) the payer's card
//! package. Small server-rendered pages in Chinese; no scripts, no outside resources.
//!
//! The simulated browser user of each app is a cookie (`wxsim_user_<appid>` = openid), set
//! by `/sim/browser/login` or by picking a user on the page itself.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, TimeDelta};

use crate::api::card::authorize_order;
use crate::api::mount_prefix;
use crate::cards::{InvoiceOrder, SimCard};
use crate::config::{AppKind, SimApp};
use crate::state::CodeKind;
use crate::{SimError, Simulator, ids, paths};

pub(crate) const BROWSER_LOGIN: &str = "/sim/browser/login";
pub(crate) const CARD_PACKAGE: &str = "/sim/cardpackage";
pub(crate) const CARD_PACKAGE_PAGE: &str = "/sim/cardpackage/page";

const STYLE: &str = "body{font-family:-apple-system,'PingFang SC','Microsoft YaHei',sans-serif;margin:0;background:#ededed;color:#191919}\
main{max-width:28rem;margin:0 auto;padding:1rem}h1{font-size:1.2rem;text-align:center}\
.card{background:#fff;border-radius:8px;padding:1rem;margin:.75rem 0}.muted{color:#888;font-size:.85rem}\
.amount{font-size:1.6rem;font-weight:600}.error{color:#fa5151}label{display:block;margin:.4rem 0}\
button{width:100%;padding:.75rem;border:0;border-radius:6px;background:#07c160;color:#fff;font-size:1rem}\
input[type=text]{width:100%;box-sizing:border-box;padding:.5rem}dl{display:grid;grid-template-columns:auto 1fr;gap:.3rem .8rem;margin:0}\
dt{color:#888}dd{margin:0;word-break:break-all}.status{float:right;font-size:.85rem;color:#07c160}";

/// Escapes text for HTML content and attribute values.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn html(status: StatusCode, title: &str, body: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(format!(
            "<!DOCTYPE html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><title>{}</title>\
             <style>{STYLE}</style></head><body><main>{body}</main></body></html>",
            esc(title)
        ))
}

/// WeChat's error pages answer 200 with the message (and, for OAuth, a numeric code).
fn error_page(code: Option<u32>, message: &str) -> HttpResponse {
    let code = code
        .map(|c| format!("<p class=\"muted\">错误码：{c}</p>"))
        .unwrap_or_default();
    html(
        StatusCode::OK,
        "出错了",
        &format!(
            "<h1>出错了</h1><div class=\"card\"><p class=\"error\">{}</p>{code}</div>",
            esc(message)
        ),
    )
}

fn query(req: &HttpRequest) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect()
}

fn form(body: &[u8]) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn cookie_name(appid: &str) -> String {
    format!("wxsim_user_{appid}")
}

/// The simulated browser user of `appid`, from the Cookie header.
fn browser_user(req: &HttpRequest, appid: &str) -> Option<String> {
    let name = cookie_name(appid);
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|o| ids::is_openid(o))
}

fn set_cookie(resp: &mut HttpResponse, req: &HttpRequest, route: &str, appid: &str, openid: &str) {
    let prefix = mount_prefix(req.path(), route);
    let path = if prefix.is_empty() { "/" } else { prefix };
    let cookie = format!("{}={openid}; Path={path}; HttpOnly; SameSite=Lax", cookie_name(appid));
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn redirect(status: StatusCode, location: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::LOCATION, location))
        .finish()
}

fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let f = fen.unsigned_abs();
    format!("{sign}¥{}.{:02}", f / 100, f % 100)
}

fn beijing(ts: i64) -> String {
    DateTime::from_timestamp(ts, 0)
        .map(|t| (t + TimeDelta::hours(8)).format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// The user picker: known openids of the app, a fresh one, or one typed in.
fn picker(app: &SimApp, known: &[String], intro: &str, error: Option<&str>, hidden: &[(&str, &str)]) -> HttpResponse {
    let fresh = ids::new_openid();
    let mut options = String::new();
    for o in known.iter().rev().take(20) {
        options.push_str(&format!(
            "<label><input type=\"radio\" name=\"openid\" value=\"{0}\"> {0}</label>",
            esc(o)
        ));
    }
    options.push_str(&format!(
        "<label><input type=\"radio\" name=\"openid\" value=\"{0}\" checked> 新用户 {0}</label>",
        esc(&fresh)
    ));
    let hidden: String = hidden
        .iter()
        .map(|(k, v)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", esc(k), esc(v)))
        .collect();
    let error = error
        .map(|e| format!("<p class=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    html(
        StatusCode::OK,
        "模拟微信授权",
        &format!(
            "<h1>模拟微信授权</h1><div class=\"card\"><p><b>{}</b></p><p class=\"muted\">{}</p>\
             <p class=\"muted\">这是微信模拟器：请选择以哪位微信用户的身份继续。</p></div>\
             <form method=\"post\" class=\"card\">{error}{hidden}<fieldset><legend>模拟用户（openid）</legend>{options}</fieldset>\
             <label>或输入 openid：<input type=\"text\" name=\"typed\" maxlength=\"28\" autocomplete=\"off\"></label>\
             <button type=\"submit\">同意</button></form>",
            esc(app.display_name()),
            esc(intro),
        ),
    )
}

/// The openid chosen on the picker: typed, else the radio button.
fn picked(f: &BTreeMap<String, String>) -> Result<String, &'static str> {
    let typed = f.get("typed").map(|t| t.trim()).unwrap_or_default();
    let chosen = if typed.is_empty() {
        f.get("openid").map(String::as_str).unwrap_or_default()
    } else {
        typed
    };
    if chosen.is_empty() {
        return Err("请选择或输入一个 openid");
    }
    if !ids::is_openid(chosen) {
        return Err("openid 须为 28 位字母、数字、- 或 _");
    }
    Ok(chosen.to_owned())
}

/// `redirect_uri`'s host (and port) is one of the app's web authorisation domains.
fn domain_allowed(app: &SimApp, uri: &url::Url) -> bool {
    if app.oauth_domains.is_empty() {
        return true;
    }
    let host = uri.host_str().unwrap_or_default().to_ascii_lowercase();
    let host_port = match uri.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    app.oauth_domains.iter().any(|d| {
        let d = d.trim().to_ascii_lowercase();
        if d.contains(':') { d == host_port } else { d == host }
    })
}

impl Simulator {
    /// `GET|POST /connect/oauth2/authorize`: redirects to `redirect_uri?code=…&state=…`
    /// for the browser's user, or asks who the user is. The `#wechat_redirect` of real
    /// links is a fragment: browsers never send it.
    async fn oauth_authorize(&self, req: HttpRequest, body: Option<Bytes>) -> HttpResponse {
        let q = query(&req);
        let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
        if get("appid").is_empty() {
            return error_page(Some(10012), "appid 不能为空");
        }
        let Some(app) = self.app(get("appid")).filter(|a| a.kind == AppKind::OfficialAccount) else {
            return error_page(None, "appid 参数错误");
        };
        if get("redirect_uri").is_empty() {
            return error_page(Some(10011), "redirect_uri 不能为空");
        }
        let Some(uri) = url::Url::parse(get("redirect_uri"))
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .filter(|u| domain_allowed(&app, u))
        else {
            return error_page(Some(10003), "redirect_uri 参数错误");
        };
        if get("response_type") != "code" {
            return error_page(None, "response_type 参数错误");
        }
        let scope = get("scope");
        if scope.is_empty() {
            return error_page(Some(10010), "scope 不能为空");
        }
        if !matches!(scope, "snsapi_base" | "snsapi_userinfo") {
            return error_page(Some(10005), "此公众号并没有这些 scope 的权限");
        }
        let state = get("state");
        if state.len() > 128 {
            return error_page(None, "state 参数错误");
        }
        let intro = format!("将以你的微信身份（{scope}）登录 {}", uri.host_str().unwrap_or_default());
        let (openid, from_form) = match &body {
            Some(b) => match picked(&form(b)) {
                Ok(o) => (o, true),
                Err(e) => {
                    let known = self.with_state(|st| st.people.known(&app.appid));
                    return picker(&app, &known, &intro, Some(e), &[]);
                }
            },
            None => match browser_user(&req, &app.appid) {
                Some(o) => (o, false),
                None => {
                    let known = self.with_state(|st| st.people.known(&app.appid));
                    return picker(&app, &known, &intro, None, &[]);
                }
            },
        };
        let code = self.with_state(|st| {
            let code = st.issue_code(CodeKind::OAuth, &app.appid, &openid, None, None);
            if let Some(c) = st.oauth_codes.get_mut(&code) {
                c.scope = Some(scope.to_owned());
            }
            code
        });
        let mut location = uri;
        location
            .query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", state);
        let mut resp = redirect(StatusCode::FOUND, location.as_str());
        if from_form {
            set_cookie(&mut resp, &req, paths::OAUTH_AUTHORIZE, &app.appid, &openid);
        }
        resp
    }

    /// `GET|POST /bizmall/authinvoice`: the page behind a `getbillauthurl` link.
    async fn invoice_auth_page(&self, req: HttpRequest, body: Option<Bytes>) -> HttpResponse {
        let q = query(&req);
        let token = q.get("signature").cloned().unwrap_or_default();
        let found = self.with_state(|st| {
            let key = st.invoice.auth_tokens.get(&token)?;
            let order = st.invoice.orders.get(key)?.clone();
            let app = st.apps.get(&order.auth_appid)?.clone();
            Some((order, app, st.now()))
        });
        let Some((order, app, now)) = found else {
            return error_page(None, "授权链接无效");
        };
        if order.auth_expires_at <= now {
            return error_page(None, "授权链接已过期，请重新获取");
        }
        let intro = format!("{} 请求将票据收入你的微信卡包", app.display_name());
        let f = body.as_deref().map(form).unwrap_or_default();
        let step = f.get("step").map(String::as_str).unwrap_or_default();
        let here = format!(
            "{}{}",
            req.path(),
            if req.query_string().is_empty() {
                String::new()
            } else {
                format!("?{}", req.query_string())
            }
        );
        if step == "login" {
            return match picked(&f) {
                Ok(openid) => {
                    let mut resp = redirect(StatusCode::SEE_OTHER, &here);
                    set_cookie(&mut resp, &req, paths::INVOICE_AUTH_PAGE, &app.appid, &openid);
                    resp
                }
                Err(e) => {
                    let known = self.with_state(|st| st.people.known(&app.appid));
                    picker(&app, &known, &intro, Some(e), &[("step", "login")])
                }
            };
        }
        let Some(openid) = browser_user(&req, &app.appid) else {
            let known = self.with_state(|st| st.people.known(&app.appid));
            return picker(&app, &known, &intro, None, &[("step", "login")]);
        };
        let person = self.with_state(|st| st.people.person(&app.appid, &openid));
        if order.person.is_some_and(|p| p != person) {
            return error_page(None, "该票据已由其他微信用户领取");
        }
        if step == "agree" {
            let jobs = self.with_state(|st| authorize_order(st, &token, person));
            return match jobs {
                Ok(jobs) => {
                    for job in jobs {
                        let sim = self.clone();
                        tokio::spawn(async move {
                            sim.deliver(job).await;
                        });
                    }
                    match &order.redirect_url {
                        Some(r) => redirect(StatusCode::SEE_OTHER, r),
                        None => done_page(&app, &order),
                    }
                }
                Err(SimError::AuthUrlExpired) => error_page(None, "授权链接已过期，请重新获取"),
                Err(SimError::OrderTakenByOther) => error_page(None, "该票据已由其他微信用户领取"),
                Err(_) => error_page(None, "授权链接无效"),
            };
        }
        if order.authorized_at.is_some() {
            return done_page(&app, &order);
        }
        html(
            StatusCode::OK,
            "收入微信卡包",
            &format!(
                "<h1>收入微信卡包</h1><div class=\"card\"><p><b>{}</b></p><p class=\"amount\">{}</p>\
                 <dl><dt>订单号</dt><dd>{}</dd><dt>微信用户</dt><dd>{}</dd></dl></div>\
                 <p class=\"muted\">同意后，该笔缴费的财政电子票据开具后将放入你的微信卡包，可随时查看、报销。</p>\
                 <form method=\"post\"><input type=\"hidden\" name=\"step\" value=\"agree\">\
                 <button type=\"submit\">同意并收入卡包</button></form>",
                esc(app.display_name()),
                esc(&yuan(order.money)),
                esc(&order.order_id),
                esc(&openid),
            ),
        )
    }

    async fn invoice_pdf(&self, media_id: &str) -> HttpResponse {
        match self.with_state(|st| st.invoice.media.get(media_id).map(|m| m.bytes.clone())) {
            Some(bytes) => HttpResponse::Ok()
                .content_type("application/pdf")
                .insert_header((header::CONTENT_DISPOSITION, "inline; filename=\"receipt.pdf\""))
                .body(bytes),
            None => HttpResponse::NotFound().content_type("text/plain").body("no such pdf"),
        }
    }

    /// The payer's card package as a page: each card's title, amount, 票据代码/号码 and status.
    fn card_package_page(&self, req: &HttpRequest) -> HttpResponse {
        let q = query(req);
        let appid = q.get("appid").cloned().unwrap_or_default();
        let Some(app) = self.app(&appid) else {
            return error_page(None, "appid 参数错误");
        };
        let Some(openid) = q
            .get("openid")
            .cloned()
            .filter(|o| !o.is_empty())
            .or_else(|| browser_user(req, &appid))
        else {
            return error_page(None, "请先以模拟用户登录（/sim/browser/login），或给出 openid");
        };
        let cards = self.card_package(&appid, &openid);
        let prefix = mount_prefix(req.path(), CARD_PACKAGE_PAGE);
        let mut body = format!(
            "<h1>我的卡包 · 票据</h1><p class=\"muted\">{} · {}</p>",
            esc(app.display_name()),
            esc(&openid)
        );
        if cards.is_empty() {
            body.push_str("<div class=\"card\"><p class=\"muted\">卡包里还没有票据。</p></div>");
        }
        for c in &cards {
            body.push_str(&card_html(c, prefix));
        }
        html(StatusCode::OK, "我的卡包", &body)
    }
}

fn card_html(c: &SimCard, prefix: &str) -> String {
    format!(
        "<div class=\"card\"><span class=\"status\">{}</span><p><b>{}</b></p><p class=\"amount\">{}</p>\
         <dl><dt>票据代码</dt><dd>{}</dd><dt>票据号码</dt><dd>{}</dd><dt>开票时间</dt><dd>{}</dd>\
         <dt>收款单位</dt><dd>{}</dd></dl><p><a href=\"{}{}/{}\">查看票据 PDF</a></p></div>",
        esc(c.status.label_zh()),
        esc(&c.title),
        esc(&yuan(c.fee)),
        esc(&c.billing_no),
        esc(&c.billing_code),
        esc(&beijing(c.billing_time)),
        esc(&c.payee),
        esc(prefix),
        paths::INVOICE_PDF,
        esc(&c.s_pdf_media_id),
    )
}

fn done_page(app: &SimApp, order: &InvoiceOrder) -> HttpResponse {
    let state = if order.card_id.is_some() {
        "票据已放入你的微信卡包。"
    } else {
        "已同意。票据开具后将放入你的微信卡包。"
    };
    html(
        StatusCode::OK,
        "已收入卡包",
        &format!(
            "<h1>已收入卡包</h1><div class=\"card\"><p><b>{}</b></p><p class=\"amount\">{}</p><p>{state}</p></div>",
            esc(app.display_name()),
            esc(&yuan(order.money))
        ),
    )
}

/// Mounts the pages among the WeChat endpoints.
pub(crate) fn configure_pages(sim: &Simulator, cfg: &mut web::ServiceConfig) {
    let (a, b) = (sim.clone(), sim.clone());
    cfg.route(
        paths::OAUTH_AUTHORIZE,
        web::get().to(move |req: HttpRequest| {
            let s = a.clone();
            async move { s.oauth_authorize(req, None).await }
        }),
    )
    .route(
        paths::OAUTH_AUTHORIZE,
        web::post().to(move |req: HttpRequest, body: Bytes| {
            let s = b.clone();
            async move { s.oauth_authorize(req, Some(body)).await }
        }),
    );
    let (a, b) = (sim.clone(), sim.clone());
    cfg.route(
        paths::INVOICE_AUTH_PAGE,
        web::get().to(move |req: HttpRequest| {
            let s = a.clone();
            async move { s.invoice_auth_page(req, None).await }
        }),
    )
    .route(
        paths::INVOICE_AUTH_PAGE,
        web::post().to(move |req: HttpRequest, body: Bytes| {
            let s = b.clone();
            async move { s.invoice_auth_page(req, Some(body)).await }
        }),
    );
    let s = sim.clone();
    cfg.route(
        &format!("{}/{{media}}", paths::INVOICE_PDF),
        web::get().to(move |media: web::Path<String>| {
            let s = s.clone();
            async move { s.invoice_pdf(&media).await }
        }),
    );
}

/// Mounts the admin-side pages: the browser login and the card package.
pub(crate) fn configure_admin_pages(sim: &Simulator, cfg: &mut web::ServiceConfig) {
    let s = sim.clone();
    cfg.route(
        BROWSER_LOGIN,
        web::get().to(move |req: HttpRequest| {
            let s = s.clone();
            async move { s.browser_login(&req) }
        }),
    );
    let s = sim.clone();
    cfg.route(
        CARD_PACKAGE_PAGE,
        web::get().to(move |req: HttpRequest| {
            let s = s.clone();
            async move { s.card_package_page(&req) }
        }),
    );
    let s = sim.clone();
    cfg.route(
        CARD_PACKAGE,
        web::get().to(move |req: HttpRequest| {
            let s = s.clone();
            async move {
                let q = query(&req);
                let appid = q.get("appid").cloned().unwrap_or_default();
                if s.app(&appid).is_none() {
                    return HttpResponse::NotFound()
                        .json(serde_json::json!({ "error": SimError::UnknownApp(appid).to_string() }));
                }
                match q
                    .get("openid")
                    .cloned()
                    .filter(|o| !o.is_empty())
                    .or_else(|| browser_user(&req, &appid))
                {
                    Some(openid) => HttpResponse::Ok().json(s.card_package(&appid, &openid)),
                    None => HttpResponse::BadRequest().json(serde_json::json!({ "error": "openid required" })),
                }
            }
        }),
    );
}

impl Simulator {
    /// `GET /sim/browser/login?appid=…[&openid=…][&return=/path]`: makes this browser that
    /// user of the app (a fresh openid if none is given).
    fn browser_login(&self, req: &HttpRequest) -> HttpResponse {
        let q = query(req);
        let appid = q.get("appid").cloned().unwrap_or_default();
        if self.app(&appid).is_none() {
            return HttpResponse::NotFound()
                .json(serde_json::json!({ "error": SimError::UnknownApp(appid).to_string() }));
        }
        let openid = q
            .get("openid")
            .cloned()
            .filter(|o| !o.is_empty())
            .unwrap_or_else(ids::new_openid);
        if !ids::is_openid(&openid) {
            return HttpResponse::BadRequest()
                .json(serde_json::json!({ "error": SimError::InvalidOpenid.to_string() }));
        }
        self.with_state(|st| st.people.person(&appid, &openid));
        // Only paths on this host: never an open redirect.
        let back = q
            .get("return")
            .filter(|r| r.starts_with('/') && !r.starts_with("//") && !r.contains('\\'));
        let mut resp = match back {
            Some(r) => redirect(StatusCode::SEE_OTHER, r),
            None => HttpResponse::Ok().json(serde_json::json!({ "appid": appid, "openid": openid })),
        };
        set_cookie(&mut resp, req, BROWSER_LOGIN, &appid, &openid);
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_formats() {
        assert_eq!(
            esc("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(yuan(1250), "¥12.50");
        assert_eq!(yuan(5), "¥0.05");
        assert_eq!(yuan(-100), "-¥1.00");
        assert_eq!(beijing(0), "1970-01-01 08:00");
    }

    #[test]
    fn oauth_domains() {
        let app = SimApp::official_account("wx1", "s")
            .with_oauth_domain("piaojia.example")
            .with_oauth_domain("localhost:8443");
        let ok = |u: &str| domain_allowed(&app, &url::Url::parse(u).expect("url"));
        assert!(ok("https://piaojia.example/cb?x=1"));
        assert!(ok("http://PIAOJIA.example:8080/cb"));
        assert!(ok("https://localhost:8443/cb"));
        assert!(!ok("https://localhost:9000/cb"));
        assert!(!ok("https://evil.example/cb"));
        assert!(!ok("https://sub.piaojia.example/cb"));
        assert!(domain_allowed(
            &SimApp::official_account("wx2", "s"),
            &url::Url::parse("https://any.example").expect("url")
        ));
    }
}
