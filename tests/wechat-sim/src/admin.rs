//! The `/sim/…` admin API: the Rust API's controls and records over JSON.
//!
//! Records: `GET /sim/calls[?path=]`, `DELETE /sim/calls`, `GET /sim/messages/subscribe`,
//! `GET /sim/messages/template`, `GET /sim/events` (pushes with every attempt and any passive
//! reply), `GET /sim/replies`, `GET /sim/qrcodes`, `GET /sim/counters/{appid}`.
//! Controls: `GET|PUT|DELETE /sim/faults`, `POST /sim/seed`, `POST /sim/quotas/reset`,
//! `POST /sim/clock/advance`, `POST /sim/tokens/invalidate|expire`,
//! `PUT /sim/apps/{appid}/message_server`, `PUT /sim/apps/{appid}/oauth_domains`,
//! `GET /sim/apps/{appid}/menu`.
//! Users: `POST /sim/codes/login|oauth|phone|realname`, `PUT|DELETE /sim/realname`,
//! `POST /sim/subscriptions[/long_term]`, `POST /sim/users/following|template_status`,
//! `POST /sim/users/follow|scan|click|unfollow|link`, `POST /sim/qrcodes/scan`,
//! `GET /sim/browser/login` (sets the simulated browser user's cookie).
//! Card package: `GET /sim/invoice/s_pappid/{appid}`, `GET /sim/invoice/orders|templates`,
//! `POST /sim/invoice/authorize` (the payer agrees), `POST /sim/invoice/choose`
//! (`wx.chooseInvoice`), `GET /sim/cardpackage?appid&openid` (JSON) and
//! `GET /sim/cardpackage/page?appid[&openid]` (the payer's 卡包 as a page).

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, Route, web};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::{FaultScope, Faults, MessageServer, SimError, Simulator, TemplateStatus, ids};

fn done() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "ok": true }))
}

fn sim_error(e: &SimError) -> HttpResponse {
    let body = json!({ "error": e.to_string() });
    match e {
        SimError::InvalidOpenid => HttpResponse::BadRequest().json(body),
        SimError::AlreadyFollowing
        | SimError::NotFollowing
        | SimError::OrderTakenByOther
        | SimError::CardNotChoosable => HttpResponse::Conflict().json(body),
        SimError::AuthUrlExpired => HttpResponse::Gone().json(body),
        _ => HttpResponse::NotFound().json(body),
    }
}

/// A route whose handler is async (event pushes wait for delivery).
fn with_json_async<T, F, Fut>(sim: &Simulator, f: F) -> Route
where
    T: DeserializeOwned + 'static,
    F: Fn(Simulator, T) -> Fut + Clone + 'static,
    Fut: std::future::Future<Output = HttpResponse> + 'static,
{
    let sim = sim.clone();
    web::post().to(move |body: web::Json<T>| {
        let (sim, f) = (sim.clone(), f.clone());
        async move { f(sim, body.into_inner()).await }
    })
}

fn json_or_error<T: serde::Serialize>(r: Result<T, SimError>) -> HttpResponse {
    match r {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => sim_error(&e),
    }
}

/// A route taking a JSON body.
fn with_json<T, F>(sim: &Simulator, method: fn() -> Route, f: F) -> Route
where
    T: DeserializeOwned + 'static,
    F: Fn(&Simulator, T) -> HttpResponse + Clone + 'static,
{
    let sim = sim.clone();
    method().to(move |body: web::Json<T>| {
        let (sim, f) = (sim.clone(), f.clone());
        async move { f(&sim, body.into_inner()) }
    })
}

/// A route taking only the request.
fn with_req<F>(sim: &Simulator, method: fn() -> Route, f: F) -> Route
where
    F: Fn(&Simulator, &HttpRequest) -> HttpResponse + Clone + 'static,
{
    let sim = sim.clone();
    method().to(move |req: HttpRequest| {
        let (sim, f) = (sim.clone(), f.clone());
        async move { f(&sim, &req) }
    })
}

#[derive(Deserialize)]
struct AppBody {
    appid: String,
}

#[derive(Deserialize)]
struct FaultsBody {
    /// Absent: all paths.
    path: Option<String>,
    #[serde(default)]
    faults: Faults,
}

#[derive(Deserialize)]
struct CodeBody {
    appid: String,
    openid: Option<String>,
    unionid: Option<String>,
}

#[derive(Deserialize)]
struct PhoneBody {
    appid: String,
    phone: String,
}

#[derive(Deserialize)]
struct SubscriptionBody {
    appid: String,
    openid: String,
    template_id: String,
    #[serde(default = "one")]
    count: u32,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
struct LongTermBody {
    appid: String,
    template_id: String,
}

#[derive(Deserialize)]
struct FollowingBody {
    appid: String,
    openid: String,
    following: bool,
}

#[derive(Deserialize)]
struct StatusBody {
    appid: String,
    openid: String,
    status: TemplateStatus,
}

#[derive(Deserialize)]
struct ScanBody {
    ticket: String,
    openid: String,
    #[serde(default)]
    new_follower: bool,
}

#[derive(Deserialize)]
struct RealNameBody {
    openid: String,
    #[serde(default)]
    real_name: Option<String>,
    #[serde(default)]
    cred_id: Option<String>,
}

#[derive(Deserialize)]
struct UserBody {
    appid: String,
    /// Absent: a new user.
    #[serde(default)]
    openid: Option<String>,
}

#[derive(Deserialize)]
struct UserScanBody {
    ticket: String,
    openid: String,
}

#[derive(Deserialize)]
struct ClickBody {
    appid: String,
    openid: String,
    key: String,
}

#[derive(Deserialize)]
struct LinkBody {
    appid: String,
    openid: String,
    other_appid: String,
}

#[derive(Deserialize)]
struct AuthorizeInvoiceBody {
    auth_url: String,
    openid: String,
}

#[derive(Deserialize)]
struct ChooseBody {
    reimburser_appid: String,
    appid: String,
    openid: String,
    /// Card codes; absent or empty: every card the user can submit.
    #[serde(default)]
    codes: Vec<String>,
}

#[derive(Deserialize)]
struct SecondsBody {
    seconds: u64,
}

#[derive(Deserialize)]
struct SeedBody {
    seed: u64,
}

fn query(req: &HttpRequest) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect()
}

pub(crate) fn configure(sim: &Simulator, cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/sim/calls",
        with_req(sim, web::get, |s, req| {
            let calls = match query(req).get("path") {
                Some(p) => s.calls_to(p),
                None => s.calls(),
            };
            HttpResponse::Ok().json(calls)
        }),
    )
    .route(
        "/sim/calls",
        with_req(sim, web::delete, |s, _| {
            s.clear_calls();
            done()
        }),
    )
    .route("/sim/messages/subscribe", with_req(sim, web::get, |s, _| HttpResponse::Ok().json(s.sent_subscribe_messages())))
    .route("/sim/messages/template", with_req(sim, web::get, |s, _| HttpResponse::Ok().json(s.sent_template_messages())))
    .route("/sim/events", with_req(sim, web::get, |s, _| HttpResponse::Ok().json(s.pushed_events())))
    .route("/sim/qrcodes", with_req(sim, web::get, |s, _| HttpResponse::Ok().json(s.qrcodes())))
    .route(
        "/sim/faults",
        with_req(sim, web::get, |s, _| {
            let list: Vec<_> = s
                .faults()
                .into_iter()
                .map(|(scope, faults)| {
                    let path = match scope {
                        FaultScope::All => None,
                        FaultScope::Path(p) => Some(p),
                    };
                    json!({ "path": path, "faults": faults })
                })
                .collect();
            HttpResponse::Ok().json(list)
        }),
    )
    .route(
        "/sim/faults",
        with_json(sim, web::put, |s, b: FaultsBody| {
            s.set_faults(b.path.map_or(FaultScope::All, FaultScope::Path), b.faults);
            done()
        }),
    )
    .route(
        "/sim/faults",
        with_req(sim, web::delete, |s, _| {
            s.clear_faults();
            done()
        }),
    )
    .route(
        "/sim/seed",
        with_json(sim, web::post, |s, b: SeedBody| {
            s.reseed(b.seed);
            done()
        }),
    )
    .route(
        "/sim/quotas/reset",
        with_req(sim, web::post, |s, _| {
            s.reset_quotas();
            done()
        }),
    )
    .route(
        "/sim/clock/advance",
        with_json(sim, web::post, |s, b: SecondsBody| {
            s.advance_clock(Duration::from_secs(b.seconds));
            HttpResponse::Ok().json(json!({ "now": s.now() }))
        }),
    )
    .route(
        "/sim/tokens/invalidate",
        with_json(sim, web::post, |s, b: AppBody| {
            s.invalidate_tokens(&b.appid);
            done()
        }),
    )
    .route(
        "/sim/tokens/expire",
        with_json(sim, web::post, |s, b: AppBody| {
            s.expire_tokens(&b.appid);
            done()
        }),
    )
    .route(
        "/sim/codes/login",
        with_json(sim, web::post, |s, b: CodeBody| {
            let openid = b.openid.unwrap_or_else(ids::new_openid);
            let code = s.issue_login_code(&b.appid, &openid, b.unionid.as_deref());
            HttpResponse::Ok().json(json!({ "code": code, "openid": openid }))
        }),
    )
    .route(
        "/sim/codes/oauth",
        with_json(sim, web::post, |s, b: CodeBody| {
            let openid = b.openid.unwrap_or_else(ids::new_openid);
            let code = s.issue_oauth_code(&b.appid, &openid);
            HttpResponse::Ok().json(json!({ "code": code, "openid": openid }))
        }),
    )
    .route(
        "/sim/codes/phone",
        with_json(sim, web::post, |s, b: PhoneBody| {
            HttpResponse::Ok().json(json!({ "code": s.issue_phone_code(&b.appid, &b.phone) }))
        }),
    )
    .route(
        "/sim/subscriptions",
        with_json(sim, web::post, |s, b: SubscriptionBody| {
            s.grant_subscription(&b.appid, &b.openid, &b.template_id, b.count);
            HttpResponse::Ok().json(json!({ "quota": s.subscription_quota(&b.appid, &b.openid, &b.template_id) }))
        }),
    )
    .route(
        "/sim/subscriptions/long_term",
        with_json(sim, web::post, |s, b: LongTermBody| {
            s.grant_long_term(&b.appid, &b.template_id);
            done()
        }),
    )
    .route(
        "/sim/users/following",
        with_json(sim, web::post, |s, b: FollowingBody| {
            s.set_following(&b.appid, &b.openid, b.following);
            done()
        }),
    )
    .route(
        "/sim/users/template_status",
        with_json(sim, web::post, |s, b: StatusBody| {
            s.set_template_status(&b.appid, &b.openid, b.status);
            done()
        }),
    )
    .route(
        "/sim/counters/{appid}",
        with_req(sim, web::get, |s, req| {
            let appid = req.match_info().get("appid").unwrap_or_default();
            HttpResponse::Ok().json(json!({
                "token_issues": s.token_issues(appid),
                "force_refreshes_today": s.force_refreshes_today(appid),
                "classic_token_calls": s.calls_to(crate::paths::TOKEN).iter().filter(|c| c.appid.as_deref() == Some(appid)).count(),
                "ticket_issues": s.ticket_issues(appid),
            }))
        }),
    );

    let s = sim.clone();
    cfg.route(
        "/sim/apps/{appid}/message_server",
        web::put().to(move |req: HttpRequest, body: web::Json<Option<MessageServer>>| {
            let s = s.clone();
            async move {
                let appid = req.match_info().get("appid").unwrap_or_default();
                match s.set_message_server(appid, body.into_inner()) {
                    Ok(()) => done(),
                    Err(e) => sim_error(&e),
                }
            }
        }),
    );

    let s = sim.clone();
    cfg.route(
        "/sim/qrcodes/scan",
        web::post().to(move |body: web::Json<ScanBody>| {
            let s = s.clone();
            async move {
                match s.scan_qrcode(&body.ticket, &body.openid, body.new_follower).await {
                    Ok(ev) => HttpResponse::Ok().json(ev),
                    Err(e) => sim_error(&e),
                }
            }
        }),
    );

    // ---- real names, OAuth domains, menus ----
    cfg.route(
        "/sim/realname",
        with_json(sim, web::put, |s, b: RealNameBody| match (b.real_name, b.cred_id) {
            (Some(name), Some(id)) => {
                s.set_real_name(&b.openid, &name, &id);
                done()
            }
            _ => HttpResponse::BadRequest().json(json!({ "error": "real_name and cred_id are required" })),
        }),
    )
    .route(
        "/sim/realname",
        with_json(sim, web::delete, |s, b: RealNameBody| {
            s.clear_real_name(&b.openid);
            done()
        }),
    )
    .route(
        "/sim/codes/realname",
        with_json(sim, web::post, |s, b: CodeBody| {
            let openid = b.openid.unwrap_or_else(ids::new_openid);
            let code = s.issue_real_name_code(&b.appid, &openid);
            HttpResponse::Ok().json(json!({ "code": code, "openid": openid }))
        }),
    )
    .route(
        "/sim/apps/{appid}/menu",
        with_req(sim, web::get, |s, req| {
            let appid = req.match_info().get("appid").unwrap_or_default();
            match s.menu(appid) {
                Some(menu) => HttpResponse::Ok().json(menu),
                None => HttpResponse::NotFound().json(json!({ "error": "no menu" })),
            }
        }),
    )
    .route(
        "/sim/replies",
        with_req(sim, web::get, |s, _| HttpResponse::Ok().json(s.passive_replies())),
    );

    let s = sim.clone();
    cfg.route(
        "/sim/apps/{appid}/oauth_domains",
        web::put().to(move |req: HttpRequest, body: web::Json<Vec<String>>| {
            let s = s.clone();
            async move {
                let appid = req.match_info().get("appid").unwrap_or_default();
                let domains: Vec<&str> = body.iter().map(String::as_str).collect();
                match s.set_oauth_domains(appid, &domains) {
                    Ok(()) => done(),
                    Err(e) => sim_error(&e),
                }
            }
        }),
    );

    // ---- follower events ----
    cfg.route(
        "/sim/users/follow",
        with_json_async(sim, |s, b: UserBody| async move {
            let openid = b.openid.unwrap_or_else(ids::new_openid);
            json_or_error(s.follow(&b.appid, &openid).await)
        }),
    )
    .route(
        "/sim/users/scan",
        with_json_async(sim, |s, b: UserScanBody| async move {
            json_or_error(s.scan(&b.ticket, &b.openid).await)
        }),
    )
    .route(
        "/sim/users/click",
        with_json_async(sim, |s, b: ClickBody| async move {
            json_or_error(s.click_menu(&b.appid, &b.openid, &b.key).await)
        }),
    )
    .route(
        "/sim/users/unfollow",
        with_json_async(sim, |s, b: UserBody| async move {
            match b.openid {
                Some(openid) => json_or_error(s.unfollow(&b.appid, &openid).await),
                None => sim_error(&SimError::InvalidOpenid),
            }
        }),
    )
    .route(
        "/sim/users/link",
        with_json(sim, web::post, |s, b: LinkBody| {
            HttpResponse::Ok().json(json!({ "openid": s.openid_in(&b.appid, &b.openid, &b.other_appid) }))
        }),
    );

    // ---- card package ----
    cfg.route(
        "/sim/invoice/s_pappid/{appid}",
        with_req(sim, web::get, |s, req| {
            let appid = req.match_info().get("appid").unwrap_or_default();
            HttpResponse::Ok().json(json!({ "s_pappid": s.s_pappid(appid) }))
        }),
    )
    .route(
        "/sim/invoice/orders",
        with_req(sim, web::get, |s, _| HttpResponse::Ok().json(s.invoice_orders())),
    )
    .route(
        "/sim/invoice/templates",
        with_req(sim, web::get, |s, _| HttpResponse::Ok().json(s.bill_cards())),
    )
    .route(
        "/sim/invoice/authorize",
        with_json_async(sim, |s, b: AuthorizeInvoiceBody| async move {
            json_or_error(s.authorize_invoice(&b.auth_url, &b.openid).await)
        }),
    )
    .route(
        "/sim/invoice/choose",
        with_json(sim, web::post, |s, b: ChooseBody| {
            let codes: Vec<&str> = b.codes.iter().map(String::as_str).collect();
            json_or_error(s.choose_invoice(&b.reimburser_appid, &b.appid, &b.openid, &codes))
        }),
    );
}
