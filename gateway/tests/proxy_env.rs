//! A real `piaojia serve` whose environment names a proxy: receipt files are still
//! fetched directly from the issuer's host (a proxy named by the environment could
//! reach whatever it likes, past every address check).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_piaojia");
const PDF: &[u8] = b"%PDF-1.7\n% fetched directly\n%%EOF\n";

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A one-response-per-connection HTTP server on a thread, counting its requests.
fn serve_http(status: &'static str, body: &'static [u8]) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            // The head, up to its blank line.
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && !line.ends_with("\r\n\r\n") {}
            counter.fetch_add(1, Ordering::SeqCst);
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/pdf\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(body);
            let _ = stream.read(&mut [0u8; 1]);
        }
    });
    (port, hits)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn piaojia(data: &std::path::Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("PIAOJIA_DATA_DIR", data)
        .env("PIAOJIA_LOG__FILTER", "warn")
        .output()
        .expect("piaojia runs")
}

#[test]
fn file_fetches_ignore_proxies_named_by_the_environment() {
    let (file_port, file_hits) = serve_http("200 OK", PDF);
    let (proxy_port, proxy_hits) = serve_http("502 Bad Gateway", b"");
    let data = tempfile::tempdir().expect("tempdir");
    let agency = piaojia(
        data.path(),
        &[
            "agency",
            "create",
            "--code",
            "12110000400000001A",
            "--name",
            "示例市第一人民医院",
            "--file-host",
            "localhost",
        ],
    );
    assert!(agency.status.success(), "{}", String::from_utf8_lossy(&agency.stderr));
    let app = piaojia(
        data.path(),
        &[
            "app",
            "create",
            "--agency",
            "12110000400000001A",
            "--app-id",
            "hosp01-his",
        ],
    );
    assert!(app.status.success());
    let app: serde_json::Value = serde_json::from_slice(&app.stdout).expect("json");
    let secret = app["secret"].as_str().expect("secret").to_owned();

    let port = free_port();
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let _server = Server(
        Command::new(BIN)
            .arg("serve")
            .env("PIAOJIA_DATA_DIR", data.path())
            .env("PIAOJIA_SERVER__PORT", port.to_string())
            .env("PIAOJIA_SERVER__METRICS_ADDRESS", "")
            .env("PIAOJIA_LOG__FILTER", "warn")
            // The file host is on loopback, over http: allowed for this test only.
            .env("PIAOJIA_FILES__ALLOW_PRIVATE_NETWORKS", "true")
            .env("PIAOJIA_FILES__ALLOW_HTTP", "true")
            .env("HTTP_PROXY", &proxy)
            .env("http_proxy", &proxy)
            .env("HTTPS_PROXY", &proxy)
            .env("ALL_PROXY", &proxy)
            .env("all_proxy", &proxy)
            .stdout(Stdio::null())
            .spawn()
            .expect("serve starts"),
    );
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/examples");
    let mut receipt: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(examples.join("receipt.json")).expect("example")).expect("json");
    receipt["file"] = serde_json::json!({"format": "pdf", "url": format!("http://localhost:{file_port}/r.pdf")});
    let body = data.path().join("receipt-with-url.json");
    std::fs::write(&body, serde_json::to_vec(&receipt).expect("json")).expect("write");
    let out = Command::new(BIN)
        .args([
            "call",
            "--base-url",
            &format!("http://127.0.0.1:{port}"),
            "POST",
            "/v1/receipts",
        ])
        .arg("--body")
        .arg(&body)
        .env("PIAOJIA_APP_ID", "hosp01-his")
        .env("PIAOJIA_APP_SECRET", &secret)
        .output()
        .expect("call runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(pushed["file"]["size"], PDF.len(), "{pushed}");
    assert_eq!(file_hits.load(Ordering::SeqCst), 1, "fetched from the issuer's host");
    assert_eq!(proxy_hits.load(Ordering::SeqCst), 0, "never through the proxy");
}
