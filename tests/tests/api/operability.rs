use piaojia_tests::both_modes;
use piaojia_tests::harness::{Mode, spawn_app};
use piaojia_tests::samples;
use serde_json::Value;

both_modes!(health_readiness_and_metrics, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let resp = app.get("/healthz").await;
    assert_eq!(resp.status().as_u16(), 200);
    let ready: Value = app.get("/readyz").await.json().await.expect("json");
    assert_eq!(ready["status"], "ready");
    assert_eq!(
        ready["database"],
        if mode == Mode::Embedded { "sqlite" } else { "postgres" }
    );
    assert_eq!(ready["redis"], mode == Mode::ScaleOut);

    let issuer = app.issuer().await;
    assert_eq!(app.push(&issuer, &samples::outpatient(1)).await.status().as_u16(), 201);
    let metrics = app.get("/metrics").await.text().await.expect("text");
    assert!(metrics.contains("http_requests_total{"), "{metrics}");
    assert!(
        metrics.contains("route=\"/v1/receipts\""),
        "route templates, not raw paths"
    );
    assert!(metrics.contains("http_request_duration_seconds_bucket{"), "histograms");
    assert!(
        metrics.contains("piaojia_issuer_requests_total{app_id=\"hosp01-his\",outcome=\"success\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("piaojia_issuer_request_duration_seconds_bucket{app_id=\"hosp01-his\""),
        "{metrics}"
    );
});

both_modes!(api_docs_are_served, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let spec: Value = app.get("/openapi.json").await.json().await.expect("json");
    assert!(spec["paths"]["/v1/receipts"]["post"].is_object());
    let resp = app.get("/docs/").await;
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.text().await.expect("html").contains("swagger"),
        "an offline docs page"
    );
});

/// The committed spec must equal what the code generates: run `piaojia openapi` after API changes.
#[test]
fn committed_openapi_spec_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json");
    let committed = std::fs::read_to_string(&path).expect("openapi/openapi.json is committed");
    assert!(
        committed == piaojia_gateway::openapi::spec_json(),
        "openapi/openapi.json drifted: run `cargo run -p piaojia-gateway -- openapi`"
    );
}
