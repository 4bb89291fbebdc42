//! The README walkthrough, run against the real `piaojia` binary: provision an
//! agency and an issuer app, start the embedded gateway, push, read, reverse.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_piaojia");

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/examples")
}

fn piaojia(data: &Path, port: u16, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("PIAOJIA_DATA_DIR", data)
        .env("PIAOJIA_SERVER__PORT", port.to_string())
        .env("PIAOJIA_SERVER__METRICS_ADDRESS", "")
        .env("PIAOJIA_LOG__FILTER", "warn")
        .output()
        .expect("piaojia runs")
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn readme_walkthrough() {
    let data = tempfile::tempdir().expect("tempdir");
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();

    let agency = json(&piaojia(
        data.path(),
        port,
        &[
            "agency",
            "create",
            "--code",
            "12110000400000001A",
            "--name",
            "示例市第一人民医院",
        ],
    ));
    assert_eq!(agency["code"], "12110000400000001A");
    let dup = piaojia(
        data.path(),
        port,
        &["agency", "create", "--code", "12110000400000001A", "--name", "x"],
    );
    assert!(!dup.status.success(), "a second agency with the same code is refused");

    let app = json(&piaojia(
        data.path(),
        port,
        &[
            "app",
            "create",
            "--agency",
            "12110000400000001A",
            "--app-id",
            "hosp01-his",
        ],
    ));
    let secret = app["secret"].as_str().expect("secret shown once").to_owned();
    assert_eq!(secret.len(), 43);
    let listed = json(&piaojia(data.path(), port, &["app", "list"]));
    assert!(!listed.to_string().contains(&secret), "secrets are never listed");

    let server = Server(
        Command::new(BIN)
            .arg("serve")
            .env("PIAOJIA_DATA_DIR", data.path())
            .env("PIAOJIA_SERVER__PORT", port.to_string())
            .env("PIAOJIA_SERVER__METRICS_ADDRESS", "")
            .env("PIAOJIA_LOG__FILTER", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("serve starts"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let call = |method: &str, path: &str, body: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["call", "--base-url", &base, method, path])
            .env("PIAOJIA_APP_ID", "hosp01-his")
            .env("PIAOJIA_APP_SECRET", &secret);
        if let Some(file) = body {
            cmd.arg("--body").arg(examples().join(file));
        }
        cmd.output().expect("call runs")
    };
    let pushed = json(&call("POST", "/v1/receipts", Some("receipt.json")));
    assert_eq!(pushed["status"], "issued");
    let read = json(&call("GET", "/v1/receipts/11060124/0000000901", None));
    assert_eq!(read["id"], pushed["id"]);
    let reversed = json(&call(
        "POST",
        "/v1/receipts/11060124/0000000901/reversal",
        Some("reversal.json"),
    ));
    assert_eq!(reversed["status"], "reversed");

    // Rotation: the old secret keeps working until retired.
    let rotated = json(&piaojia(
        data.path(),
        port,
        &["app", "rotate-secret", "--app-id", "hosp01-his"],
    ));
    assert_eq!(rotated["activeSecretIds"].as_array().map(Vec::len), Some(2));
    let disabled = json(&piaojia(
        data.path(),
        port,
        &["app", "disable", "--app-id", "hosp01-his"],
    ));
    assert_eq!(disabled["enabled"], false);
    drop(server);
}

#[test]
fn keygen_and_config_errors() {
    let out = Command::new(BIN).arg("keygen").output().expect("runs");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.contains("PIAOJIA_SECURITY__MASTER_KEYS=k1:"));

    let out = Command::new(BIN)
        .args(["config", "check"])
        .env("DATABASE_URL", "mysql://x")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("database.url"),
        "errors name the key"
    );

    // The keygen's operator token is long enough; a short one stops `serve` at start.
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("PIAOJIA_OPS__TOKEN="))
        .expect("keygen prints an operator token");
    assert!(token.len() >= 32, "{token}");
    let data = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .arg("serve")
        .env("PIAOJIA_DATA_DIR", data.path())
        .env("PIAOJIA_SERVER__PORT", "0")
        .env("PIAOJIA_SERVER__METRICS_ADDRESS", "")
        .env("PIAOJIA_OPS__TOKEN", "password123")
        .output()
        .expect("runs");
    assert!(!out.status.success(), "a short operator token is refused at start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ops.token") && stderr.contains("32"), "{stderr}");
    assert!(!stderr.contains("password123"), "the token is not printed: {stderr}");
}

// The first minute (README): `piaojia demo` against a running embedded gateway
// provisions the sandbox hospital, pushes a receipt for a WeChat payer, and the
// page it prints shows the template message, whose link opens the receipt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_shows_what_the_payer_sees() {
    let data = tempfile::tempdir().expect("tempdir");
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let server = Server(
        Command::new(BIN)
            .arg("serve")
            .env("PIAOJIA_DATA_DIR", data.path())
            .env("PIAOJIA_SERVER__PORT", port.to_string())
            .env("PIAOJIA_SERVER__METRICS_ADDRESS", "")
            .env("PIAOJIA_LOG__FILTER", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("serve starts"),
    );
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let demo = json(&piaojia(data.path(), port, &["demo"]));
    let page = demo["whatThePayerSees"].as_str().expect("the payer's page").to_owned();
    assert!(
        page.starts_with(&format!("http://127.0.0.1:{port}/sandbox/payer?")),
        "{page}"
    );
    let mut phone = piaojia_tests::browser::Browser::new();
    let mut seen = String::new();
    for _ in 0..100 {
        let p = phone.get(&page).await;
        assert_eq!(p.status, 200);
        if p.body.contains("已开具") {
            seen = p.body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.contains("128.50元"), "the template message is shown: {seen}");
    let start = seen
        .find("/h5/wxd3m0off1c1a1acc0/receipts/")
        .expect("a link to the receipt page");
    let end = start + seen[start..].find('"').expect("end of link");
    let receipt = phone
        .get(&format!("http://127.0.0.1:{port}{}", &seen[start..end]))
        .await;
    assert_eq!(receipt.status, 200, "{}", receipt.body);
    assert!(
        receipt.body.contains("¥128.50") && receipt.body.contains("西药费"),
        "{}: {}",
        receipt.url,
        receipt.body
    );
    // A forged key shows nothing.
    let forged = phone.get(&format!("{}x", page)).await;
    assert_eq!(forged.status, 404);
    assert!(!forged.body.contains("128.50"));
    drop(server);
}

/// One command of a README shell block: `piaojia` arguments and what `echo` pipes in.
struct ShellStep {
    args: Vec<String>,
    stdin: Option<String>,
}

/// Splits a shell line into words: whitespace separates, single quotes keep
/// everything (the README's blocks use nothing else).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                word.get_or_insert_with(String::new);
            }
            c if c.is_whitespace() && !quoted => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    assert!(!quoted, "unbalanced quote in {line:?}");
    words.extend(word);
    words
}

/// The commands and exports of the first `sh` block under `heading` in README.md,
/// so the README cannot drift from what the test runs.
fn readme_block(heading: &str) -> (Vec<ShellStep>, Vec<(String, String)>) {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).expect("README.md");
    let section = &readme[readme.find(heading).expect("the walkthrough heading")..];
    let block = &section[section.find("```sh\n").expect("a sh block") + 6..];
    let block = &block[..block.find("```").expect("the block ends")];
    let joined = block.replace("\\\n", " ");
    let (mut steps, mut exports) = (Vec::new(), Vec::new());
    for line in joined.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (stdin, command) = match line.split_once(" | ") {
            Some((echo, command)) => {
                let echoed = shell_words(echo);
                assert_eq!(echoed.len(), 2, "echo '<json>' | …: {line}");
                assert_eq!(echoed[0], "echo");
                (Some(format!("{}\n", echoed[1])), command)
            }
            None => (None, line),
        };
        let mut words = shell_words(command);
        match words.first().map(String::as_str) {
            Some("export") => {
                for w in &words[1..] {
                    let (k, v) = w.split_once('=').expect("export NAME=value");
                    exports.push((k.to_owned(), v.to_owned()));
                }
            }
            Some("piaojia") => {
                words.remove(0);
                steps.push(ShellStep { args: words, stdin });
            }
            _ => panic!("the walkthrough runs only piaojia and export: {line}"),
        }
    }
    (steps, exports)
}

fn run_step(data: &Path, port: u16, step: &ShellStep, env: &[(String, String)]) -> Output {
    use std::io::Write as _;
    let mut child = Command::new(BIN)
        .args(&step.args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("PIAOJIA_DATA_DIR", data)
        .env("PIAOJIA_SERVER__PORT", port.to_string())
        .env("PIAOJIA_SERVER__METRICS_ADDRESS", "")
        .env("PIAOJIA_LOG__FILTER", "warn")
        .env("PIAOJIA_BASE_URL", format!("http://127.0.0.1:{port}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("piaojia runs");
    let mut stdin = child.stdin.take().expect("stdin");
    if let Some(input) = &step.stdin {
        stdin.write_all(input.as_bytes()).expect("stdin written");
    }
    drop(stdin);
    child.wait_with_output().expect("piaojia ends")
}

// The README's reimburser walkthrough, command for command, on the receipt the
// issuer walkthrough pushes: only the printed secret is substituted.
#[test]
fn readme_reimburser_walkthrough() {
    let (steps, exports) = readme_block("### Walkthrough: a reimburser locks and closes a receipt");
    assert_eq!(steps.len(), 4, "create, verify, lock, close");
    let data = tempfile::tempdir().expect("tempdir");
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    json(&piaojia(
        data.path(),
        port,
        &[
            "agency",
            "create",
            "--code",
            "12110000400000001A",
            "--name",
            "示例市第一人民医院",
        ],
    ));
    let app = json(&piaojia(
        data.path(),
        port,
        &[
            "app",
            "create",
            "--agency",
            "12110000400000001A",
            "--app-id",
            "hosp01-his",
        ],
    ));
    let issuer_secret = app["secret"].as_str().expect("issuer secret").to_owned();
    let server = Server(
        Command::new(BIN)
            .arg("serve")
            .env("PIAOJIA_DATA_DIR", data.path())
            .env("PIAOJIA_SERVER__PORT", port.to_string())
            .env("PIAOJIA_SERVER__METRICS_ADDRESS", "")
            .env("PIAOJIA_LOG__FILTER", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("serve starts"),
    );
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The issuer walkthrough's step 2: the receipt the reimburser works on.
    let pushed = Command::new(BIN)
        .args(["call", "--base-url", &format!("http://127.0.0.1:{port}")])
        .args(["POST", "/v1/receipts", "--body"])
        .arg(examples().join("receipt.json"))
        .env("PIAOJIA_APP_ID", "hosp01-his")
        .env("PIAOJIA_APP_SECRET", &issuer_secret)
        .output()
        .expect("push runs");
    assert_eq!(json(&pushed)["status"], "issued");
    let receipt: serde_json::Value =
        serde_json::from_slice(&std::fs::read(examples().join("receipt.json")).expect("receipt.json"))
            .expect("receipt JSON");

    // 1. Register the insurer; its secret replaces the README's placeholder.
    let created = json(&run_step(data.path(), port, &steps[0], &[]));
    assert_eq!(created["appId"], "insurer01");
    let secret = created["secret"].as_str().expect("secret printed once").to_owned();
    let env: Vec<(String, String)> = exports
        .into_iter()
        .map(|(k, v)| {
            if k == "PIAOJIA_APP_SECRET" {
                (k, secret.clone())
            } else {
                (k, v)
            }
        })
        .collect();
    assert!(
        env.iter().any(|(k, v)| k == "PIAOJIA_APP_ID" && v == "insurer01"),
        "{env:?}"
    );
    // The README's bodies name the pushed receipt by its code, number and check code.
    for step in &steps[1..] {
        let body: serde_json::Value =
            serde_json::from_str(step.stdin.as_deref().expect("a piped body")).expect("the body is JSON");
        for key in ["billBatchCode", "billNo", "random"] {
            assert_eq!(body[key], receipt[key], "{key} of {body}");
        }
    }

    // 2. 查验.
    let verified = json(&run_step(data.path(), port, &steps[1], &env));
    assert_eq!(verified["authentic"], true, "{verified}");
    assert_eq!(verified["reimbursementState"], "INIT", "{verified}");
    // 3. Lock.
    let locked = json(&run_step(data.path(), port, &steps[2], &env));
    assert_eq!(locked["receipts"][0]["reimbursementState"], "LOCK", "{locked}");
    assert_eq!(locked["receipts"][0]["heldByYou"], true, "{locked}");

    // Another reimburser's lock meanwhile is the conflict.
    let other = json(&piaojia(
        data.path(),
        port,
        &[
            "reimburser",
            "create",
            "--app-id",
            "insurer02",
            "--kind",
            "employer",
            "--name",
            "示例公司",
            "--org-code",
            "91110000100000001X",
            "--accept",
            "12110000400000001A",
        ],
    ));
    let other_env = vec![
        ("PIAOJIA_APP_ID".to_owned(), "insurer02".to_owned()),
        (
            "PIAOJIA_APP_SECRET".to_owned(),
            other["secret"].as_str().expect("secret").to_owned(),
        ),
    ];
    let refused = run_step(data.path(), port, &steps[2], &other_env);
    assert!(!refused.status.success(), "a second lock is refused");
    let problem: serde_json::Value = serde_json::from_slice(&refused.stdout).expect("a problem");
    assert_eq!(problem["status"], 409, "{problem}");
    assert_eq!(problem["code"], "receipt_locked_by_other", "{problem}");

    // 4. Close with the amount paid.
    let closed = json(&run_step(data.path(), port, &steps[3], &env));
    assert_eq!(closed["receipts"][0]["reimbursementState"], "CLOSURE", "{closed}");
    assert_eq!(closed["receipts"][0]["paidAmt"], "100.00", "{closed}");
    drop(server);
}
