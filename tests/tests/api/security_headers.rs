//! Security headers on every response: API answers, errors (404, 413, 401
//! problem+json), health endpoints, the docs page; HSTS when the public URL is https.

use piaojia_tests::both_modes;
use piaojia_tests::harness::{Mode, TestConfig};
use serde_json::json;

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The headers every response carries; its CSP refuses framing.
fn assert_secured(resp: &reqwest::Response, what: &str, hsts: bool) {
    assert_eq!(header(resp, "x-content-type-options"), Some("nosniff"), "{what}");
    assert_eq!(header(resp, "referrer-policy"), Some("no-referrer"), "{what}");
    assert_eq!(header(resp, "x-frame-options"), Some("DENY"), "{what}");
    let csp = header(resp, "content-security-policy").unwrap_or_default();
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert_eq!(
        header(resp, "strict-transport-security").is_some(),
        hsts,
        "{what}: HSTS only when served over https"
    );
}

both_modes!(every_response_carries_security_headers, |mode: Mode| async move {
    let app = TestConfig::new(mode).await.spawn().await;
    let issuer = app.issuer().await;
    let wrong = piaojia_tests::harness::Issuer {
        secret: "x".repeat(43),
        ..issuer.clone()
    };

    let checks = [
        ("healthz", app.get("/healthz").await),
        ("readyz", app.get("/readyz").await),
        ("openapi.json", app.get("/openapi.json").await),
        ("unknown route 404", app.get("/nowhere").await),
        (
            "issuer 401",
            app.push(&wrong, &piaojia_tests::samples::outpatient(1)).await,
        ),
        (
            "issuer 201",
            app.push(&issuer, &piaojia_tests::samples::outpatient(2)).await,
        ),
        (
            "413",
            app.client
                .post(format!("{}/v1/mp/session", app.address))
                .json(&json!({"appId": "wx1111aaaa2222bbbb", "code": "c".repeat(100 * 1024)}))
                .send()
                .await
                .expect("sent"),
        ),
        (
            "mini-program 404",
            app.client
                .post(format!("{}/v1/mp/session", app.address))
                .json(&json!({"appId": "wx1111aaaa2222bbbb", "code": "abc"}))
                .send()
                .await
                .expect("sent"),
        ),
    ];
    for (what, resp) in &checks {
        assert_secured(resp, what, false);
    }
    let api = header(&checks[0].1, "content-security-policy").unwrap_or_default();
    assert!(api.starts_with("default-src 'none'"), "JSON may load nothing: {api}");
    assert_eq!(checks[3].1.status().as_u16(), 404);
    assert_eq!(checks[4].1.status().as_u16(), 401);
    assert_eq!(checks[6].1.status().as_u16(), 413);

    // HTML (the docs page) gets a page policy: its own scripts only.
    let docs = app.get("/docs/").await;
    assert_secured(&docs, "docs", false);
    let csp = header(&docs, "content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("'unsafe-eval'"),
        "{csp}"
    );

    // The metrics listener too.
    let metrics = app
        .client
        .get(format!("{}/metrics", app.metrics_address.as_deref().expect("metrics")))
        .send()
        .await
        .expect("sent");
    assert_secured(&metrics, "metrics", false);
});

both_modes!(hsts_when_the_public_url_is_https, |mode: Mode| async move {
    let mut config = TestConfig::new(mode).await;
    config.set("PIAOJIA_SERVER__PUBLIC_URL", "https://piaojia.example.org");
    let app = config.spawn().await;
    for path in ["/healthz", "/nowhere", "/docs/"] {
        let resp = app.get(path).await;
        assert_secured(&resp, path, true);
        assert!(
            header(&resp, "strict-transport-security").is_some_and(|v| v.contains("max-age=")),
            "{path}"
        );
    }
});
