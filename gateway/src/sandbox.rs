//! The sandbox: WeChat played by the built-in simulator (`tests/wechat-sim`),
//! served by this process at `/sandbox/wechat` so a newcomer sees receipts
//! delivered without a WeChat account. Compiled only with the `sandbox` feature
//! (on by default, off in the container image): a production build has no
//! simulator in it. It serves on a loopback `server.host` only unless
//! `wechat.sandbox_allow_public` says otherwise (checked with the settings), and
//! its admin API (`/sandbox/wechat/sim/…`, which mints logins for any openid)
//! needs the operator token.

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::EitherBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{ResponseError, web};
use piaojia_core::pii::Keyring;
use piaojia_store::{Channel, ChannelKind, Store};
pub use piaojia_wechat_sim::Simulator as Sandbox;
use piaojia_wechat_sim::{AppKind, MessageServer, SimApp, SimConfig};

/// Where the gateway mounts the simulator.
pub const MOUNT: &str = "/sandbox/wechat";

/// A new simulator, and the base URL the WeChat client calls it at.
pub fn start(own_port: u16) -> (Sandbox, String) {
    (
        Sandbox::new(SimConfig::default()),
        format!("http://127.0.0.1:{own_port}{MOUNT}"),
    )
}

/// The sandbox page of what one payer sees (`piaojia demo` prints its link).
pub const PAYER_PAGE: &str = "/sandbox/payer";

/// The key in a payer page's link: only who holds the keys (the gateway, and
/// `piaojia demo` on its settings) can make one.
pub fn payer_page_key(keyring: &Keyring, appid: &str, openid: &str) -> String {
    let mut key = keyring.keyed_hash(
        piaojia_core::pii::purpose::hash::SANDBOX_PAYER_PAGE,
        format!("{appid}\0{openid}").as_bytes(),
    );
    key.truncate(32);
    key
}

/// The link of one payer's sandbox page.
pub fn payer_page_url(base_url: &str, keyring: &Keyring, appid: &str, openid: &str) -> String {
    let key = payer_page_key(keyring, appid, openid);
    format!("{base_url}{PAYER_PAGE}?appid={appid}&openid={openid}&key={key}")
}

/// A template keyword as WeChat labels it for the payer (the default fields;
/// others by their kind).
fn keyword_label(key: &str) -> String {
    let kind = key.trim_end_matches(|c: char| c.is_ascii_digit());
    match kind {
        "thing" => "开票单位",
        "amount" => "金额",
        "character_string" => "票据号码",
        "time" => "开票时间",
        "phrase" => "状态",
        _ => key,
    }
    .to_owned()
}

/// What the payer sees in WeChat: the template messages the official account
/// sent them, each linking the receipt's page. Opening the page also makes this
/// browser that payer's WeChat browser in the simulator (its cookie), so the
/// link opens the receipt through the silent web OAuth as inside WeChat.
async fn payer_page(req: actix_web::HttpRequest, state: web::Data<crate::state::AppState>) -> actix_web::HttpResponse {
    use subtle::ConstantTimeEq as _;
    let q: std::collections::BTreeMap<String, String> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or_default();
    let (appid, openid) = (get("appid"), get("openid"));
    let want = payer_page_key(&state.keyring, appid, openid);
    let ok = !appid.is_empty() && !openid.is_empty() && bool::from(want.as_bytes().ct_eq(get("key").as_bytes()));
    let Some(sim) = state.sandbox.as_ref().filter(|_| ok) else {
        return crate::pages::PageError::not_found().page();
    };
    let account = sim
        .app(appid)
        .and_then(|a| a.name.clone())
        .unwrap_or_else(|| appid.to_owned());
    let mut messages: Vec<crate::pages::views::DemoMessage> = sim
        .sent_template_messages()
        .into_iter()
        .filter(|m| m.appid == appid && m.touser == openid)
        .map(|m| crate::pages::views::DemoMessage {
            account: account.clone(),
            openid: m.touser.clone(),
            sent_at: m
                .at
                .with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).expect("+08:00"))
                .format("%Y-%m-%d %H:%M:%S")
                .to_string(),
            lines: m
                .data
                .as_object()
                .map(|d| {
                    d.iter()
                        .map(|(k, v)| (keyword_label(k), v["value"].as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default(),
            url: m.url.clone(),
        })
        .collect();
    messages.reverse();
    let intro = "这是沙箱（模拟微信）：下面是公众号发给这位付款人的模板消息，和他在微信里看到的一样。\
                 点“详情”打开票据页：模拟器把本浏览器当作这位付款人的微信，静默授权（snsapi_base）后直接进入。";
    let mut resp = crate::pages::page(crate::pages::views::demo_page(&messages, intro));
    let cookie = format!("wxsim_user_{appid}={openid}; Path={MOUNT}; HttpOnly; SameSite=Lax");
    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&cookie) {
        resp.headers_mut().append(actix_web::http::header::SET_COOKIE, v);
    }
    resp
}

/// Mounts the simulator; its `/sim/…` admin routes ask for the operator token.
pub fn mount(cfg: &mut web::ServiceConfig, sim: &Sandbox) {
    cfg.service(web::resource(PAYER_PAGE).route(web::get().to(payer_page)));
    cfg.service(
        web::scope(MOUNT)
            .wrap(from_fn(admin_needs_operator))
            .configure(|c| sim.configure(c)),
    );
}

async fn admin_needs_operator(
    req: ServiceRequest,
    next: Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl actix_web::body::MessageBody>>, actix_web::Error> {
    let admin = req
        .path()
        .strip_prefix(MOUNT)
        .is_some_and(|rest| rest.starts_with("/sim/") || rest == "/sim");
    if admin && let Err(refused) = crate::auth::operator::check(req.request()).await {
        let response = refused.error_response();
        return Ok(req.into_response(response).map_into_right_body());
    }
    next.call(req).await.map(ServiceResponse::map_into_left_body)
}

/// Keeps the simulator's apps in step with the configured channels, so a channel
/// added from the command line works in the sandbox without a restart.
pub fn spawn_sync(sim: Sandbox, store: Arc<dyn Store>, keyring: Arc<Keyring>, own_port: u16) {
    tokio::spawn(async move {
        loop {
            let mut channels = store.platform_channels().await.unwrap_or_default();
            for agency in store.list_agencies().await.unwrap_or_default() {
                channels.extend(store.channels_for_agency(agency.id).await.unwrap_or_default());
            }
            for channel in channels {
                register(&sim, &keyring, own_port, &channel);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}

/// Registers a channel's app (and long-term template) with the simulator.
fn register(sim: &Sandbox, keyring: &Keyring, own_port: u16, channel: &Channel) {
    if channel.long_term {
        sim.grant_long_term(&channel.wechat_app_id, &channel.template_id);
    }
    if sim.app(&channel.wechat_app_id).is_some() {
        return;
    }
    let purpose = piaojia_core::pii::purpose::wechat_app(&channel.wechat_app_id);
    let Ok(secret) = keyring.open(&channel.secret_sealed, &purpose) else {
        return;
    };
    let secret = String::from_utf8_lossy(&secret).into_owned();
    let kind = if channel.kind == ChannelKind::WechatTemplate {
        AppKind::OfficialAccount
    } else {
        AppKind::MiniProgram
    };
    let mut app = SimApp::new(&channel.wechat_app_id, &secret, kind);
    let open = |sealed: &Option<String>| {
        sealed
            .as_ref()
            .and_then(|t| keyring.open(t, &purpose).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    if let Some(token) = open(&channel.message_token_sealed) {
        app.message_server = Some(MessageServer {
            url: format!("http://127.0.0.1:{own_port}/v1/wechat/{}/events", channel.wechat_app_id),
            token,
            encoding_aes_key: open(&channel.encoding_aes_key_sealed),
        });
    }
    sim.add_app(app);
}
