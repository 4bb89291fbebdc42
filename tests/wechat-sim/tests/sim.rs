//! The simulator over HTTP, as a WeChat client would see it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use piaojia_wechat_sim::{
    FaultScope, Faults, MessageServer, OutageMode, SimApp, SimConfig, Simulator, TemplateStatus, new_openid, paths,
    secure,
};
use serde_json::{Value, json};

const MP: &str = "wxa1b2c3d4e5f60001";
const MP_SECRET: &str = "mp-secret-0123456789abcdef012345";
const OA: &str = "wxa1b2c3d4e5f60002";
const OA_SECRET: &str = "oa-secret-0123456789abcdef012345";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

fn config() -> SimConfig {
    SimConfig::default()
        .with_app(SimApp::mini_program(MP, MP_SECRET))
        .with_app(SimApp::official_account(OA, OA_SECRET).with_original_id("gh_0123456789ab"))
}

struct Env {
    sim: Simulator,
    base: String,
    http: reqwest::Client,
    handle: ServerHandle,
}

impl Env {
    async fn start(cfg: SimConfig) -> Self {
        let sim = Simulator::new(cfg);
        let (addr, handle) = sim.start().await.expect("simulator starts");
        Self {
            sim,
            base: format!("http://{addr}"),
            http: client(),
            handle,
        }
    }

    async fn get(&self, path_and_query: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{path_and_query}", self.base))
            .send()
            .await
            .expect("GET");
        resp.json().await.expect("JSON answer")
    }

    async fn post(&self, path_and_query: &str, body: &Value) -> Value {
        let resp = self
            .http
            .post(format!("{}{path_and_query}", self.base))
            .json(body)
            .send()
            .await
            .expect("POST");
        resp.json().await.expect("JSON answer")
    }

    async fn stable_token(&self, appid: &str, secret: &str, force: bool) -> Value {
        let body =
            json!({ "grant_type": "client_credential", "appid": appid, "secret": secret, "force_refresh": force });
        self.post(paths::STABLE_TOKEN, &body).await
    }

    async fn token(&self, appid: &str) -> String {
        let secret = if appid == MP { MP_SECRET } else { OA_SECRET };
        let r = self.stable_token(appid, secret, false).await;
        r["access_token"].as_str().expect("token").to_owned()
    }

    async fn qrcode(&self, token: &str, scene: &str) -> Value {
        let body = json!({ "expire_seconds": 600, "action_name": "QR_STR_SCENE", "action_info": { "scene": { "scene_str": scene } } });
        self.post(&format!("{}?access_token={token}", paths::QRCODE_CREATE), &body)
            .await
    }

    async fn stop(self) {
        self.handle.stop(false).await;
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("client")
}

fn errcode(v: &Value) -> i64 {
    v["errcode"].as_i64().unwrap_or(0)
}

/// One received push: its query and body.
type Received = (BTreeMap<String, String>, String);

/// A message server that records what it receives and answers `success`,
/// sleeping `slow_first` on the first request.
#[derive(Clone, Default)]
struct Inbox {
    got: Arc<Mutex<Vec<Received>>>,
    slow_first: Option<Duration>,
}

impl Inbox {
    async fn serve(&self) -> (String, ServerHandle) {
        let inbox = self.clone();
        let server = HttpServer::new(move || {
            let inbox = inbox.clone();
            App::new().route(
                "/wechat/events",
                web::post().to(move |req: HttpRequest, body: String| {
                    let inbox = inbox.clone();
                    async move {
                        let q = url::form_urlencoded::parse(req.query_string().as_bytes())
                            .into_owned()
                            .collect();
                        let first = {
                            let mut got = inbox.got.lock().expect("inbox");
                            got.push((q, body));
                            got.len() == 1
                        };
                        if let (true, Some(d)) = (first, inbox.slow_first) {
                            tokio::time::sleep(d).await;
                        }
                        HttpResponse::Ok().body("success")
                    }
                }),
            )
        })
        .workers(1)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .expect("bind");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        (format!("http://{addr}/wechat/events"), handle)
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().expect("inbox").clone()
    }
}

fn xml_field<'a>(xml: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let start = xml
        .find(&open)
        .map(|i| i + open.len())
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"));
    let inner = &xml[start..start + xml[start..].find(&format!("</{tag}>")).expect("closing tag")];
    inner
        .strip_prefix("<![CDATA[")
        .and_then(|s| s.strip_suffix("]]>"))
        .unwrap_or(inner)
}

// ---------- access tokens ----------

#[tokio::test]
async fn stable_token_normal_mode_returns_the_same_token() {
    let env = Env::start(config()).await;
    let a = env.stable_token(MP, MP_SECRET, false).await;
    let b = env.stable_token(MP, MP_SECRET, false).await;
    let token = a["access_token"].as_str().expect("token");
    assert!(token.len() >= 64, "token {token}");
    assert_eq!(a["expires_in"], 7200);
    assert!(a.get("errcode").is_none(), "success has no errcode: {a}");
    assert_eq!(b["access_token"], a["access_token"]);
    assert!(b["expires_in"].as_i64().expect("expires_in") <= 7200);
    assert_eq!(env.sim.token_issues(MP), 1);

    // Within the last 5 minutes a new token is handed out; the old one still works.
    env.sim.advance_clock(Duration::from_secs(7000));
    let c = env.stable_token(MP, MP_SECRET, false).await;
    assert_ne!(c["access_token"], a["access_token"]);
    assert!(env.sim.token_is_valid(token));
    assert_eq!(env.sim.token_issues(MP), 2);
    env.stop().await;
}

#[tokio::test]
async fn stable_token_errors() {
    let env = Env::start(config()).await;
    let r = env.stable_token(MP, "wrong", false).await;
    assert_eq!(errcode(&r), 40125);
    assert!(
        r["errmsg"]
            .as_str()
            .expect("errmsg")
            .starts_with("invalid appsecret rid: "),
        "{r}"
    );
    assert_eq!(
        errcode(&env.stable_token("wx0000000000000000", MP_SECRET, false).await),
        40013
    );
    let r = env
        .post(
            paths::STABLE_TOKEN,
            &json!({ "grant_type": "password", "appid": MP, "secret": MP_SECRET }),
        )
        .await;
    assert_eq!(errcode(&r), 40002);
    // stable_token is POST only.
    assert_eq!(errcode(&env.get(paths::STABLE_TOKEN).await), 43002);
    env.stop().await;
}

#[tokio::test]
async fn tokens_expire_after_a_short_lifetime() {
    let cfg = SimConfig {
        token_lifetime: Duration::from_secs(1),
        stable_refresh_window: Duration::ZERO,
        ..config()
    };
    let env = Env::start(cfg).await;
    let old = env.token(OA).await;
    assert_eq!(errcode(&env.qrcode(&old, "a").await), 0);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = env.qrcode(&old, "a").await;
    assert_eq!(errcode(&r), 42001, "{r}");
    let new = env.token(OA).await;
    assert_ne!(new, old);
    assert_eq!(errcode(&env.qrcode(&new, "a").await), 0);
    env.stop().await;
}

#[tokio::test]
async fn force_refresh_invalidates_and_is_limited_to_20_a_day() {
    let env = Env::start(config()).await;
    let old = env.token(OA).await;
    let r = env.stable_token(OA, OA_SECRET, true).await;
    let new = r["access_token"].as_str().expect("token").to_owned();
    assert_ne!(new, old);
    assert_eq!(errcode(&env.qrcode(&old, "a").await), 40001);
    assert_eq!(errcode(&env.qrcode(&new, "a").await), 0);
    for _ in 1..20 {
        assert_eq!(errcode(&env.stable_token(OA, OA_SECRET, true).await), 0);
    }
    let r = env.stable_token(OA, OA_SECRET, true).await;
    assert_eq!(errcode(&r), 45009, "{r}");
    assert_eq!(env.sim.force_refreshes_today(OA), 21);
    // Normal mode still works.
    assert_eq!(errcode(&env.stable_token(OA, OA_SECRET, false).await), 0);
    env.stop().await;
}

#[tokio::test]
async fn classic_token_is_served_and_counted() {
    let env = Env::start(config()).await;
    assert!(env.sim.calls_to(paths::TOKEN).is_empty());
    let stable = env.token(OA).await;
    let q = format!(
        "{}?grant_type=client_credential&appid={OA}&secret={OA_SECRET}",
        paths::TOKEN
    );
    let a = env.get(&q).await;
    let b = env.get(&q).await;
    assert_ne!(a["access_token"], b["access_token"]);
    assert_eq!(
        errcode(
            &env.get(&format!(
                "{}?grant_type=client_credential&appid={OA}&secret=x",
                paths::TOKEN
            ))
            .await
        ),
        40001
    );
    assert_eq!(env.sim.calls_to(paths::TOKEN).len(), 3);
    // Classic tokens do not touch stable ones; the replaced classic token dies after its grace.
    assert_eq!(errcode(&env.qrcode(&stable, "a").await), 0);
    let old_classic = a["access_token"].as_str().expect("token");
    assert_eq!(errcode(&env.qrcode(old_classic, "a").await), 0);
    env.sim.advance_clock(Duration::from_secs(301));
    assert_eq!(errcode(&env.qrcode(old_classic, "a").await), 40001);
    env.stop().await;
}

#[tokio::test]
async fn access_token_checks() {
    let env = Env::start(config()).await;
    let body = json!({ "action_name": "QR_STR_SCENE", "action_info": { "scene": { "scene_str": "x" } } });
    assert_eq!(errcode(&env.post(paths::QRCODE_CREATE, &body).await), 41001);
    assert_eq!(errcode(&env.qrcode("bad token!", "x").await), 40014);
    assert_eq!(
        errcode(&env.qrcode(&format!("95_{}", "A".repeat(133)), "x").await),
        40001
    );

    let token = env.token(OA).await;
    env.sim.expire_tokens(OA);
    assert_eq!(errcode(&env.qrcode(&token, "x").await), 42001);

    let token = env.token(OA).await;
    env.sim.invalidate_tokens(OA);
    assert_eq!(errcode(&env.qrcode(&token, "x").await), 40001);

    // A mini-program token cannot create official-account QR codes.
    let mp = env.token(MP).await;
    assert_eq!(errcode(&env.qrcode(&mp, "x").await), 48001);

    let calls = env.sim.calls_to(paths::QRCODE_CREATE);
    assert_eq!(calls.len(), 6);
    assert_eq!(calls[3].appid.as_deref(), Some(OA));
    assert_eq!(calls[3].response_errcode, 42001);
    env.stop().await;
}

// ---------- login, OAuth, phone ----------

fn session_path(code: &str) -> String {
    format!(
        "{}?appid={MP}&secret={MP_SECRET}&js_code={code}&grant_type=authorization_code",
        paths::JSCODE2SESSION
    )
}

#[tokio::test]
async fn jscode2session_codes_are_single_use_and_expire() {
    let env = Env::start(SimConfig {
        login_per_user_per_minute: 3,
        ..config()
    })
    .await;
    let openid = new_openid();
    let code = env
        .sim
        .issue_login_code(MP, &openid, Some("oUnion000000000000000000000X"));
    let r = env.get(&session_path(&code)).await;
    assert_eq!(r["openid"], openid.as_str());
    assert_eq!(r["unionid"], "oUnion000000000000000000000X");
    assert_eq!(r["session_key"].as_str().map(str::len), Some(24));
    assert_eq!(env.sim.session_key(MP, &openid).as_deref(), r["session_key"].as_str());

    assert_eq!(errcode(&env.get(&session_path(&code)).await), 40163);
    assert_eq!(errcode(&env.get(&session_path("no-such-code")).await), 40029);
    let r = env
        .get(&format!(
            "{}?appid={MP}&secret=x&js_code={code}&grant_type=authorization_code",
            paths::JSCODE2SESSION
        ))
        .await;
    assert_eq!(errcode(&r), 40125);

    let late = env.sim.issue_login_code(MP, &openid, None);
    env.sim.advance_clock(Duration::from_secs(301));
    assert_eq!(errcode(&env.get(&session_path(&late)).await), 40029);

    // 100 per user per minute in reality; 3 here (a few spare calls in case the minute turns).
    let mut codes = Vec::new();
    for _ in 0..8 {
        let code = env.sim.issue_login_code(MP, &openid, None);
        codes.push(errcode(&env.get(&session_path(&code)).await));
        if codes.last() == Some(&45011) {
            break;
        }
    }
    assert_eq!(codes.last(), Some(&45011), "{codes:?}");
    assert!(codes.len() >= 4, "{codes:?}");
    env.stop().await;
}

#[tokio::test]
async fn oauth_codes() {
    let env = Env::start(config()).await;
    let openid = new_openid();
    let code = env.sim.issue_oauth_code(OA, &openid);
    let path = |c: &str| {
        format!(
            "{}?appid={OA}&secret={OA_SECRET}&code={c}&grant_type=authorization_code",
            paths::OAUTH_ACCESS_TOKEN
        )
    };
    let r = env.get(&path(&code)).await;
    assert_eq!(r["openid"], openid.as_str());
    assert_eq!(r["scope"], "snsapi_base");
    assert_eq!(r["expires_in"], 7200);
    assert!(r["access_token"].is_string() && r["refresh_token"].is_string());
    assert_eq!(errcode(&env.get(&path(&code)).await), 40163);
    assert_eq!(errcode(&env.get(&path("bogus")).await), 40029);
    env.stop().await;
}

#[tokio::test]
async fn phone_numbers() {
    let env = Env::start(config()).await;
    let token = env.token(MP).await;
    let path = format!("{}?access_token={token}", paths::PHONE_NUMBER);
    let code = env.sim.issue_phone_code(MP, "13800138000");
    let r = env.post(&path, &json!({ "code": code })).await;
    assert_eq!(r["errcode"], 0);
    assert_eq!(r["errmsg"], "ok");
    assert_eq!(r["phone_info"]["phoneNumber"], "13800138000");
    assert_eq!(r["phone_info"]["purePhoneNumber"], "13800138000");
    assert_eq!(r["phone_info"]["countryCode"], "86");
    assert_eq!(r["phone_info"]["watermark"]["appid"], MP);
    assert_eq!(errcode(&env.post(&path, &json!({ "code": code })).await), 40029);
    assert_eq!(errcode(&env.post(&path, &json!({})).await), 47001);

    let hk = env.sim.issue_phone_code(MP, "+852 91234567");
    let r = env.post(&path, &json!({ "code": hk })).await;
    assert_eq!(r["phone_info"]["countryCode"], "852");
    assert_eq!(r["phone_info"]["purePhoneNumber"], "91234567");
    env.stop().await;
}

// ---------- subscribe messages ----------

fn subscribe_body(openid: &str, template: &str, thing: &str) -> Value {
    json!({
        "touser": openid,
        "template_id": template,
        "page": "pages/receipt/index?id=1",
        "data": { "thing1": { "value": thing }, "amount2": { "value": "¥12.50" }, "time3": { "value": "2024-05-01 10:00" } },
        "miniprogram_state": "formal",
        "lang": "zh_CN",
    })
}

#[tokio::test]
async fn subscribe_send_consumes_one_time_consents() {
    let env = Env::start(config()).await;
    let token = env.token(MP).await;
    let path = format!("{}?access_token={token}", paths::SUBSCRIBE_SEND);
    let openid = new_openid();
    env.sim.grant_subscription(MP, &openid, "TPL_RECEIPT", 1);

    let too_long = "一二三四五六七八九十一二三四五六七八九十一";
    let r = env.post(&path, &subscribe_body(&openid, "TPL_RECEIPT", too_long)).await;
    assert_eq!(errcode(&r), 47003);
    assert!(
        r["errmsg"]
            .as_str()
            .expect("errmsg")
            .starts_with("argument invalid! data.thing1.value invalid"),
        "{r}"
    );
    assert_eq!(
        env.sim.subscription_quota(MP, &openid, "TPL_RECEIPT"),
        1,
        "a rejected send consumes nothing"
    );

    let r = env
        .post(&path, &subscribe_body(&openid, "TPL_RECEIPT", "电子票据已开具"))
        .await;
    assert_eq!(r["errcode"], 0);
    assert_eq!(r["errmsg"], "ok");
    let r = env
        .post(&path, &subscribe_body(&openid, "TPL_RECEIPT", "电子票据已开具"))
        .await;
    assert_eq!(errcode(&r), 43101);

    let sent = env.sim.sent_subscribe_messages();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].touser, openid);
    assert_eq!(sent[0].template_id, "TPL_RECEIPT");
    assert_eq!(sent[0].data["thing1"]["value"], "电子票据已开具");

    assert_eq!(
        errcode(
            &env.post(&path, &subscribe_body("not-an-openid", "TPL_RECEIPT", "x"))
                .await
        ),
        40003
    );
    let mut bad_amount = subscribe_body(&openid, "TPL_RECEIPT", "x");
    bad_amount["data"]["amount2"]["value"] = json!("twelve");
    assert_eq!(errcode(&env.post(&path, &bad_amount).await), 47003);

    env.sim.grant_long_term(MP, "TPL_LONG");
    for _ in 0..3 {
        assert_eq!(
            errcode(&env.post(&path, &subscribe_body(&openid, "TPL_LONG", "x")).await),
            0
        );
    }

    let oa = env.token(OA).await;
    let r = env
        .post(
            &format!("{}?access_token={oa}", paths::SUBSCRIBE_SEND),
            &subscribe_body(&openid, "TPL_LONG", "x"),
        )
        .await;
    assert_eq!(errcode(&r), 48001);
    env.stop().await;
}

// ---------- template messages and event pushes ----------

fn template_body(openid: &str, client_msg_id: Option<&str>) -> Value {
    let mut body = json!({
        "touser": openid,
        "template_id": "TPL_OA_RECEIPT",
        "url": "https://piaojia.example/r/1",
        "miniprogram": { "appid": MP, "pagepath": "pages/receipt/index?id=1" },
        "data": {
            "first": { "value": "This is ignored by WeChat, so its length does not matter at all" },
            "thing1": { "value": "市第一人民医院" },
            "character_string2": { "value": "2024-0001-ABCDEFG" },
        },
    });
    if let Some(id) = client_msg_id {
        body["client_msg_id"] = json!(id);
    }
    body
}

#[tokio::test]
async fn template_send_pushes_templatesendjobfinish() {
    let inbox = Inbox::default();
    let (url, inbox_handle) = inbox.serve().await;
    let server = MessageServer {
        url,
        token: "evt-token".into(),
        encoding_aes_key: None,
    };
    let env = Env::start(config()).await;
    env.sim.set_message_server(OA, Some(server)).expect("known app");
    let token = env.token(OA).await;
    let path = format!("{}?access_token={token}", paths::TEMPLATE_SEND);
    let openid = new_openid();

    let r = env.post(&path, &template_body(&openid, None)).await;
    assert_eq!(r["errcode"], 0);
    assert_eq!(r["errmsg"], "ok");
    let msgid = r["msgid"].as_u64().expect("numeric msgid");

    let pushes = env.sim.wait_for_pushes(1, Duration::from_secs(5)).await;
    assert_eq!(pushes.len(), 1);
    assert!(pushes[0].delivered && pushes[0].acknowledged);
    let got = inbox.received();
    assert_eq!(got.len(), 1);
    let (q, xml) = &got[0];
    assert_eq!(
        q["signature"],
        secure::signature("evt-token", &q["timestamp"], &q["nonce"])
    );
    assert_eq!(q["openid"], openid);
    assert!(!q.contains_key("encrypt_type"));
    assert_eq!(xml_field(xml, "ToUserName"), "gh_0123456789ab");
    assert_eq!(xml_field(xml, "FromUserName"), openid);
    assert_eq!(xml_field(xml, "MsgType"), "event");
    assert_eq!(xml_field(xml, "Event"), "TEMPLATESENDJOBFINISH");
    assert_eq!(xml_field(xml, "MsgID"), msgid.to_string());
    assert_eq!(xml_field(xml, "Status"), "success");
    assert!(xml_field(xml, "CreateTime").parse::<i64>().is_ok());

    // A user who blocked the account.
    let blocker = new_openid();
    env.sim.set_template_status(OA, &blocker, TemplateStatus::UserBlock);
    assert_eq!(errcode(&env.post(&path, &template_body(&blocker, None)).await), 0);
    env.sim.wait_for_pushes(2, Duration::from_secs(5)).await;
    assert_eq!(xml_field(&inbox.received()[1].1, "Status"), "failed:user block");

    // Values over 20 characters and unfollowed users are refused.
    let mut long = template_body(&openid, None);
    long["data"]["thing1"]["value"] = json!("一二三四五六七八九十一二三四五六七八九十一");
    assert_eq!(errcode(&env.post(&path, &long).await), 47003);
    let gone = new_openid();
    env.sim.set_following(OA, &gone, false);
    assert_eq!(errcode(&env.post(&path, &template_body(&gone, None)).await), 43004);

    let sent = env.sim.sent_template_messages();
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0].msgid, msgid);
    assert_eq!(
        sent[0].miniprogram.as_ref().map(|m| m["appid"].clone()),
        Some(json!(MP))
    );
    env.stop().await;
    inbox_handle.stop(false).await;
}

#[tokio::test]
async fn template_client_msg_id_dedupes() {
    let inbox = Inbox::default();
    let (url, inbox_handle) = inbox.serve().await;
    let env = Env::start(SimConfig {
        template_event_delay: Duration::from_millis(20),
        ..config()
    })
    .await;
    env.sim
        .set_message_server(
            OA,
            Some(MessageServer {
                url,
                token: "t".into(),
                encoding_aes_key: None,
            }),
        )
        .expect("app");
    let token = env.token(OA).await;
    let path = format!("{}?access_token={token}", paths::TEMPLATE_SEND);
    let openid = new_openid();
    let a = env.post(&path, &template_body(&openid, Some("receipt-1-v1"))).await;
    let b = env.post(&path, &template_body(&openid, Some("receipt-1-v1"))).await;
    let c = env.post(&path, &template_body(&openid, Some("receipt-1-v2"))).await;
    assert_eq!(a["msgid"], b["msgid"]);
    assert_ne!(a["msgid"], c["msgid"]);
    assert_eq!(env.sim.sent_template_messages().len(), 2);
    env.sim.wait_for_pushes(2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(inbox.received().len(), 2);
    env.stop().await;
    inbox_handle.stop(false).await;
}

#[tokio::test]
async fn secure_mode_push_is_encrypted_and_signed() {
    let inbox = Inbox::default();
    let (url, inbox_handle) = inbox.serve().await;
    let env = Env::start(config()).await;
    let server = MessageServer {
        url,
        token: "sec-token".into(),
        encoding_aes_key: Some(AES_KEY.into()),
    };
    env.sim.set_message_server(OA, Some(server)).expect("app");
    let token = env.token(OA).await;
    let openid = new_openid();
    let r = env
        .post(
            &format!("{}?access_token={token}", paths::TEMPLATE_SEND),
            &template_body(&openid, None),
        )
        .await;
    assert_eq!(r["errcode"], 0);
    env.sim.wait_for_pushes(1, Duration::from_secs(5)).await;
    let (q, envelope) = inbox.received().remove(0);
    assert_eq!(q["encrypt_type"], "aes");
    assert_eq!(
        q["signature"],
        secure::signature("sec-token", &q["timestamp"], &q["nonce"])
    );
    let encrypt = xml_field(&envelope, "Encrypt");
    assert_eq!(
        q["msg_signature"],
        secure::msg_signature("sec-token", &q["timestamp"], &q["nonce"], encrypt)
    );
    assert_eq!(xml_field(&envelope, "ToUserName"), "gh_0123456789ab");
    let (plain, appid) = secure::open(AES_KEY, encrypt).expect("decrypts");
    assert_eq!(appid, OA);
    assert_eq!(xml_field(&plain, "Event"), "TEMPLATESENDJOBFINISH");
    assert_eq!(xml_field(&plain, "MsgID"), r["msgid"].to_string());
    env.stop().await;
    inbox_handle.stop(false).await;
}

#[test]
fn secure_mode_matches_the_official_vectors() {
    // Tencent's WXBizMsgCrypt sample (shared/vectors/wechat_vectors.json: tencent_sample_java_encrypt).
    let enc = secure::seal_with(AES_KEY, "wxb11529c136998cb6", "我是中文abcd123", *b"aaaabbbbccccdddd").expect("seal");
    assert_eq!(
        enc,
        "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg=="
    );
    assert_eq!(
        secure::open(AES_KEY, &enc),
        Some(("我是中文abcd123".to_owned(), "wxb11529c136998cb6".to_owned()))
    );
    // Official message-push doc: secure_reply.
    let key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let enc = secure::seal_with(
        key,
        "wxba5fad812f8e6fb9",
        "{\"demo_resp\":\"good luck\"}",
        *b"707722b803182950",
    )
    .expect("seal");
    assert_eq!(
        enc,
        "ELGduP2YcVatjqIS+eZbp80MNLoAUWvzzyJxgGzxZO/5sAvd070Bs6qrLARC9nVHm48Y4hyRbtzve1L32tmxSQ=="
    );
    assert_eq!(
        secure::msg_signature("AAAAA", "1713424427", "415670741", &enc),
        "1b9339964ed2e271e7c7b6ff2b0ef902fc94dea1"
    );
    assert_eq!(
        secure::signature("AAAAA", "1714036504", "1514711492"),
        "f464b24fc39322e44b38aa78f5edd27bd1441696"
    );
}

#[tokio::test]
async fn slow_message_servers_get_the_event_again() {
    let inbox = Inbox {
        slow_first: Some(Duration::from_millis(800)),
        ..Inbox::default()
    };
    let (url, inbox_handle) = inbox.serve().await;
    let cfg = SimConfig {
        push_timeout: Duration::from_millis(300),
        template_event_delay: Duration::ZERO,
        ..config()
    };
    let env = Env::start(cfg).await;
    env.sim
        .set_message_server(
            OA,
            Some(MessageServer {
                url,
                token: "t".into(),
                encoding_aes_key: None,
            }),
        )
        .expect("app");
    let token = env.token(OA).await;
    let r = env
        .post(
            &format!("{}?access_token={token}", paths::TEMPLATE_SEND),
            &template_body(&new_openid(), None),
        )
        .await;
    assert_eq!(r["errcode"], 0);
    let pushes = env.sim.wait_for_pushes(1, Duration::from_secs(5)).await;
    assert_eq!(pushes[0].attempts.len(), 2, "{:?}", pushes[0].attempts);
    assert!(pushes[0].attempts[0].error.is_some());
    assert!(pushes[0].delivered);
    let got = inbox.received();
    assert_eq!(got.len(), 2);
    assert_eq!(xml_field(&got[0].1, "MsgID"), xml_field(&got[1].1, "MsgID"));
    env.stop().await;
    inbox_handle.stop(false).await;
}

// ---------- QR codes ----------

#[tokio::test]
async fn qrcodes_and_scans() {
    let inbox = Inbox::default();
    let (url, inbox_handle) = inbox.serve().await;
    let env = Env::start(config()).await;
    env.sim
        .set_message_server(
            OA,
            Some(MessageServer {
                url,
                token: "t".into(),
                encoding_aes_key: None,
            }),
        )
        .expect("app");
    let token = env.token(OA).await;
    let r = env.qrcode(&token, "bind:receipt:42").await;
    assert_eq!(r["expire_seconds"], 600);
    let ticket = r["ticket"].as_str().expect("ticket").to_owned();
    assert!(r["url"].as_str().expect("url").starts_with("http://weixin.qq.com/q/"));

    let path = format!("{}?access_token={token}", paths::QRCODE_CREATE);
    let limit = json!({ "action_name": "QR_LIMIT_STR_SCENE", "action_info": { "scene": { "scene_str": "payer" } } });
    let r = env.post(&path, &limit).await;
    assert!(r["ticket"].is_string() && r.get("expire_seconds").is_none(), "{r}");
    assert_eq!(errcode(&env.qrcode(&token, &"x".repeat(65)).await), 40097);
    assert_eq!(errcode(&env.qrcode(&token, "").await), 40097);
    let bad = json!({ "action_name": "QR_NOPE", "action_info": { "scene": { "scene_id": 1 } } });
    assert_eq!(errcode(&env.post(&path, &bad).await), 40097);

    let openid = new_openid();
    let ev = env.sim.scan_qrcode(&ticket, &openid, true).await.expect("scan");
    assert!(ev.delivered);
    let ev = env.sim.scan_qrcode(&ticket, &openid, false).await.expect("scan");
    assert!(ev.acknowledged);
    let got = inbox.received();
    assert_eq!(xml_field(&got[0].1, "Event"), "subscribe");
    assert_eq!(xml_field(&got[0].1, "EventKey"), "qrscene_bind:receipt:42");
    assert_eq!(xml_field(&got[0].1, "Ticket"), ticket);
    assert_eq!(xml_field(&got[1].1, "Event"), "SCAN");
    assert_eq!(xml_field(&got[1].1, "EventKey"), "bind:receipt:42");

    env.sim.advance_clock(Duration::from_secs(601));
    assert!(env.sim.scan_qrcode(&ticket, &openid, false).await.is_err());
    env.stop().await;
    inbox_handle.stop(false).await;
}

// ---------- faults ----------

#[tokio::test]
async fn latency_fault_shows_in_recorded_latency() {
    let env = Env::start(config()).await;
    let token = env.token(OA).await;
    env.sim
        .set_faults(FaultScope::Path(paths::QRCODE_CREATE.into()), Faults::latency(150, 0));
    env.sim.clear_calls();
    assert_eq!(errcode(&env.qrcode(&token, "a").await), 0);
    let _ = env.token(OA).await;
    let calls = env.sim.calls();
    assert!(calls[0].latency_ms >= 150, "{:?}", calls[0]);
    assert!(calls[1].latency_ms < 150, "other paths are not slowed: {:?}", calls[1]);
    env.stop().await;
}

#[tokio::test]
async fn error_rate_is_reproducible_with_a_seed() {
    let env = Env::start(config()).await;
    let token = env.token(OA).await;
    env.sim.set_faults(FaultScope::All, Faults::error_rate(0.5));
    let mut runs = Vec::new();
    for _ in 0..2 {
        env.sim.reseed(42);
        let mut codes = Vec::new();
        for _ in 0..30 {
            codes.push(errcode(&env.qrcode(&token, "a").await));
        }
        runs.push(codes);
    }
    assert_eq!(runs[0], runs[1]);
    let failures = runs[0].iter().filter(|&&c| c == -1).count();
    assert!((5..=25).contains(&failures), "{failures} of 30 failed");
    assert!(runs[0].iter().all(|&c| c == 0 || c == -1));

    env.sim.set_faults(
        FaultScope::All,
        Faults::error_rate_with(1.0, 45011, "api minute-quota reach limit"),
    );
    assert_eq!(errcode(&env.qrcode(&token, "a").await), 45011);
    env.stop().await;
}

#[tokio::test]
async fn timeouts_answer_late_but_still_take_effect() {
    let env = Env::start(config()).await;
    let token = env.token(OA).await;
    env.sim.set_faults(
        FaultScope::Path(paths::QRCODE_CREATE.into()),
        Faults::timeouts(1.0, 700),
    );
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .expect("client");
    let body = json!({ "action_name": "QR_LIMIT_STR_SCENE", "action_info": { "scene": { "scene_str": "t" } } });
    let sent = impatient
        .post(format!("{}{}?access_token={token}", env.base, paths::QRCODE_CREATE))
        .json(&body)
        .send()
        .await;
    assert!(sent.is_err_and(|e| e.is_timeout()));
    assert_eq!(
        env.sim.qrcodes().len(),
        1,
        "the call took effect before its late answer"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let calls = env.sim.calls_to(paths::QRCODE_CREATE);
    assert_eq!(calls.len(), 1);
    assert!(calls[0].latency_ms >= 700);
    assert_eq!(env.sim.qrcodes().len(), 1, "the late call still created the code");
    env.stop().await;
}

#[tokio::test]
async fn daily_quota_fault_gives_45009() {
    let env = Env::start(config()).await;
    let token = env.token(OA).await;
    env.sim
        .set_faults(FaultScope::Path(paths::QRCODE_CREATE.into()), Faults::daily_quota(2));
    assert_eq!(errcode(&env.qrcode(&token, "a").await), 0);
    assert_eq!(errcode(&env.qrcode(&token, "a").await), 0);
    assert_eq!(errcode(&env.qrcode(&token, "a").await), 45009);
    // A new Beijing day starts over.
    env.sim.advance_clock(Duration::from_secs(86_400));
    let token = env.token(OA).await;
    assert_eq!(errcode(&env.qrcode(&token, "a").await), 0);
    env.stop().await;
}

#[tokio::test]
async fn outages() {
    let env = Env::start(config()).await;
    let token = env.token(OA).await;
    env.sim.set_faults(FaultScope::All, Faults::outage(OutageMode::Http503));
    let url = format!("{}{}?access_token={token}", env.base, paths::QRCODE_CREATE);
    let resp = env.http.post(&url).json(&json!({})).send().await.expect("answer");
    assert_eq!(resp.status().as_u16(), 503);
    env.sim
        .set_faults(FaultScope::All, Faults::outage(OutageMode::SystemError));
    assert_eq!(errcode(&env.qrcode(&token, "a").await), -1);
    let until = env.sim.now() + chrono::TimeDelta::seconds(60);
    env.sim
        .set_faults(FaultScope::All, Faults::outage_until(until, OutageMode::Http503));
    assert_eq!(
        env.http
            .post(&url)
            .json(&json!({}))
            .send()
            .await
            .expect("answer")
            .status()
            .as_u16(),
        503
    );
    env.sim.advance_clock(Duration::from_secs(61));
    assert_eq!(errcode(&env.qrcode(&token, "a").await), 0);
    let calls = env.sim.calls_to(paths::QRCODE_CREATE);
    assert_eq!(calls[0].http_status, 503);
    assert_eq!(calls[0].response_errcode, -1);
    env.sim.clear_faults();
    assert!(env.sim.faults().is_empty());
    env.stop().await;
}

// ---------- admin API and mounting ----------

#[tokio::test]
async fn admin_api_controls_the_simulator() {
    let env = Env::start(config()).await;
    let admin = |p: &str| format!("{}{p}", env.base);

    let r: Value = env
        .http
        .post(admin("/sim/codes/login"))
        .json(&json!({ "appid": MP }))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    let (code, openid) = (r["code"].as_str().expect("code"), r["openid"].as_str().expect("openid"));
    assert_eq!(env.get(&session_path(code)).await["openid"], openid);

    let faults = json!({ "path": paths::QRCODE_CREATE, "faults": { "error_rate": 1.0, "errcode": -1 } });
    assert!(
        env.http
            .put(admin("/sim/faults"))
            .json(&faults)
            .send()
            .await
            .expect("admin")
            .status()
            .is_success()
    );
    let token = env.token(OA).await;
    assert_eq!(errcode(&env.qrcode(&token, "a").await), -1);
    let listed: Value = env
        .http
        .get(admin("/sim/faults"))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    assert_eq!(listed[0]["path"], paths::QRCODE_CREATE);
    assert!(
        env.http
            .delete(admin("/sim/faults"))
            .send()
            .await
            .expect("admin")
            .status()
            .is_success()
    );
    assert_eq!(errcode(&env.qrcode(&token, "a").await), 0);

    env.http
        .post(admin("/sim/tokens/invalidate"))
        .json(&json!({ "appid": OA }))
        .send()
        .await
        .expect("admin");
    assert_eq!(errcode(&env.qrcode(&token, "a").await), 40001);

    let calls: Value = env
        .http
        .get(admin(&format!("/sim/calls?path={}", paths::JSCODE2SESSION)))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    assert_eq!(calls.as_array().map(Vec::len), Some(1));
    assert_eq!(calls[0]["query"]["js_code"], code);
    assert_eq!(calls[0]["appid"], MP);

    let counters: Value = env
        .http
        .get(admin(&format!("/sim/counters/{OA}")))
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    assert_eq!(counters["token_issues"], 1);
    assert_eq!(counters["classic_token_calls"], 0);
    env.stop().await;
}

#[tokio::test]
async fn mounts_under_a_scope() {
    let sim = Simulator::new(config());
    let s = sim.clone();
    let server = HttpServer::new(move || {
        let s = s.clone();
        App::new().service(web::scope("/sandbox/wechat").configure(move |c| s.configure(c)))
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .expect("bind");
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);

    let body = json!({ "grant_type": "client_credential", "appid": MP, "secret": MP_SECRET });
    let r: Value = client()
        .post(format!("http://{addr}/sandbox/wechat/cgi-bin/stable_token"))
        .json(&body)
        .send()
        .await
        .expect("answer")
        .json()
        .await
        .expect("json");
    assert!(r["access_token"].is_string());
    assert_eq!(sim.calls()[0].path, paths::STABLE_TOKEN);
    handle.stop(false).await;
}
