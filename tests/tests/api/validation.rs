use piaojia_core::pii::random_alnum;
use piaojia_tests::both_modes;
use piaojia_tests::harness::{Mode, problem, spawn_app};
use piaojia_tests::samples;
use serde_json::{Value, json};

fn pointers(body: &Value) -> Vec<(String, String)> {
    body["errors"]
        .as_array()
        .map(|errs| {
            errs.iter()
                .map(|e| {
                    (
                        e["pointer"].as_str().unwrap_or_default().to_owned(),
                        e["code"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

both_modes!(field_errors_point_at_fields, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;

    // Several problems at once are all reported.
    let mut r = samples::outpatient(1);
    let obj = r.as_object_mut().expect("object");
    obj.remove("busNo");
    obj.insert("billBatchCode".into(), "1106012".into());
    obj.insert("random".into(), "abc".into());
    obj.insert("issuedAt".into(), "2026-11-23T09:30:00".into());
    let body = problem(app.push(&issuer, &r).await, 422).await;
    assert_eq!(body["code"], "validation_failed");
    let found = pointers(&body);
    for pointer in ["/busNo", "/billBatchCode", "/random", "/issuedAt"] {
        assert!(found.iter().any(|(p, _)| p == pointer), "{pointer} in {found:?}");
    }
    assert!(found.contains(&("/busNo".into(), "required".into())), "{found:?}");

    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({"totalAmt": "128.505"}), "/totalAmt", "too_many_decimals"),
        (json!({"busType": "09"}), "/busType", "invalid_value"),
        (json!({"payerType": "3"}), "/payerType", "invalid_value"),
        (json!({"idCardNo": "110105194912310021"}), "/idCardNo", "invalid_value"),
    ];
    for (patch, pointer, code) in cases {
        let mut r = samples::outpatient(2);
        for (k, v) in patch.as_object().expect("object") {
            r[k] = v.clone();
        }
        let body = problem(app.push(&issuer, &r).await, 422).await;
        let found = pointers(&body);
        assert!(
            found.contains(&(pointer.into(), code.into())),
            "{pointer} {code} in {found:?}"
        );
        let text = body.to_string();
        assert!(
            !text.contains("110105194912310021") && !text.contains("张三丰"),
            "errors never echo personal data"
        );
    }

    // Item sums must equal totalAmt.
    let mut r = samples::outpatient(3);
    r["chargeDetail"][1]["amt"] = "40.01".into();
    let found = pointers(&problem(app.push(&issuer, &r).await, 422).await);
    assert!(
        found.iter().any(|(p, c)| p == "/chargeDetail" && c == "sum_mismatch"),
        "{found:?}"
    );
    let mut r = samples::outpatient(4);
    r["payChannelDetail"][0]["payChannelValue"] = "79.99".into();
    let found = pointers(&problem(app.push(&issuer, &r).await, 422).await);
    assert!(
        found
            .iter()
            .any(|(p, c)| p == "/payChannelDetail" && c == "sum_mismatch"),
        "{found:?}"
    );

    // Nothing invalid was stored.
    let agency = app
        .store
        .agency_by_code(&issuer.agency_code)
        .await
        .expect("db")
        .expect("agency");
    assert_eq!(app.store.count_receipts(agency.id).await.expect("count"), 0);
});

both_modes!(wrong_json_is_400, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;
    let ts = chrono::Utc::now().timestamp();
    let resp = app
        .signed_raw(
            &issuer,
            "POST",
            "/v1/receipts",
            b"{\"billNo\": ".to_vec(),
            ts,
            &random_alnum(20),
        )
        .await;
    assert_eq!(problem(resp, 400).await["code"], "invalid_json");

    let mut r = samples::outpatient(1);
    r["busType"] = json!(2);
    let body = problem(app.push(&issuer, &r).await, 400).await;
    assert_eq!(body["code"], "invalid_json");
    assert_eq!(body["errors"][0]["pointer"], "/busType");

    let resp = app
        .signed_raw(
            &issuer,
            "POST",
            "/v1/receipts",
            b"[1,2]".to_vec(),
            ts,
            &random_alnum(20),
        )
        .await;
    assert_eq!(problem(resp, 400).await["code"], "invalid_json");
});

both_modes!(wrong_content_type_and_oversized_bodies, |mode: Mode| async move {
    let mut config = piaojia_tests::harness::TestConfig::new(mode).await;
    config.set("PIAOJIA_SERVER__BODY_LIMIT_BYTES", "4096");
    let app = config.spawn().await;
    let issuer = app.issuer().await;
    let body = serde_json::to_vec(&samples::outpatient(1)).expect("json");
    let ts = chrono::Utc::now().timestamp();
    let nonce = random_alnum(20);
    let auth = piaojia_core::signing::authorization(
        &issuer.app_id,
        &issuer.secret,
        "POST",
        "/v1/receipts",
        ts,
        &nonce,
        &body,
    );
    let resp = app
        .client
        .post(format!("{}/v1/receipts", app.address))
        .header("authorization", auth)
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(problem(resp, 415).await["code"], "unsupported_media_type");

    let mut big = samples::outpatient(2);
    big["padding"] = "x".repeat(5000).into();
    assert_eq!(
        problem(app.push(&issuer, &big).await, 413).await["code"],
        "payload_too_large"
    );
});

both_modes!(unknown_routes_are_problems, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    assert_eq!(
        problem(app.get("/v1/nothing-here").await, 404).await["code"],
        "route_not_found"
    );
    let issuer = app.issuer().await;
    let resp = app.signed(&issuer, "GET", "/v1/receipts/1106/12", None).await;
    assert_eq!(problem(resp, 400).await["code"], "invalid_path");
});
