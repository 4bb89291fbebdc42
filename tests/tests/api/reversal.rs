use piaojia_store::ReimbursementState;
use piaojia_tests::both_modes;
use piaojia_tests::harness::{Mode, problem, spawn_app};
use piaojia_tests::samples::{self, BATCH};
use serde_json::{Value, json};

fn red(no: &str) -> Value {
    json!({
        "redBillBatchCode": BATCH,
        "redBillNo": no,
        "redRandom": "9f8e7d",
        "reversedAt": "2026-11-23T10:00:00+08:00",
        "reason": "患者退费"
    })
}

both_modes!(reversal_rules, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;
    let created: Value = app
        .push(&issuer, &samples::outpatient(1))
        .await
        .json()
        .await
        .expect("json");
    let path = format!("/v1/receipts/{BATCH}/0000000001/reversal");

    let resp = app.signed(&issuer, "POST", &path, Some(&red("0000009001"))).await;
    assert_eq!(resp.status().as_u16(), 201);
    let reversed: Value = resp.json().await.expect("json");
    assert_eq!(reversed["status"], "reversed");
    assert_eq!(reversed["reimbursementState"], "CANCEL");
    assert_eq!(reversed["reversal"]["redBillNo"], "0000009001");
    assert_eq!(reversed["reversal"]["reversedAt"], "2026-11-23T02:00:00Z");

    // The same reversal again: the first result.
    let resp = app.signed(&issuer, "POST", &path, Some(&red("0000009001"))).await;
    assert_eq!(resp.status().as_u16(), 200);
    let again: Value = resp.json().await.expect("json");
    assert_eq!(again["reversal"], reversed["reversal"]);

    // A different red receipt for the same original.
    let body = problem(app.signed(&issuer, "POST", &path, Some(&red("0000009002"))).await, 409).await;
    assert_eq!(body["code"], "reversal_conflict");

    // The status read shows it.
    let read: Value = app
        .signed(&issuer, "GET", &format!("/v1/receipts/{BATCH}/0000000001"), None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(read["status"], "reversed");
    assert_eq!(read["id"], created["id"]);
});

both_modes!(locked_or_closed_receipts_cannot_be_reversed, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;
    for (n, state) in [(2u64, ReimbursementState::Lock), (3, ReimbursementState::Closure)] {
        let created: Value = app
            .push(&issuer, &samples::outpatient(n))
            .await
            .json()
            .await
            .expect("json");
        let id = uuid::Uuid::parse_str(created["id"].as_str().expect("id")).expect("uuid");
        // A reimburser holds it (the reimbursement API arrives with its own issue).
        app.store.set_reimbursement_state(id, state).await.expect("set state");
        let path = format!("/v1/receipts/{BATCH}/{n:010}/reversal");
        let body = problem(app.signed(&issuer, "POST", &path, Some(&red("0000009003"))).await, 409).await;
        assert_eq!(body["code"], "receipt_locked");
        let read: Value = app
            .signed(&issuer, "GET", &format!("/v1/receipts/{BATCH}/{n:010}"), None)
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(read["status"], "issued", "nothing changed");
    }
});

both_modes!(reversal_validation_and_missing_receipt, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;
    let body = problem(
        app.signed(
            &issuer,
            "POST",
            &format!("/v1/receipts/{BATCH}/0000000404/reversal"),
            Some(&red("0000009004")),
        )
        .await,
        404,
    )
    .await;
    assert_eq!(body["code"], "receipt_not_found");

    app.push(&issuer, &samples::outpatient(5)).await;
    let bad = json!({ "redBillBatchCode": "1", "redRandom": "ABCDEF", "reversedAt": "yesterday" });
    let body = problem(
        app.signed(
            &issuer,
            "POST",
            &format!("/v1/receipts/{BATCH}/0000000005/reversal"),
            Some(&bad),
        )
        .await,
        422,
    )
    .await;
    let pointers: Vec<&str> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["pointer"].as_str())
        .collect();
    for p in ["/redBillBatchCode", "/redBillNo", "/reversedAt", "/reason"] {
        assert!(pointers.contains(&p), "{p} in {pointers:?}");
    }
    assert!(!pointers.contains(&"/redRandom"), "upper-case check codes are accepted");
});
