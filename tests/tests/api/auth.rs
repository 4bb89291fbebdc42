use piaojia_core::pii::random_alnum;
use piaojia_core::signing;
use piaojia_gateway::provisioning;
use piaojia_tests::both_modes;
use piaojia_tests::harness::{Issuer, Mode, TestConfig, problem, spawn_app};
use piaojia_tests::samples;

fn body(n: u64) -> Vec<u8> {
    serde_json::to_vec(&samples::outpatient(n)).expect("json")
}

both_modes!(missing_or_malformed_header_is_401, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let _ = app.issuer().await;
    let resp = app
        .client
        .post(format!("{}/v1/receipts", app.address))
        .header("content-type", "application/json")
        .body(body(1))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        resp.headers().get("www-authenticate").and_then(|v| v.to_str().ok()),
        Some("PJ1-HMAC-SHA256")
    );
    assert_eq!(problem(resp, 401).await["code"], "auth_missing");

    for (header, code) in [
        ("Bearer abc", "auth_wrong_scheme"),
        (
            "PJ1-HMAC-SHA256 appId=hosp01-his, timestamp=1, nonce=short, signature=AAAA",
            "auth_malformed",
        ),
    ] {
        let resp = app
            .client
            .post(format!("{}/v1/receipts", app.address))
            .header("authorization", header)
            .send()
            .await
            .expect("sent");
        assert_eq!(problem(resp, 401).await["code"], code, "{header}");
    }
});

both_modes!(bad_signature_is_401, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;
    let wrong = Issuer {
        secret: "not-the-secret".into(),
        ..issuer.clone()
    };
    assert_eq!(
        problem(app.push(&wrong, &samples::outpatient(1)).await, 401).await["code"],
        "auth_bad_signature"
    );

    // A signature over other bytes than those sent.
    let ts = chrono::Utc::now().timestamp();
    let nonce = random_alnum(20);
    let auth = signing::authorization(
        &issuer.app_id,
        &issuer.secret,
        "POST",
        "/v1/receipts",
        ts,
        &nonce,
        &body(1),
    );
    let resp = app
        .client
        .post(format!("{}/v1/receipts", app.address))
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(body(2))
        .send()
        .await
        .expect("sent");
    assert_eq!(problem(resp, 401).await["code"], "auth_bad_signature");

    // The signature covers the query string as sent.
    let auth = signing::authorization(
        &issuer.app_id,
        &issuer.secret,
        "GET",
        "/v1/receipts/11060124/0000000001",
        ts,
        &random_alnum(20),
        b"",
    );
    let resp = app
        .client
        .get(format!("{}/v1/receipts/11060124/0000000001?x=1", app.address))
        .header("authorization", auth)
        .send()
        .await
        .expect("sent");
    assert_eq!(problem(resp, 401).await["code"], "auth_bad_signature");
});

both_modes!(stale_timestamp_is_401, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;
    let now = chrono::Utc::now().timestamp();
    // The window is 300 s; a margin keeps a second ticking over mid-test from
    // moving the edge.
    for ts in [now - 305, now + 305] {
        let resp = app
            .signed_raw(&issuer, "POST", "/v1/receipts", body(1), ts, &random_alnum(20))
            .await;
        assert_eq!(problem(resp, 401).await["code"], "auth_stale_timestamp");
    }
    // Within the window is fine.
    let resp = app
        .signed_raw(&issuer, "POST", "/v1/receipts", body(1), now - 250, &random_alnum(20))
        .await;
    assert_eq!(resp.status().as_u16(), 201);
});

both_modes!(replayed_nonce_is_401, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;
    let ts = chrono::Utc::now().timestamp();
    let nonce = random_alnum(32);
    assert_eq!(
        app.signed_raw(&issuer, "POST", "/v1/receipts", body(1), ts, &nonce)
            .await
            .status()
            .as_u16(),
        201
    );
    let resp = app
        .signed_raw(&issuer, "POST", "/v1/receipts", body(1), ts, &nonce)
        .await;
    assert_eq!(problem(resp, 401).await["code"], "auth_replayed_nonce");
    // A failed signature does not burn the nonce of the real app.
    let fresh = random_alnum(32);
    let wrong = Issuer {
        secret: "x".repeat(43),
        ..issuer.clone()
    };
    assert_eq!(
        app.signed_raw(&wrong, "POST", "/v1/receipts", body(2), ts, &fresh)
            .await
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        app.signed_raw(&issuer, "POST", "/v1/receipts", body(2), ts, &fresh)
            .await
            .status()
            .as_u16(),
        201
    );
});

/// Two gateway processes share PostgreSQL and Redis: a nonce used on one is refused by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_nonce_across_two_gateways_is_401() {
    let config = TestConfig::new(Mode::ScaleOut).await;
    let first = config.spawn().await;
    let second = config.spawn().await;
    assert_ne!(first.address, second.address);
    let issuer = first.issuer().await;
    let ts = chrono::Utc::now().timestamp();
    let nonce = random_alnum(40);
    assert_eq!(
        first
            .signed_raw(&issuer, "POST", "/v1/receipts", body(1), ts, &nonce)
            .await
            .status()
            .as_u16(),
        201
    );
    let resp = second
        .signed_raw(&issuer, "POST", "/v1/receipts", body(1), ts, &nonce)
        .await;
    assert_eq!(problem(resp, 401).await["code"], "auth_replayed_nonce");
}

both_modes!(unknown_and_disabled_apps_are_refused, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;
    // An unknown app id and a wrong signature of a known one: the same answer, so
    // app ids cannot be enumerated.
    let unknown = Issuer {
        app_id: "nobody".into(),
        ..issuer.clone()
    };
    let wrong = Issuer {
        secret: "w".repeat(43),
        ..issuer.clone()
    };
    let unknown_answer = problem(app.push(&unknown, &samples::outpatient(1)).await, 401).await;
    let wrong_answer = problem(app.push(&wrong, &samples::outpatient(1)).await, 401).await;
    assert_eq!(unknown_answer["code"], "auth_bad_signature");
    assert_eq!(unknown_answer, wrong_answer, "status, code and message are the same");

    provisioning::set_enabled(app.store.as_ref(), &issuer.app_id, false)
        .await
        .expect("disable");
    // Without its secret nobody learns that the app exists and is disabled.
    assert_eq!(
        problem(app.push(&wrong, &samples::outpatient(1)).await, 401).await,
        wrong_answer
    );
    // Its holder does.
    assert_eq!(
        problem(app.push(&issuer, &samples::outpatient(1)).await, 403).await["code"],
        "app_disabled"
    );
    provisioning::set_enabled(app.store.as_ref(), &issuer.app_id, true)
        .await
        .expect("enable");
    assert_eq!(app.push(&issuer, &samples::outpatient(1)).await.status().as_u16(), 201);
});

// Unknown app ids are checked against a dummy secret after reading the body, as a
// known app's wrong signature is: no gross difference in time either (both take
// the body's upload; neither answers before it).
both_modes!(
    unknown_app_ids_take_the_time_of_wrong_signatures,
    |mode: Mode| async move {
        let app = spawn_app(mode).await;
        let issuer = app.issuer().await;
        let unknown = Issuer {
            app_id: "nobody".into(),
            ..issuer.clone()
        };
        let wrong = Issuer {
            secret: "w".repeat(43),
            ..issuer.clone()
        };
        let mut big = samples::outpatient(1);
        big["busNo"] = serde_json::Value::String("b".repeat(2 << 20));
        let big = serde_json::to_vec(&big).expect("json");
        let mut median = Vec::new();
        for who in [&unknown, &wrong] {
            let mut times = Vec::new();
            for _ in 0..5 {
                let started = std::time::Instant::now();
                let resp = app
                    .signed_raw(
                        who,
                        "POST",
                        "/v1/receipts",
                        big.clone(),
                        chrono::Utc::now().timestamp(),
                        &random_alnum(20),
                    )
                    .await;
                assert_eq!(resp.status().as_u16(), 401);
                times.push(started.elapsed());
            }
            times.sort();
            median.push(times[2]);
        }
        let (unknown_t, wrong_t) = (median[0], median[1]);
        assert!(
            unknown_t * 4 > wrong_t && wrong_t * 4 > unknown_t,
            "unknown app {unknown_t:?} vs wrong signature {wrong_t:?}"
        );
    }
);

both_modes!(
    secret_rotation_keeps_old_secret_until_retired,
    |mode: Mode| async move {
        let app = spawn_app(mode).await;
        let old = app.issuer().await;
        let rotated = provisioning::rotate_secret(app.store.as_ref(), &app.keyring, &old.app_id, true)
            .await
            .expect("rotate");
        let new = Issuer {
            secret: rotated.secret.expect("new secret"),
            ..old.clone()
        };
        assert_eq!(rotated.active_secret_ids.len(), 2);
        assert_eq!(
            app.push(&old, &samples::outpatient(1)).await.status().as_u16(),
            201,
            "old secret still valid"
        );
        assert_eq!(
            app.push(&new, &samples::outpatient(2)).await.status().as_u16(),
            201,
            "new secret valid"
        );

        provisioning::retire_old_secrets(app.store.as_ref(), &old.app_id)
            .await
            .expect("retire");
        assert_eq!(
            problem(app.push(&old, &samples::outpatient(3)).await, 401).await["code"],
            "auth_bad_signature"
        );
        assert_eq!(app.push(&new, &samples::outpatient(3)).await.status().as_u16(), 201);

        // A hard replacement invalidates the current secret at once.
        let replaced = provisioning::rotate_secret(app.store.as_ref(), &app.keyring, &old.app_id, false)
            .await
            .expect("replace");
        assert_eq!(replaced.active_secret_ids.len(), 1);
        assert_eq!(
            problem(app.push(&new, &samples::outpatient(4)).await, 401).await["code"],
            "auth_bad_signature"
        );
    }
);
