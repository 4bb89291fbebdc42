//! Shared helpers: a running simulator, WeChat-style calls, and a scriptable message server.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use piaojia_wechat_sim::{MessageServer, SimApp, SimConfig, Simulator, paths};
use serde_json::{Value, json};

pub const MP: &str = "wxa1b2c3d4e5f60001";
pub const MP_SECRET: &str = "mp-secret-0123456789abcdef012345";
pub const MP2: &str = "wxa1b2c3d4e5f60009";
pub const OA: &str = "wxa1b2c3d4e5f60002";
pub const OA_SECRET: &str = "oa-secret-0123456789abcdef012345";
/// A hospital's official account (issuing unit) when the platform is a separate account.
pub const UNIT: &str = "wxa1b2c3d4e5f60003";
/// Two reimbursers (an insurer's account and an employer's mini-program).
pub const REIMB: &str = "wxa1b2c3d4e5f60004";
pub const REIMB2: &str = "wxa1b2c3d4e5f60005";
pub const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
pub const OA_GH: &str = "gh_0123456789ab";

pub fn secret(appid: &str) -> String {
    format!("secret-of-{appid}")
}

pub fn config() -> SimConfig {
    SimConfig::default()
        .with_app(SimApp::mini_program(MP, MP_SECRET))
        .with_app(SimApp::mini_program(MP2, &secret(MP2)))
        .with_app(
            SimApp::official_account(OA, OA_SECRET)
                .with_original_id(OA_GH)
                .with_name("票夹平台"),
        )
        .with_app(SimApp::official_account(UNIT, &secret(UNIT)).with_name("市第一人民医院"))
        .with_app(SimApp::official_account(REIMB, &secret(REIMB)))
        .with_app(SimApp::mini_program(REIMB2, &secret(REIMB2)))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

pub fn errcode(v: &Value) -> i64 {
    v["errcode"].as_i64().unwrap_or(0)
}

pub struct Env {
    pub sim: Simulator,
    pub base: String,
    pub http: reqwest::Client,
    handle: ServerHandle,
}

impl Env {
    pub async fn start(cfg: SimConfig) -> Self {
        let sim = Simulator::new(cfg);
        let (addr, handle) = sim.start().await.expect("simulator starts");
        Self {
            sim,
            base: format!("http://{addr}"),
            http: client(),
            handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("GET")
            .json()
            .await
            .expect("JSON answer")
    }

    pub async fn post(&self, path: &str, body: &Value) -> Value {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST")
            .json()
            .await
            .expect("JSON answer")
    }

    pub async fn token(&self, appid: &str) -> String {
        let secret = match appid {
            MP => MP_SECRET.to_owned(),
            OA => OA_SECRET.to_owned(),
            other => secret(other),
        };
        let body = json!({ "grant_type": "client_credential", "appid": appid, "secret": secret });
        let r = self.post(paths::STABLE_TOKEN, &body).await;
        r["access_token"].as_str().expect("token").to_owned()
    }

    /// A WeChat API call with the app's access token.
    pub async fn call(&self, appid: &str, path: &str, body: &Value) -> Value {
        let token = self.token(appid).await;
        self.post(&format!("{path}?access_token={token}"), body).await
    }

    pub async fn call_get(&self, appid: &str, path_and_query: &str) -> Value {
        let token = self.token(appid).await;
        let sep = if path_and_query.contains('?') { '&' } else { '?' };
        self.get(&format!("{path_and_query}{sep}access_token={token}")).await
    }

    /// An admin call: (HTTP status, JSON body).
    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("admin call");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// A browser GET with an optional Cookie header.
    pub async fn browse(&self, path_or_url: &str, cookie: Option<&str>) -> reqwest::Response {
        let url = if path_or_url.starts_with("http") {
            path_or_url.to_owned()
        } else {
            self.url(path_or_url)
        };
        let mut req = self.http.get(url);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send().await.expect("page")
    }

    /// A browser form POST.
    pub async fn submit(&self, url: &str, form: &[(&str, &str)], cookie: Option<&str>) -> reqwest::Response {
        let mut req = self.http.post(url).form(form);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        req.send().await.expect("form post")
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

/// The `name=value` part of a Set-Cookie header, for sending it back.
pub fn cookie_of(resp: &reqwest::Response) -> Option<String> {
    resp.headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
}

pub fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// One received push: its query and body.
pub type Received = (BTreeMap<String, String>, String);

/// How the test message server answers the n-th push (0-based): status, body, delay.
pub type Responder = Arc<dyn Fn(usize, &Received) -> (u16, String, Duration) + Send + Sync>;

/// A message server that records what it receives and answers as told.
#[derive(Clone)]
pub struct Inbox {
    got: Arc<Mutex<Vec<Received>>>,
    respond: Responder,
}

impl Inbox {
    /// Answers `success` at once.
    pub fn success() -> Self {
        Self::answering(|_, _| (200, "success".into(), Duration::ZERO))
    }

    pub fn answering(f: impl Fn(usize, &Received) -> (u16, String, Duration) + Send + Sync + 'static) -> Self {
        Self {
            got: Arc::default(),
            respond: Arc::new(f),
        }
    }

    pub async fn serve(&self) -> (String, ServerHandle) {
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
                        let received = (q, body);
                        let n = {
                            let mut got = inbox.got.lock().expect("inbox");
                            got.push(received.clone());
                            got.len() - 1
                        };
                        let (status, body, delay) = (inbox.respond)(n, &received);
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("status")).body(body)
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

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().expect("inbox").clone()
    }
}

/// Starts `inbox` and points `appid`'s pushes at it (secure mode with `aes_key`).
pub async fn attach(env: &Env, appid: &str, inbox: &Inbox, aes_key: Option<&str>) -> ServerHandle {
    let (url, handle) = inbox.serve().await;
    env.sim
        .set_message_server(
            appid,
            Some(MessageServer {
                url,
                token: format!("token-{appid}"),
                encoding_aes_key: aes_key.map(str::to_owned),
            }),
        )
        .expect("known app");
    handle
}

/// The text of `<tag>` (CDATA unwrapped).
pub fn xml_field<'a>(xml: &'a str, tag: &str) -> &'a str {
    xml_opt(xml, tag).unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
}

pub fn xml_opt<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let inner = &xml[start..start + xml[start..].find(&format!("</{tag}>"))?];
    Some(
        inner
            .strip_prefix("<![CDATA[")
            .and_then(|s| s.strip_suffix("]]>"))
            .unwrap_or(inner),
    )
}
