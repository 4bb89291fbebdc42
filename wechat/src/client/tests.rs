//! Client behaviour against a tiny in-test WeChat stand-in (actix-web on 127.0.0.1:0).

use std::collections::HashMap;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use actix_web::{App, HttpResponse, HttpServer, web};

use super::*;

/// Issues tokens like WeChat's normal-mode stable_token: the current one until rotated.
struct Sim {
    stable_calls: AtomicUsize,
    send_calls: AtomicUsize,
    generation: AtomicUsize,
    stable_delay: Duration,
    expires_in: i64,
    last_body: StdMutex<Option<Value>>,
    last_query: StdMutex<Option<HashMap<String, String>>>,
}

impl Sim {
    fn new() -> Arc<Self> {
        Self::with_delay(Duration::ZERO)
    }

    fn with_delay(stable_delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            stable_calls: AtomicUsize::new(0),
            send_calls: AtomicUsize::new(0),
            generation: AtomicUsize::new(1),
            stable_delay,
            expires_in: 7200,
            last_body: StdMutex::new(None),
            last_query: StdMutex::new(None),
        })
    }

    fn current(&self) -> String {
        format!("TOKEN-{}", self.generation.load(Ordering::SeqCst))
    }

    /// As if the token had been replaced elsewhere (e.g. someone forced a refresh).
    fn rotate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn stable(&self) -> usize {
        self.stable_calls.load(Ordering::SeqCst)
    }

    fn sends(&self) -> usize {
        self.send_calls.load(Ordering::SeqCst)
    }

    fn check_token(&self, q: &HashMap<String, String>) -> Option<HttpResponse> {
        if q.get("access_token") != Some(&self.current()) {
            return Some(HttpResponse::Ok().json(json!({"errcode": 40001, "errmsg": "invalid credential"})));
        }
        None
    }
}

type Data = web::Data<Arc<Sim>>;
type Q = web::Query<HashMap<String, String>>;

async fn stable_token(sim: Data, body: web::Json<Value>) -> HttpResponse {
    sim.stable_calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(sim.stable_delay).await;
    if body["grant_type"] != "client_credential" || body["force_refresh"] != false {
        return HttpResponse::Ok().json(json!({"errcode": 40002, "errmsg": "invalid grant_type"}));
    }
    if body["secret"] != "s3cret" {
        return HttpResponse::Ok().json(json!({"errcode": 40125, "errmsg": "invalid appsecret"}));
    }
    HttpResponse::Ok().json(json!({"access_token": sim.current(), "expires_in": sim.expires_in}))
}

async fn subscribe_send(sim: Data, q: Q, body: web::Json<Value>) -> HttpResponse {
    sim.send_calls.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = sim.check_token(&q) {
        return r;
    }
    *sim.last_body.lock().expect("lock") = Some(body.into_inner());
    HttpResponse::Ok().json(json!({"errcode": 0, "errmsg": "ok"}))
}

async fn template_send(sim: Data, q: Q, body: web::Json<Value>) -> HttpResponse {
    sim.send_calls.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = sim.check_token(&q) {
        return r;
    }
    *sim.last_body.lock().expect("lock") = Some(body.into_inner());
    HttpResponse::Ok().json(json!({"errcode": 0, "errmsg": "ok", "msgid": 200163836}))
}

async fn qrcode_create(sim: Data, q: Q, body: web::Json<Value>) -> HttpResponse {
    if let Some(r) = sim.check_token(&q) {
        return r;
    }
    let mut resp =
        json!({"ticket": "gQH47joAAAAAAAAAASxodHRwOi8v", "url": "http://weixin.qq.com/q/kZgfwMTm72WWPkovabbI"});
    if let Some(secs) = body.get("expire_seconds") {
        resp["expire_seconds"] = secs.clone();
    }
    *sim.last_body.lock().expect("lock") = Some(body.into_inner());
    HttpResponse::Ok().json(resp)
}

async fn phone(sim: Data, q: Q, body: web::Json<Value>) -> HttpResponse {
    if let Some(r) = sim.check_token(&q) {
        return r;
    }
    if body["code"] != "phonecode" {
        return HttpResponse::Ok().json(json!({"errcode": 40029, "errmsg": "invalid code"}));
    }
    HttpResponse::Ok().json(json!({"errcode": 0, "errmsg": "ok", "phone_info": {
        "phoneNumber": "13800138000", "purePhoneNumber": "13800138000", "countryCode": "86",
        "watermark": {"timestamp": 1637744274, "appid": "wxapp"}}}))
}

async fn jscode2session(sim: Data, q: Q) -> HttpResponse {
    let q = q.into_inner();
    *sim.last_query.lock().expect("lock") = Some(q.clone());
    if q.contains_key("access_token") {
        return HttpResponse::BadRequest().finish();
    }
    match q.get("js_code").map(String::as_str) {
        Some("used") => HttpResponse::Ok().json(json!({"errcode": 40163, "errmsg": "code been used"})),
        _ => HttpResponse::Ok().json(json!({"openid": "oUser1234567", "session_key": "c2Vzc2lvbg==", "unionid": "uX"})),
    }
}

async fn oauth2(q: Q) -> HttpResponse {
    if q.get("code").map(String::as_str) != Some("webcode") {
        return HttpResponse::Ok().json(json!({"errcode": 40029, "errmsg": "invalid code"}));
    }
    HttpResponse::Ok().json(json!({"access_token": "WEB", "expires_in": 7200, "refresh_token": "R",
        "openid": "oWeb123456", "scope": "snsapi_base"}))
}

async fn always_40001(sim: Data) -> HttpResponse {
    sim.send_calls.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Ok().json(json!({"errcode": 42001, "errmsg": "access_token expired"}))
}

async fn errcode(sim: Data, path: web::Path<i64>) -> HttpResponse {
    sim.send_calls.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Ok().json(json!({"errcode": path.into_inner(), "errmsg": "simulated"}))
}

async fn status500() -> HttpResponse {
    HttpResponse::InternalServerError().body("upstream broke")
}

async fn slow() -> HttpResponse {
    tokio::time::sleep(Duration::from_secs(3)).await;
    HttpResponse::Ok().json(json!({"errcode": 0}))
}

async fn garbage() -> HttpResponse {
    HttpResponse::Ok().body("<html>not json</html>")
}

async fn start(sim: Arc<Sim>) -> String {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = web::Data::new(sim);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route(PATH_STABLE_TOKEN, web::post().to(stable_token))
            .route(PATH_SUBSCRIBE_SEND, web::post().to(subscribe_send))
            .route(PATH_TEMPLATE_SEND, web::post().to(template_send))
            .route(PATH_QRCODE_CREATE, web::post().to(qrcode_create))
            .route(PATH_GET_PHONE_NUMBER, web::post().to(phone))
            .route(PATH_JSCODE2SESSION, web::get().to(jscode2session))
            .route(PATH_OAUTH2_ACCESS_TOKEN, web::get().to(oauth2))
            .route("/always40001", web::post().to(always_40001))
            .route("/err/{code}", web::post().to(errcode))
            .route("/status500", web::post().to(status500))
            .route("/slow", web::post().to(slow))
            .route("/garbage", web::post().to(garbage))
    })
    .workers(2)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .expect("bind");
    let addr = server.addrs()[0];
    tokio::spawn(server.run());
    format!("http://{addr}")
}

fn app() -> AppCredentials {
    AppCredentials::new("wxtestapp0000001", "s3cret")
}

fn memory_client(base: &str) -> WechatClient {
    WechatClient::new(base, TokenCache::Memory).expect("client")
}

async fn redis_conn() -> redis::aio::ConnectionManager {
    let client = redis::Client::open("redis://127.0.0.1:6379/").expect("redis url");
    redis::aio::ConnectionManager::new(client)
        .await
        .expect("redis at 127.0.0.1:6379 is required for these tests")
}

fn unique_prefix() -> String {
    format!("pjtest:{}:", uuid::Uuid::new_v4().simple())
}

async fn redis_client(base: &str, prefix: &str) -> WechatClient {
    let conn = redis_conn().await;
    WechatClient::new(
        base,
        TokenCache::Redis {
            conn,
            prefix: prefix.to_owned(),
        },
    )
    .expect("client")
}

async fn cleanup(prefix: &str, appid: &str) {
    let mut conn = redis_conn().await;
    let _: () = redis::cmd("DEL")
        .arg(token_key(prefix, appid))
        .arg(format!("{prefix}wechat:token-lock:{appid}"))
        .query_async(&mut conn)
        .await
        .expect("del");
}

fn subscribe_msg() -> SubscribeMessage {
    SubscribeMessage {
        touser: "oUser1234567".into(),
        template_id: "TPL".into(),
        page: Some("pages/receipt/detail?id=1".into()),
        data: BTreeMap::from([
            ("thing1".into(), "门诊收费票据".into()),
            ("amount2".into(), "12.50".into()),
        ]),
        miniprogram_state: Some("formal".into()),
        lang: Some("zh_CN".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_rejected_once_means_one_refresh_and_one_retry() {
    let sim = Sim::new();
    let base = start(sim.clone()).await;
    let client = memory_client(&base);
    let app = app();

    client
        .send_subscribe_message(&app, &subscribe_msg())
        .await
        .expect("first send");
    assert_eq!((sim.stable(), sim.sends()), (1, 1));

    sim.rotate();
    client
        .send_subscribe_message(&app, &subscribe_msg())
        .await
        .expect("retried send");
    assert_eq!(sim.stable(), 2, "exactly one refresh");
    assert_eq!(sim.sends(), 3, "the rejected call plus exactly one retry");

    // The refreshed token is cached.
    client
        .send_subscribe_message(&app, &subscribe_msg())
        .await
        .expect("third send");
    assert_eq!((sim.stable(), sim.sends()), (2, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn persistent_token_rejection_is_retried_only_once() {
    let sim = Sim::new();
    let base = start(sim.clone()).await;
    let client = memory_client(&base);
    let err = client
        .call_json::<Value>(&app(), Method::POST, "/always40001", &json!({}))
        .await
        .expect_err("fails");
    assert_eq!(err.class(), Some(ErrorClass::TokenInvalid));
    assert_eq!(sim.sends(), 2);
    assert_eq!(sim.stable(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_share_one_refresh_in_memory() {
    let sim = Sim::with_delay(Duration::from_millis(200));
    let base = start(sim.clone()).await;
    let client = memory_client(&base);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.send_subscribe_message(&app(), &subscribe_msg()).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("join").expect("send");
    }
    assert_eq!(sim.stable(), 1);
    assert_eq!(sim.sends(), 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_invalidation_only_drops_the_failed_token() {
    let sim = Sim::new();
    let base = start(sim.clone()).await;
    let client = memory_client(&base);
    let app = app();
    let t1 = client.access_token(&app).await.expect("token");
    client
        .invalidate_token(&app, "SOMETHING-ELSE")
        .await
        .expect("invalidate");
    assert_eq!(client.access_token(&app).await.expect("token"), t1);
    assert_eq!(sim.stable(), 1);
    client.invalidate_token(&app, &t1).await.expect("invalidate");
    client.access_token(&app).await.expect("token");
    assert_eq!(sim.stable(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cache_is_shared_by_two_processes() {
    let sim = Sim::with_delay(Duration::from_millis(200));
    let base = start(sim.clone()).await;
    let prefix = unique_prefix();
    let a = redis_client(&base, &prefix).await;
    let b = redis_client(&base, &prefix).await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let client = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { client.send_subscribe_message(&app(), &subscribe_msg()).await })
        })
        .collect();
    for t in tasks {
        t.await.expect("join").expect("send");
    }
    assert_eq!(sim.stable(), 1, "one stable_token call across both processes");
    assert_eq!(sim.sends(), 16);

    let mut conn = redis_conn().await;
    let ttl: i64 = redis::cmd("TTL")
        .arg(token_key(&prefix, &app().appid))
        .query_async(&mut conn)
        .await
        .expect("ttl");
    assert!(
        (6800..=6900).contains(&ttl),
        "TTL is expires_in minus the 300 s margin, got {ttl}"
    );
    let lock: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}wechat:token-lock:{}", app().appid))
        .query_async(&mut conn)
        .await
        .expect("get");
    assert_eq!(lock, None, "the refresh lock is released");
    cleanup(&prefix, &app().appid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_invalidation_only_drops_a_matching_token() {
    let sim = Sim::new();
    let base = start(sim.clone()).await;
    let prefix = unique_prefix();
    let a = redis_client(&base, &prefix).await;
    let b = redis_client(&base, &prefix).await;
    let app = app();
    let key = token_key(&prefix, &app.appid);
    let mut conn = redis_conn().await;

    let t1 = a.access_token(&app).await.expect("token");
    b.invalidate_token(&app, "NOT-THE-CACHED-ONE")
        .await
        .expect("invalidate");
    let still: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.expect("get");
    assert_eq!(still.as_deref(), Some(t1.as_str()));

    b.invalidate_token(&app, &t1).await.expect("invalidate");
    let gone: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.expect("get");
    assert_eq!(gone, None);
    cleanup(&prefix, &app.appid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_retry_after_rotation_is_seen_by_the_other_process() {
    let sim = Sim::new();
    let base = start(sim.clone()).await;
    let prefix = unique_prefix();
    let a = redis_client(&base, &prefix).await;
    let b = redis_client(&base, &prefix).await;
    let app = app();

    a.send_subscribe_message(&app, &subscribe_msg()).await.expect("a sends");
    sim.rotate();
    b.send_subscribe_message(&app, &subscribe_msg())
        .await
        .expect("b retries");
    assert_eq!(sim.stable(), 2);
    assert_eq!(sim.sends(), 3);
    a.send_subscribe_message(&app, &subscribe_msg())
        .await
        .expect("a uses b's token");
    assert_eq!((sim.stable(), sim.sends()), (2, 4));
    cleanup(&prefix, &app.appid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_are_classified() {
    let sim = Sim::new();
    let base = start(sim.clone()).await;
    let client = memory_client(&base).with_timeout(Duration::from_millis(300));
    let app = app();

    let e = client
        .call_json::<Value>(&app, Method::POST, "/err/43101", &json!({}))
        .await
        .expect_err("43101");
    assert_eq!(e.class(), Some(ErrorClass::Permanent));
    assert!(!e.is_retryable());
    assert_eq!(sim.sends(), 1, "a permanent error is not retried");

    let e = client
        .call_json::<Value>(&app, Method::POST, "/err/45009", &json!({}))
        .await
        .expect_err("45009");
    assert_eq!(e.class(), Some(ErrorClass::QuotaExhausted));
    assert!(!e.is_retryable());
    let e = client
        .call_json::<Value>(&app, Method::POST, "/err/-1", &json!({}))
        .await
        .expect_err("busy");
    assert_eq!(e.class(), Some(ErrorClass::Busy));
    assert!(e.is_retryable());

    let e = client
        .call_json::<Value>(&app, Method::POST, "/status500", &json!({}))
        .await
        .expect_err("500");
    assert!(matches!(e, CallError::Http(500)), "{e:?}");
    assert!(e.is_retryable());

    let e = client
        .call_json::<Value>(&app, Method::POST, "/slow", &json!({}))
        .await
        .expect_err("timeout");
    assert!(matches!(e, CallError::Timeout), "{e:?}");
    assert!(e.is_retryable());

    let e = client
        .call_json::<Value>(&app, Method::POST, "/garbage", &json!({}))
        .await
        .expect_err("decode");
    assert!(matches!(e, CallError::Decode(_)), "{e:?}");

    let bad = AppCredentials::new("wxtestapp0000001", "wrong");
    let fresh = memory_client(&base);
    let e = fresh
        .send_subscribe_message(&bad, &subscribe_msg())
        .await
        .expect_err("bad secret");
    assert_eq!(e.class(), Some(ErrorClass::Permanent));

    let closed = memory_client("http://127.0.0.1:9");
    let e = closed.access_token(&app).await.expect_err("connection refused");
    assert!(matches!(e, CallError::Transport(_)), "{e:?}");
    assert!(!e.to_string().contains("s3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typed_helpers_speak_the_wire_format() {
    let sim = Sim::new();
    let base = start(sim.clone()).await;
    let client = memory_client(&base);
    let app = app();

    client
        .send_subscribe_message(&app, &subscribe_msg())
        .await
        .expect("subscribe");
    let body = sim.last_body.lock().expect("lock").clone().expect("body");
    assert_eq!(body["data"]["thing1"]["value"], "门诊收费票据");
    assert_eq!(body["data"]["amount2"]["value"], "12.50");
    assert_eq!(body["miniprogram_state"], "formal");
    assert_eq!(body["page"], "pages/receipt/detail?id=1");

    let tpl = TemplateMessage {
        touser: "oUser".into(),
        template_id: "T".into(),
        url: None,
        miniprogram: Some(MiniProgramLink {
            appid: "wxmini".into(),
            pagepath: "pages/a".into(),
        }),
        client_msg_id: Some("delivery-1".into()),
        data: BTreeMap::from([("keyword1".into(), "v".into())]),
    };
    assert_eq!(
        client.send_template_message(&app, &tpl).await.expect("template"),
        200163836
    );
    let body = sim.last_body.lock().expect("lock").clone().expect("body");
    assert_eq!(body["miniprogram"]["pagepath"], "pages/a");
    assert_eq!(body["client_msg_id"], "delivery-1");
    assert!(body.get("url").is_none());

    let s = client.jscode2session(&app, "abc").await.expect("session");
    assert_eq!(s.openid, "oUser1234567");
    assert_eq!(s.session_key.expose_secret(), "c2Vzc2lvbg==");
    assert!(!format!("{s:?}").contains("c2Vzc2lvbg"));
    assert!(!format!("{s:?}").contains("oUser1234567"));
    let q = sim.last_query.lock().expect("lock").clone().expect("query");
    assert_eq!(q.get("grant_type").map(String::as_str), Some("authorization_code"));
    assert_eq!(q.get("secret").map(String::as_str), Some("s3cret"));
    let e = client.jscode2session(&app, "used").await.expect_err("reused code");
    assert_eq!(e.class(), Some(ErrorClass::Permanent));

    let web = client.oauth2_access_token(&app, "webcode").await.expect("oauth");
    assert_eq!(web.openid, "oWeb123456");
    assert_eq!(web.unionid, None);
    assert!(!format!("{web:?}").contains("oWeb123456"));

    let qr = client.create_qrcode(&app, "r:123", Some(600)).await.expect("temp qr");
    assert_eq!(qr.expire_seconds, Some(600));
    let body = sim.last_body.lock().expect("lock").clone().expect("body");
    assert_eq!(body["action_name"], "QR_STR_SCENE");
    assert_eq!(body["action_info"]["scene"]["scene_str"], "r:123");
    let qr = client.create_qrcode(&app, "r:123", None).await.expect("permanent qr");
    assert_eq!(qr.expire_seconds, None);
    let body = sim.last_body.lock().expect("lock").clone().expect("body");
    assert_eq!(body["action_name"], "QR_LIMIT_STR_SCENE");
    let e = client
        .create_qrcode(&app, &"x".repeat(65), None)
        .await
        .expect_err("too long");
    assert!(matches!(e, CallError::Invalid(_)));

    let p = client.get_phone_number(&app, "phonecode").await.expect("phone");
    assert_eq!(p.pure_phone_number, "13800138000");
    assert!(!format!("{p:?}").contains("13800138000"));

    assert_eq!(sim.stable(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_paces_instead_of_failing() {
    let sim = Sim::new();
    let base = start(sim.clone()).await;
    let client = memory_client(&base).with_rate_limit(NonZeroU32::new(10).expect("non-zero"));
    let app = app();
    client.access_token(&app).await.expect("token");
    let started = Instant::now();
    for _ in 0..15 {
        client
            .send_subscribe_message(&app, &subscribe_msg())
            .await
            .expect("send");
    }
    // Burst of 10, then 5 more at 100 ms each.
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sim.sends(), 15);
}

#[test]
fn interface_names_and_ttl() {
    assert_eq!(interface_name(PATH_SUBSCRIBE_SEND), "subscribe_send");
    assert_eq!(interface_name(PATH_STABLE_TOKEN), "stable_token");
    assert_eq!(interface_name("/cgi-bin/user/info?lang=zh_CN"), "user_info");
    assert_eq!(cache_ttl_secs(7200), 6900);
    assert_eq!(cache_ttl_secs(400), 200);
    assert_eq!(cache_ttl_secs(0), 1);
}

#[test]
fn response_parsing() {
    assert!(matches!(
        parse_response::<Value>(br#"{"errcode":40003,"errmsg":"invalid openid"}"#),
        Err(CallError::Wechat(WechatError { errcode: 40003, .. }))
    ));
    let ok: Value = parse_response(br#"{"errcode":0,"errmsg":"ok"}"#).expect("ok");
    assert_eq!(ok["errmsg"], "ok");
    let ok: Value = parse_response(br#"{"openid":"x"}"#).expect("no errcode");
    assert_eq!(ok["openid"], "x");
    #[derive(Debug, Deserialize)]
    struct Sent {
        #[allow(dead_code)]
        msgid: i64,
    }
    let e = parse_response::<Sent>(br#"{"msgid":"oSecretOpenid"}"#).expect_err("wrong type");
    assert!(!e.to_string().contains("oSecretOpenid"), "{e}");
    let e = parse_response::<Sent>(br#"{"errcode":0}"#).expect_err("missing");
    assert!(e.to_string().contains("msgid"), "{e}");
}

#[test]
fn rejects_bad_base_url() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    assert!(WechatClient::new("not a url", TokenCache::Memory).is_err());
    assert!(WechatClient::new("ftp://x", TokenCache::Memory).is_err());
    let c = WechatClient::new("https://api.weixin.qq.com/", TokenCache::Memory).expect("ok");
    assert_eq!(c.base_url(), "https://api.weixin.qq.com");
}

#[test]
fn credentials_debug_hides_secret() {
    let a = app();
    assert!(!format!("{a:?}").contains("s3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_waiter_polls_while_another_process_holds_the_lock() {
    let sim = Sim::new();
    let base = start(sim.clone()).await;
    let prefix = unique_prefix();
    let client = redis_client(&base, &prefix).await;
    let app = app();
    let mut conn = redis_conn().await;
    let lock_key = format!("{prefix}wechat:token-lock:{}", app.appid);
    let _: () = redis::cmd("SET")
        .arg(&lock_key)
        .arg("other-process")
        .arg("PX")
        .arg(10_000)
        .query_async(&mut conn)
        .await
        .expect("lock");

    let waiter = tokio::spawn({
        let client = client.clone();
        let app = app.clone();
        async move { client.access_token(&app).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let _: () = redis::cmd("SET")
        .arg(token_key(&prefix, &app.appid))
        .arg("FROM-OTHER")
        .arg("EX")
        .arg(60)
        .query_async(&mut conn)
        .await
        .expect("set");
    assert_eq!(waiter.await.expect("join").expect("token"), "FROM-OTHER");
    assert_eq!(sim.stable(), 0, "the waiter used the other process's refresh");
    let lock: Option<String> = redis::cmd("GET")
        .arg(&lock_key)
        .query_async(&mut conn)
        .await
        .expect("get");
    assert_eq!(
        lock.as_deref(),
        Some("other-process"),
        "a waiter never releases someone else's lock"
    );
    cleanup(&prefix, &app.appid).await;
}
