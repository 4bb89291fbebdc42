//! Request bodies are bounded per scope and refused with `413` problem+json before
//! they are buffered: only issuer pushes and reversals may be large
//! (`server.body_limit_bytes`); mini-program, operator and reimburser JSON get
//! `server.json_body_limit_bytes`; the WeChat message server 256 KiB. Bodies are
//! sent with a Content-Length and chunked (without one).

use std::time::Duration;

use base64::Engine as _;
use piaojia_core::pii::random_alnum;
use piaojia_core::signing;
use piaojia_tests::both_modes;
use piaojia_tests::harness::{Issuer, Mode, OPS_TOKEN, TestApp, TestConfig, problem};
use piaojia_tests::samples;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

type Header = (&'static str, String);

/// A JSON body of about `n` bytes.
fn json_of_size(n: usize) -> Vec<u8> {
    serde_json::to_vec(&json!({"appId": "wx1111aaaa2222bbbb", "code": "c".repeat(n)})).expect("json")
}

/// The same bytes as a chunked body (no Content-Length), 8 KiB a chunk.
fn chunked(bytes: Vec<u8>) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = bytes.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    body: Vec<u8>,
    with_length: bool,
    headers: &[(&str, String)],
) -> reqwest::Response {
    let mut req = app
        .client
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).expect("method"),
            format!("{}{path}", app.address),
        )
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req = if with_length {
        req.body(body)
    } else {
        req.body(chunked(body))
    };
    req.send().await.expect("sent")
}

async fn assert_413(resp: reqwest::Response, what: &str) {
    assert_eq!(resp.status().as_u16(), 413, "{what}");
    assert_eq!(problem(resp, 413).await["code"], "payload_too_large", "{what}");
}

both_modes!(small_scopes_refuse_large_bodies, |mode: Mode| async move {
    let app = TestConfig::new(mode).await.spawn().await;
    app.platform_wallet("wx1111aaaa2222bbbb", "TMPL-WALLET-RECEIPT", false)
        .await;
    let session = app
        .mp_login("wx1111aaaa2222bbbb", &piaojia_wechat_sim::new_openid(), None)
        .await;
    // Signed in, so that the handlers get as far as reading the body.
    let payer = [(
        "authorization",
        format!("Bearer {}", session["accessToken"].as_str().expect("token")),
    )];
    let ops = [("authorization", format!("Bearer {OPS_TOKEN}"))];
    let cases: [(&str, &str, &[Header]); 5] = [
        ("POST", "/v1/mp/session", &[]),
        ("POST", "/v1/mp/session/refresh", &[]),
        ("PUT", "/v1/mp/profile", &payer),
        ("POST", "/v1/mp/receipts", &payer),
        ("POST", "/v1/ops/deliveries/redrive", &ops),
    ];
    // Above the default 64 KiB, far below the issuers' 8 MiB.
    for (method, path, headers) in cases {
        for with_length in [true, false] {
            let resp = send(&app, method, path, json_of_size(70 * 1024), with_length, headers).await;
            assert_413(resp, &format!("{method} {path}, Content-Length: {with_length}")).await;
        }
    }
    // The reimbursers' scope has the small limit already (no route reads a body yet).
    let resp = send(
        &app,
        "POST",
        "/v1/reimburser/claims",
        json_of_size(70 * 1024),
        true,
        &[],
    )
    .await;
    assert_413(resp, "POST /v1/reimburser/claims").await;
    // Within the limit the request is read and judged on its content.
    let resp = send(&app, "POST", "/v1/mp/session", json_of_size(60 * 1024), false, &[]).await;
    assert_eq!(problem(resp, 422).await["code"], "validation_failed");
});

both_modes!(the_message_server_takes_256_kib, |mode: Mode| async move {
    let app = TestConfig::new(mode).await.spawn().await;
    let path = "/v1/wechat/wx0a1b2c3d4e5f6a7b/events?signature=x&timestamp=1&nonce=n";
    let xml = |n: usize| format!("<xml><Content><![CDATA[{}]]></Content></xml>", "a".repeat(n)).into_bytes();
    for with_length in [true, false] {
        let resp = send(&app, "POST", path, xml(300 * 1024), with_length, &[]).await;
        assert_413(resp, &format!("events, Content-Length: {with_length}")).await;
    }
    // 200 KiB is read (and refused for what it is: no message server is configured).
    let resp = send(&app, "POST", path, xml(200 * 1024), false, &[]).await;
    assert_eq!(problem(resp, 404).await["code"], "unknown_app");
});

both_modes!(only_issuer_pushes_may_be_large, |mode: Mode| async move {
    let mut config = TestConfig::new(mode).await;
    config.set("PIAOJIA_SERVER__BODY_LIMIT_BYTES", (300 * 1024).to_string());
    let app = config.spawn().await;
    let issuer = app.issuer().await;

    // A push with a 150 KiB inline file: well above the JSON limit, accepted.
    let mut r = samples::outpatient(1);
    let file = vec![b'%'; 150 * 1024];
    r["file"] = json!({"format": "pdf", "base64": base64::engine::general_purpose::STANDARD.encode(&file)});
    assert_eq!(app.push(&issuer, &r).await.status().as_u16(), 201);

    // Above body_limit_bytes, signed correctly, with and without Content-Length.
    let mut big = samples::outpatient(2);
    big["file"] = json!({"format": "pdf", "base64": "A".repeat(400 * 1024)});
    let body = serde_json::to_vec(&big).expect("json");
    for with_length in [true, false] {
        let auth = authorization(&issuer, "POST", "/v1/receipts", &body);
        let resp = send(
            &app,
            "POST",
            "/v1/receipts",
            body.clone(),
            with_length,
            &[("authorization", auth)],
        )
        .await;
        assert_413(resp, &format!("push, Content-Length: {with_length}")).await;
    }
    let path = "/v1/receipts/11060124/0000000001/reversal";
    let reversal = serde_json::to_vec(&json!({"reason": "x".repeat(400 * 1024)})).expect("json");
    for with_length in [true, false] {
        let auth = authorization(&issuer, "POST", path, &reversal);
        let resp = send(
            &app,
            "POST",
            path,
            reversal.clone(),
            with_length,
            &[("authorization", auth)],
        )
        .await;
        assert_413(resp, &format!("reversal, Content-Length: {with_length}")).await;
    }
    // An unknown app id's oversized body is refused the same way (nothing told apart).
    let nobody = Issuer {
        app_id: "nobody".into(),
        ..issuer.clone()
    };
    let auth = authorization(&nobody, "POST", "/v1/receipts", &body);
    assert_413(
        send(&app, "POST", "/v1/receipts", body, false, &[("authorization", auth)]).await,
        "unknown app, chunked",
    )
    .await;
});

fn authorization(issuer: &Issuer, method: &str, path: &str, body: &[u8]) -> String {
    signing::authorization(
        &issuer.app_id,
        &issuer.secret,
        method,
        path,
        chrono::Utc::now().timestamp(),
        &random_alnum(24),
        body,
    )
}

/// A raw HTTP/1.1 connection, to send a head and hold the body back.
struct Raw(tokio::net::TcpStream);

impl Raw {
    async fn open(app: &TestApp) -> Self {
        let addr = app.address.trim_start_matches("http://");
        Self(tokio::net::TcpStream::connect(addr).await.expect("connect"))
    }

    async fn head(&mut self, method: &str, path: &str, headers: &[(&str, String)]) {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: piaojia.test\r\nContent-Type: application/json\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        self.0.write_all(head.as_bytes()).await.expect("head sent");
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).await.expect("body sent");
    }

    /// The status and body of the answer, if one comes within `wait`.
    async fn answer(&mut self, wait: Duration) -> Option<(u16, Value)> {
        let mut buf = Vec::new();
        let read = async {
            let mut chunk = [0u8; 4096];
            loop {
                let n = self.0.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = find(&buf, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
        };
        tokio::time::timeout(wait, read).await.ok()?;
        let end = find(&buf, b"\r\n\r\n")?;
        let status = String::from_utf8_lossy(&buf[..end])
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some((status, serde_json::from_slice(&buf[end + 4..]).unwrap_or(Value::Null)))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

both_modes!(refusals_come_before_the_body_is_read, |mode: Mode| async move {
    let app = TestConfig::new(mode).await.spawn().await;
    let issuer = app.issuer().await;
    let soon = Duration::from_secs(5);

    // A declared length above the limit: refused on the head alone.
    let mut raw = Raw::open(&app).await;
    raw.head("POST", "/v1/mp/session", &[("Content-Length", (100 << 20).to_string())])
        .await;
    let (status, body) = raw.answer(soon).await.expect("answered without the body");
    assert_eq!((status, body["code"].as_str()), (413, Some("payload_too_large")));

    // A chunked body: cut off where it passes the limit, while it streams.
    let mut raw = Raw::open(&app).await;
    raw.head("POST", "/v1/mp/session", &[("Transfer-Encoding", "chunked".into())])
        .await;
    for _ in 0..5 {
        raw.write(format!("4000\r\n{}\r\n", "a".repeat(0x4000)).as_bytes())
            .await;
    }
    let (status, body) = raw.answer(soon).await.expect("answered mid-stream");
    assert_eq!((status, body["code"].as_str()), (413, Some("payload_too_large")));

    // An issuer push (large bodies allowed) is judged on its Authorization header
    // before its body is read: missing, malformed (nonce), stale.
    let now = chrono::Utc::now().timestamp();
    let stale = signing::authorization(
        &issuer.app_id,
        &issuer.secret,
        "POST",
        "/v1/receipts",
        now - 3600,
        &random_alnum(20),
        b"",
    );
    let bad_nonce = format!(
        "PJ1-HMAC-SHA256 appId={}, timestamp={now}, nonce=short, signature=AAAA",
        issuer.app_id
    );
    for (auth, code) in [
        (None, "auth_missing"),
        (Some(bad_nonce), "auth_malformed"),
        (Some(stale), "auth_stale_timestamp"),
    ] {
        let mut raw = Raw::open(&app).await;
        let mut headers = vec![("Content-Length", (4 << 20).to_string())];
        if let Some(auth) = auth {
            headers.push(("Authorization", auth));
        }
        raw.head("POST", "/v1/receipts", &headers).await;
        let (status, body) = raw.answer(soon).await.expect("answered without the body");
        assert_eq!((status, body["code"].as_str()), (401, Some(code)));
    }

    // A known app's well-formed, fresh push is read: no answer until the body comes.
    let receipt = serde_json::to_vec(&samples::outpatient(1)).expect("json");
    let auth = authorization(&issuer, "POST", "/v1/receipts", &receipt);
    let mut raw = Raw::open(&app).await;
    raw.head(
        "POST",
        "/v1/receipts",
        &[("Content-Length", receipt.len().to_string()), ("Authorization", auth)],
    )
    .await;
    assert!(
        raw.answer(Duration::from_millis(500)).await.is_none(),
        "waits for the body"
    );
    raw.write(&receipt).await;
    let (status, _) = raw.answer(soon).await.expect("answered");
    assert_eq!(status, 201);
});
