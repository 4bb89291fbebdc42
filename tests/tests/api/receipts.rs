use piaojia_tests::both_modes;
use piaojia_tests::harness::{Mode, problem, spawn_app};
use piaojia_tests::samples::{self, BATCH};
use serde_json::Value;

both_modes!(push_then_read_back, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;
    let receipt = samples::outpatient(1);

    let resp = app.push(&issuer, &receipt).await;
    assert_eq!(resp.status().as_u16(), 201);
    assert!(resp.headers().contains_key("x-request-id"));
    let created: Value = resp.json().await.expect("json");
    assert_eq!(created["billBatchCode"], BATCH);
    assert_eq!(created["billNo"], "0000000001");
    assert_eq!(created["totalAmt"], "128.50");
    assert_eq!(created["totalFen"], 12850);
    assert_eq!(created["status"], "issued");
    assert_eq!(created["reimbursementState"], "INIT");
    assert_eq!(created["payer"], "张*丰", "the payer name is masked");
    // 09:30 at +08:00 is stored and shown in UTC.
    assert_eq!(created["issuedAt"], "2026-11-23T01:30:00Z");

    let resp = app
        .signed(&issuer, "GET", &format!("/v1/receipts/{BATCH}/0000000001"), None)
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let read: Value = resp.json().await.expect("json");
    assert_eq!(read["id"], created["id"]);
    assert_eq!(read["contentHash"], created["contentHash"]);
    assert_eq!(read["busType"], "02");
    assert_eq!(
        app.store
            .count_receipts(
                app.store
                    .agency_by_code(&issuer.agency_code)
                    .await
                    .expect("db")
                    .expect("agency")
                    .id
            )
            .await
            .expect("count"),
        1
    );
});

both_modes!(repeat_push_returns_first_result, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;
    let receipt = samples::outpatient(2);
    let first: Value = app.push(&issuer, &receipt).await.json().await.expect("json");

    // Same content, spelled differently: other key order, amount spelling, offset and whitespace.
    let mut same = receipt.clone();
    same["totalAmt"] = serde_json::json!(128.5);
    same["issuedAt"] = "2026-11-23T01:30:00Z".into();
    same["anotherUnknownField"] = "x".into();
    let body = serde_json::to_vec_pretty(&same).expect("json");
    let resp = app
        .signed_raw(
            &issuer,
            "POST",
            "/v1/receipts",
            body,
            chrono::Utc::now().timestamp(),
            &piaojia_core::pii::random_alnum(20),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let again: Value = resp.json().await.expect("json");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["receivedAt"], first["receivedAt"]);
});

both_modes!(conflicting_push_is_409, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;
    let receipt = samples::outpatient(3);
    assert_eq!(app.push(&issuer, &receipt).await.status().as_u16(), 201);

    let mut changed = receipt.clone();
    changed["busNo"] = "MZ-OTHER".into();
    let body = problem(app.push(&issuer, &changed).await, 409).await;
    assert_eq!(body["code"], "receipt_conflict");
});

// Receipt identity is the agency's own: an issuer that pushes another agency's
// code and number first never blocks the real receipt, and neither it nor a
// prober learns which numbers exist elsewhere; operators see the clash.
both_modes!(another_agency_can_neither_block_nor_probe, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let real = app.issuer().await;
    app.create_agency("12110000400000002B", &[]).await;
    let rogue = app.create_issuer("12110000400000002B", "hosp02-his", None).await;
    let receipt = samples::outpatient(3);

    // The rogue issuer is first with the real hospital's code and number.
    let mut forged = receipt.clone();
    forged["random"] = "zzzzzz".into();
    forged["busNo"] = "MZ-FORGED".into();
    assert_eq!(app.push(&rogue, &forged).await.status().as_u16(), 201);
    // The real receipt is not blocked.
    let created: Value = {
        let resp = app.push(&real, &receipt).await;
        assert_eq!(resp.status().as_u16(), 201);
        resp.json().await.expect("json")
    };
    assert_eq!(created["busNo"], receipt["busNo"], "{created}");
    // A probe of an existing and of an unused number gets the same answer.
    let mut probe = samples::outpatient(7);
    probe["billNo"] = "0000000003".into();
    probe["busNo"] = "MZ-PROBE".into();
    let mut unused = samples::outpatient(8);
    unused["busNo"] = "MZ-PROBE".into();
    assert_eq!(app.push(&rogue, &unused).await.status().as_u16(), 201);
    let probed = app.push(&rogue, &probe).await;
    assert_eq!(
        probed.status().as_u16(),
        409,
        "the rogue's own receipt 3, not the real one"
    );
    // Each issuer reads its own receipt under the code and number.
    let path = format!("/v1/receipts/{BATCH}/0000000003");
    let mine: Value = app.signed(&real, "GET", &path, None).await.json().await.expect("json");
    assert_eq!(mine["busNo"], receipt["busNo"]);
    let theirs: Value = app.signed(&rogue, "GET", &path, None).await.json().await.expect("json");
    assert_eq!(theirs["busNo"], "MZ-FORGED");
    // Operators are told, once per code and number.
    let alerts: Value = app.ops("GET", "/v1/ops/alerts", None).await.json().await.expect("json");
    let clashes: Vec<&Value> = alerts
        .as_array()
        .expect("alerts")
        .iter()
        .filter(|a| a["rule"] == "identity_clash")
        .collect();
    assert_eq!(clashes.len(), 1, "{alerts}");
    assert_eq!(clashes[0]["key"], format!("{BATCH}/0000000003"));
    assert_eq!(clashes[0]["state"], "firing");
});

both_modes!(concurrent_identical_pushes_store_one, |mode: Mode| async move {
    let app = std::sync::Arc::new(spawn_app(mode).await);
    let issuer = app.issuer().await;
    let receipt = samples::outpatient(4);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (app, issuer, receipt) = (app.clone(), issuer.clone(), receipt.clone());
        tasks.push(tokio::spawn(async move {
            app.push(&issuer, &receipt).await.status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.expect("task"));
    }
    statuses.sort_unstable();
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 200, 200, 201]);
});

both_modes!(issuers_see_only_their_agency, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;
    assert_eq!(app.push(&issuer, &samples::outpatient(5)).await.status().as_u16(), 201);
    app.create_agency("12110000400000002B", &[]).await;
    let other = app.create_issuer("12110000400000002B", "hosp02-his", None).await;
    let body = problem(
        app.signed(&other, "GET", &format!("/v1/receipts/{BATCH}/0000000005"), None)
            .await,
        404,
    )
    .await;
    assert_eq!(body["code"], "receipt_not_found");
    let body = problem(
        app.signed(
            &other,
            "POST",
            &format!("/v1/receipts/{BATCH}/0000000005/reversal"),
            Some(&serde_json::json!({
                "redBillBatchCode": BATCH, "redBillNo": "0000009005", "redRandom": "abc123",
                "reversedAt": "2026-11-23T10:00:00+08:00", "reason": "退费"
            })),
        )
        .await,
        404,
    )
    .await;
    assert_eq!(body["code"], "receipt_not_found");
});

both_modes!(callback_url_plans_a_webhook_delivery, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    app.create_agency("12110000400000001A", &[]).await;
    let issuer = app
        .create_issuer(
            "12110000400000001A",
            "hosp01-his",
            Some("https://his.hospital.example/cb"),
        )
        .await;
    let created: Value = app
        .push(&issuer, &samples::outpatient(6))
        .await
        .json()
        .await
        .expect("json");
    let deliveries = created["deliveries"].as_array().expect("deliveries");
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0]["channel"], "issuer_webhook");
    assert_eq!(deliveries[0]["event"], "issued");

    // Without a callback nothing is planned for the issuer.
    let plain = app.create_issuer("12110000400000001A", "hosp01-kiosk", None).await;
    let created: Value = app
        .push(&plain, &samples::outpatient(7))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(created["deliveries"].as_array().map(Vec::len), Some(0));
});

both_modes!(data_survives_a_restart, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;
    let created: Value = app
        .push(&issuer, &samples::outpatient(8))
        .await
        .json()
        .await
        .expect("json");
    app.stop().await;
    let config = app.config.clone();
    drop(app);

    let again = config.spawn().await;
    let resp = again
        .signed(&issuer, "GET", &format!("/v1/receipts/{BATCH}/0000000008"), None)
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let read: Value = resp.json().await.expect("json");
    assert_eq!(read["id"], created["id"]);
    assert_eq!(read["payer"], "张*丰", "personal data still opens with the same keys");
});
