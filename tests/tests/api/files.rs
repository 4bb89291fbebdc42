use actix_web::{App, HttpResponse, HttpServer, web};
use base64::Engine as _;
use piaojia_tests::both_modes;
use piaojia_tests::harness::{Mode, TestConfig, problem};
use piaojia_tests::samples;
use serde_json::{Value, json};

const PDF: &[u8] = b"%PDF-1.7\n% piaojia test receipt\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// The issuer's file host (an outside system), serving one PDF and one oversized file.
fn file_host() -> (u16, actix_web::dev::ServerHandle) {
    let server = HttpServer::new(|| {
        App::new()
            .route(
                "/r.pdf",
                web::get().to(|| async { HttpResponse::Ok().content_type("application/pdf").body(PDF) }),
            )
            .route(
                "/big.pdf",
                web::get().to(|| async { HttpResponse::Ok().body(vec![b'x'; 4096]) }),
            )
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .expect("bind");
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (port, handle)
}

both_modes!(inline_file_is_stored_with_its_hash, |mode: Mode| async move {
    let mut config = TestConfig::new(mode).await;
    config.set("PIAOJIA_FILES__MAX_BYTES", "1024");
    let app = config.spawn().await;
    let issuer = app.issuer().await;

    let mut r = samples::outpatient(1);
    r["file"] = json!({ "format": "pdf", "base64": base64::engine::general_purpose::STANDARD.encode(PDF) });
    let resp = app.push(&issuer, &r).await;
    assert_eq!(resp.status().as_u16(), 201);
    let created: Value = resp.json().await.expect("json");
    assert_eq!(created["file"]["sha256"], sha256_hex(PDF));
    assert_eq!(created["file"]["size"], PDF.len());
    assert_eq!(created["file"]["format"], "pdf");
    // Stored under a key of its own push (the receipt's id), in the agency's folder.
    let held = app
        .store
        .find_receipts("11060124", "0000000001")
        .await
        .expect("store")
        .pop()
        .expect("stored");
    let key = held.file.expect("file meta").object_key;
    assert_eq!(
        key,
        format!(
            "receipts/12110000400000001A/11060124/0000000001/{}.pdf",
            held.id.simple()
        )
    );
    let stored = std::fs::read(config.data_dir.path().join("files").join(&key)).expect("file in the local store");
    assert_eq!(stored, PDF);

    let mut big = samples::outpatient(2);
    big["file"] =
        json!({ "format": "ofd", "base64": base64::engine::general_purpose::STANDARD.encode(vec![0u8; 1025]) });
    let body = problem(app.push(&issuer, &big).await, 422).await;
    assert_eq!(body["code"], "file_too_large");
});

both_modes!(file_urls_only_from_allowed_hosts, |mode: Mode| async move {
    let (port, host) = file_host();
    let mut config = TestConfig::new(mode).await;
    config.set("PIAOJIA_FILES__MAX_BYTES", "1024");
    let app = config.spawn().await;
    app.create_agency("12110000400000001A", &["localhost"]).await;
    let issuer = app.create_issuer("12110000400000001A", "hosp01-his", None).await;

    // Not allow-listed.
    let mut r = samples::outpatient(1);
    r["file"] = json!({ "format": "pdf", "url": format!("http://127.0.0.1:{port}/r.pdf") });
    let body = problem(app.push(&issuer, &r).await, 422).await;
    assert_eq!(body["code"], "file_host_not_allowed");
    assert_eq!(body["errors"][0]["code"], "host_not_allowed");

    // Allow-listed, but it resolves to loopback and private networks are not allowed.
    r["file"] = json!({ "format": "pdf", "url": format!("http://localhost:{port}/r.pdf") });
    let body = problem(app.push(&issuer, &r).await, 422).await;
    assert_eq!(body["errors"][0]["code"], "private_address");
    host.stop(false).await;
});

both_modes!(file_url_is_fetched_when_allowed, |mode: Mode| async move {
    let (port, host) = file_host();
    let mut config = TestConfig::new(mode).await;
    config
        .set("PIAOJIA_FILES__MAX_BYTES", "1024")
        .set("PIAOJIA_FILES__ALLOW_PRIVATE_NETWORKS", "true");
    let app = config.spawn().await;
    app.create_agency("12110000400000001A", &["localhost"]).await;
    let issuer = app.create_issuer("12110000400000001A", "hosp01-his", None).await;

    let mut r = samples::outpatient(1);
    r["file"] = json!({ "format": "pdf", "url": format!("http://localhost:{port}/r.pdf") });
    let resp = app.push(&issuer, &r).await;
    assert_eq!(resp.status().as_u16(), 201);
    let created: Value = resp.json().await.expect("json");
    assert_eq!(created["file"]["sha256"], sha256_hex(PDF));

    let mut big = samples::outpatient(2);
    big["file"] = json!({ "format": "pdf", "url": format!("http://localhost:{port}/big.pdf") });
    assert_eq!(
        problem(app.push(&issuer, &big).await, 422).await["code"],
        "file_too_large"
    );

    let mut missing = samples::outpatient(3);
    missing["file"] = json!({ "format": "pdf", "url": format!("http://localhost:{port}/nope.pdf") });
    assert_eq!(
        problem(app.push(&issuer, &missing).await, 422).await["code"],
        "file_fetch_failed"
    );
    host.stop(false).await;
});

// Two pushes of one receipt with different files race: one wins (201), the other
// is refused (409), and the file served is always the winner's, whose SHA-256 the
// record holds; the loser's file is not left behind.
both_modes!(racing_pushes_never_mismatch_file_and_record, |mode: Mode| async move {
    let config = TestConfig::new(mode).await;
    let app = std::sync::Arc::new(config.spawn().await);
    let issuer = app.issuer().await;
    for round in 0..6u64 {
        let n = 100 + round;
        let variants: Vec<Value> = (0..2u8)
            .map(|v| {
                let mut r = samples::outpatient(n);
                r["busNo"] = format!("MZ-RACE-{v}").into();
                let file = [PDF, &[v; 64]].concat();
                r["file"] =
                    json!({ "format": "pdf", "base64": base64::engine::general_purpose::STANDARD.encode(file) });
                r
            })
            .collect();
        let tasks: Vec<_> = variants
            .iter()
            .cloned()
            .map(|r| {
                let (app, issuer) = (app.clone(), issuer.clone());
                tokio::spawn(async move { app.push(&issuer, &r).await.status().as_u16() })
            })
            .collect();
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.expect("task"));
        }
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 409], "round {round}");

        let bill_no = format!("{n:010}");
        let held = app
            .store
            .find_receipts("11060124", &bill_no)
            .await
            .expect("store")
            .pop()
            .expect("stored");
        let meta = held.file.expect("file meta");
        let dir = config
            .data_dir
            .path()
            .join("files/receipts/12110000400000001A/11060124")
            .join(&bill_no);
        let files: Vec<_> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(files.len(), 1, "the loser's file is removed: {files:?}");
        let served = std::fs::read(config.data_dir.path().join("files").join(&meta.object_key)).expect("served file");
        assert_eq!(sha256_hex(&served), meta.sha256, "round {round}");
    }
});
