//! What a payer's phone does with the official account's pages, two ways:
//!
//! - [`Browser`]: an HTTP client with a cookie jar that follows redirects itself
//!   (so each hop, cookie and status can be asserted), playing the WeChat browser
//!   of one user of the simulator;
//! - [`Chromium`]: Debian's headless Chromium driven through ChromeDriver's
//!   WebDriver protocol (plain JSON over HTTP), for what a person sees, with a
//!   screenshot of each page saved under `target/test-artifacts/pages/`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

/// One answer of a hop.
#[derive(Debug, Clone)]
pub struct Page {
    pub status: u16,
    pub url: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
    /// The `Set-Cookie` headers seen along the way, as sent.
    pub set_cookies: Vec<String>,
}

impl Page {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    /// The value of a hidden form field (`name="csrf" value="…"`).
    pub fn hidden(&self, name: &str) -> Option<String> {
        let needle = format!("name=\"{name}\" value=\"");
        let start = self.body.find(&needle)? + needle.len();
        let end = self.body[start..].find('"')?;
        Some(self.body[start..start + end].replace("&amp;", "&"))
    }
}

/// A browser of one WeChat user: cookies by name (paths are distinct enough here).
pub struct Browser {
    client: reqwest::Client,
    pub cookies: BTreeMap<String, String>,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    pub fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            cookies: BTreeMap::new(),
        }
    }

    /// The browser of `openid`, as the simulator knows WeChat's in-app browser user
    /// of `appid` (its `wxsim_user_<appid>` cookie): WeChat's silent snsapi_base.
    pub fn of_wechat_user(appid: &str, openid: &str) -> Self {
        let mut b = Self::new();
        b.cookies.insert(format!("wxsim_user_{appid}"), openid.to_owned());
        b
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn remember(&mut self, resp: &reqwest::Response, seen: &mut Vec<String>) {
        for v in resp.headers().get_all("set-cookie") {
            let Ok(raw) = v.to_str() else { continue };
            seen.push(raw.to_owned());
            let pair = raw.split(';').next().unwrap_or_default();
            if let Some((k, v)) = pair.split_once('=') {
                let expired = raw.to_ascii_lowercase().contains("max-age=0");
                if v.is_empty() || expired {
                    self.cookies.remove(k.trim());
                } else {
                    self.cookies.insert(k.trim().to_owned(), v.trim().to_owned());
                }
            }
        }
    }

    /// GET, following redirects (at most 10), like a browser.
    pub async fn get(&mut self, url: &str) -> Page {
        self.request(reqwest::Method::GET, url, None).await
    }

    /// POST a form, following the redirect after it.
    pub async fn post_form(&mut self, url: &str, form: &[(&str, &str)]) -> Page {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form.iter())
            .finish();
        self.request(reqwest::Method::POST, url, Some(body)).await
    }

    /// One request without following anything.
    pub async fn hop(
        &mut self,
        method: reqwest::Method,
        url: &str,
        form: Option<String>,
    ) -> (reqwest::Response, Vec<String>) {
        let mut req = self.client.request(method, url);
        let cookies = self.cookie_header();
        if !cookies.is_empty() {
            req = req.header("cookie", cookies);
        }
        if let Some(body) = form {
            req = req
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
        }
        let resp = req.send().await.expect("request sent");
        let mut seen = Vec::new();
        self.remember(&resp, &mut seen);
        (resp, seen)
    }

    async fn request(&mut self, method: reqwest::Method, url: &str, form: Option<String>) -> Page {
        let mut url = url::Url::parse(url).expect("absolute URL");
        let (mut resp, mut seen) = self.hop(method, url.as_str(), form).await;
        for _ in 0..10 {
            if !resp.status().is_redirection() {
                break;
            }
            let location = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .expect("a redirect has a Location")
                .to_owned();
            url = url.join(&location).expect("Location resolves");
            url.set_fragment(None);
            let (next, more) = self.hop(reqwest::Method::GET, url.as_str(), None).await;
            resp = next;
            seen.extend(more);
        }
        Page {
            status: resp.status().as_u16(),
            url: url.to_string(),
            headers: resp.headers().clone(),
            body: resp.text().await.expect("body"),
            set_cookies: seen,
        }
    }
}

/// Where screenshots go: `target/test-artifacts/pages/` of the workspace.
pub fn artifacts_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("test-artifacts")
        .join("pages");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    dir
}

/// Headless Debian Chromium through ChromeDriver (one browser per test), the
/// window of a phone (360 × 800).
pub struct Chromium {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
}

impl Chromium {
    /// `None` when `chromedriver`/`chromium` are not installed (`.ci/run` installs
    /// them; set `PIAOJIA_REQUIRE_CHROMIUM=1` to fail instead of skipping).
    pub async fn start() -> Option<Self> {
        let installed = ["/usr/bin/chromedriver", "/usr/bin/chromium"]
            .iter()
            .all(|p| std::path::Path::new(p).exists());
        if !installed {
            assert!(
                std::env::var_os("PIAOJIA_REQUIRE_CHROMIUM").is_none(),
                "chromium and chromedriver are required (apt-get install chromium chromium-driver)"
            );
            eprintln!("chromium/chromedriver not installed: browser test skipped");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let driver = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().no_proxy().build().expect("client");
        let mut ready = false;
        for _ in 0..100 {
            if http.get(format!("{base}/status")).send().await.is_ok() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ready, "chromedriver did not start");
        let profile = tempfile::tempdir().expect("profile dir").keep();
        let caps = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": [
                        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                        "--window-size=360,800", "--lang=zh-CN", "--no-proxy-server",
                        format!("--user-data-dir={}", profile.display()),
                    ]
                }
            }}
        });
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .expect("session JSON");
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {resp}"))
            .to_owned();
        let me = Self {
            driver,
            base,
            session,
            http,
        };
        me.command("POST", "/window/rect", json!({ "width": 360, "height": 800 }))
            .await;
        Some(me)
    }

    async fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = match method {
            "GET" => self.http.get(url),
            _ => self.http.post(url).json(&body),
        };
        let resp: Value = req
            .send()
            .await
            .expect("WebDriver call")
            .json()
            .await
            .expect("WebDriver JSON");
        assert!(
            resp["value"].get("error").is_none(),
            "WebDriver {method} {path}: {resp}"
        );
        resp["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url })).await;
    }

    /// The address shown, without its fragment (a browser carries the
    /// `#wechat_redirect` of the authorize link through the redirects back).
    pub async fn current_url(&self) -> String {
        let url = self.command("GET", "/url", Value::Null).await;
        let url = url.as_str().unwrap_or_default();
        url.split('#').next().unwrap_or_default().to_owned()
    }

    /// The page's text as a person reads it (`innerText`).
    pub async fn text(&self) -> String {
        self.script("return document.body ? document.body.innerText : '';")
            .await
    }

    /// Waits (up to 10 s) until the page's text contains `needle`, and returns it:
    /// a click that submits a form returns before the next page is there.
    pub async fn wait_for_text(&self, needle: &str) -> String {
        let mut text = String::new();
        for _ in 0..100 {
            text = self.text().await;
            if text.contains(needle) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{needle:?} never shown; the page says: {text}");
    }

    /// Runs a script of the test (never of the page: the pages have none).
    pub async fn script(&self, js: &str) -> String {
        let v = self
            .command("POST", "/execute/sync", json!({ "script": js, "args": [] }))
            .await;
        match v {
            Value::String(s) => s,
            other => other.to_string(),
        }
    }

    /// Clicks the first element matching a CSS selector.
    pub async fn click(&self, css: &str) {
        let el = self
            .command("POST", "/element", json!({ "using": "css selector", "value": css }))
            .await;
        let id = el
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("element id")
            .to_owned();
        self.command("POST", &format!("/element/{id}/click"), json!({})).await;
    }

    /// Saves a PNG screenshot as `target/test-artifacts/pages/<name>.png`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.command("GET", "/screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("base64"))
            .expect("PNG");
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        let path = artifacts_dir().join(format!("{name}.png"));
        std::fs::write(&path, png).expect("screenshot written");
        path
    }

    /// The page's width in CSS pixels as laid out (nothing wider than the phone).
    pub async fn scroll_width(&self) -> u64 {
        self.script("return String(document.documentElement.scrollWidth);")
            .await
            .parse()
            .unwrap_or(0)
    }
}

impl Chromium {
    /// Ends the browser (its processes with it), then the driver.
    pub async fn close(self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.http.delete(url).send().await;
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
