//! Reimbursers: verification (查验), lock, close, unlock, reject, batches,
//! idempotency by request id, the history, lock expiry, and the race that must
//! leave every receipt with exactly one holder.

use piaojia_tests::both_modes;
use piaojia_tests::harness::{Issuer, Mode, TestApp, TestConfig, eventually, problem, spawn_app};
use piaojia_tests::samples::{self, BATCH};
use serde_json::{Value, json};

const AGENCY: &str = "12110000400000001A";

fn random_of(n: u64) -> String {
    samples::outpatient(n)["random"].as_str().expect("random").to_owned()
}

fn receipt(n: u64) -> Value {
    json!({"billBatchCode": BATCH, "billNo": format!("{n:010}"), "random": random_of(n)})
}

fn change(request_id: &str, n: u64, extra: Value) -> Value {
    let mut body = receipt(n);
    body["requestId"] = json!(request_id);
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

async fn call(app: &TestApp, who: &Issuer, action: &str, body: &Value) -> reqwest::Response {
    app.signed(who, "POST", &format!("/v1/reimburser/receipts/{action}"), Some(body))
        .await
}

async fn ok(resp: reqwest::Response) -> Value {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("json");
    assert_eq!(status, 200, "{body}");
    body
}

async fn pushed(app: &TestApp, issuer: &Issuer, n: u64) -> Value {
    let resp = app.push(issuer, &samples::outpatient(n)).await;
    assert_eq!(resp.status().as_u16(), 201);
    resp.json().await.expect("json")
}

// The whole lock journey: verify without personal data, lock, the other party's
// conflicts, close with the amount paid, replays, and the history everyone reads.
both_modes!(verify_lock_close_journey, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;
    let created = pushed(&app, &issuer, 1).await;
    let a = app.create_reimburser("insurer-a", &[AGENCY]).await;
    let b = app.create_reimburser("insurer-b", &[AGENCY]).await;

    // 查验: authentic, no personal data.
    let mut q = receipt(1);
    q["issuedDate"] = json!("2026-11-23");
    q["totalAmt"] = json!("128.50");
    let v = ok(app.signed(&b, "POST", "/v1/reimburser/verifications", Some(&q)).await).await;
    assert_eq!(v["authentic"], true);
    assert_eq!(v["reimbursementState"], "INIT");
    assert_eq!(v["reversed"], false);
    assert_eq!(v["agencyCode"], AGENCY);
    assert_eq!(v["accepted"], true);
    let text = v.to_string();
    assert!(!text.contains("张三丰") && !text.contains("1101051949"), "{text}");
    // Wrong check code, wrong amount, wrong date: not authentic, nothing else said.
    for (k, bad) in [
        ("random", "000000"),
        ("totalAmt", "128.51"),
        ("issuedDate", "2026-11-24"),
    ] {
        let mut q = q.clone();
        q[k] = json!(bad);
        let v = ok(app.signed(&b, "POST", "/v1/reimburser/verifications", Some(&q)).await).await;
        assert_eq!(v, json!({"authentic": false}), "{k}");
    }

    // A locks.
    let locked = ok(call(&app, &a, "lock", &change("a-1", 1, json!({}))).await).await;
    assert_eq!(locked["receipts"][0]["reimbursementState"], "LOCK");
    assert_eq!(locked["receipts"][0]["heldByYou"], true);
    assert_eq!(locked["replayed"], false);
    // Locking again changes nothing.
    let again = ok(call(&app, &a, "lock", &change("a-1b", 1, json!({}))).await).await;
    assert_eq!(again["receipts"][0]["reimbursementState"], "LOCK");

    // B sees the lock and is refused everything.
    let v = ok(app
        .signed(&b, "POST", "/v1/reimburser/verifications", Some(&receipt(1)))
        .await)
    .await;
    assert_eq!(v["reimbursementState"], "LOCK");
    assert_eq!(v["heldByYou"], false);
    for action in ["lock", "unlock"] {
        let p = problem(
            call(&app, &b, action, &change(&format!("b-{action}"), 1, json!({}))).await,
            409,
        )
        .await;
        assert_eq!(p["code"], "receipt_locked_by_other", "{action}");
    }
    let p = problem(
        call(&app, &b, "close", &change("b-close", 1, json!({"paidAmt": "1.00"}))).await,
        409,
    )
    .await;
    assert_eq!(p["code"], "receipt_locked_by_other");
    let p = problem(
        call(&app, &b, "reject", &change("b-rej", 1, json!({"reason": "x"}))).await,
        409,
    )
    .await;
    assert_eq!(p["code"], "receipt_locked_by_other");

    // The issuer may not reverse a locked receipt.
    let red = json!({"redBillBatchCode": BATCH, "redBillNo": "0000009001", "redRandom": "9f8e7d",
        "reversedAt": "2026-11-23T10:00:00+08:00", "reason": "患者退费"});
    let rev = format!("/v1/receipts/{BATCH}/0000000001/reversal");
    let p = problem(app.signed(&issuer, "POST", &rev, Some(&red)).await, 409).await;
    assert_eq!(p["code"], "receipt_locked");

    // Close: the amount is required, at most the total.
    let p = problem(call(&app, &a, "close", &change("a-2", 1, json!({}))).await, 422).await;
    assert_eq!(p["errors"][0]["pointer"], "/paidAmt");
    let p = problem(
        call(&app, &a, "close", &change("a-2", 1, json!({"paidAmt": "128.51"}))).await,
        422,
    )
    .await;
    assert_eq!(p["code"], "paid_exceeds_total");
    let closed = ok(call(&app, &a, "close", &change("a-2", 1, json!({"paidAmt": "100.00"}))).await).await;
    assert_eq!(closed["receipts"][0]["reimbursementState"], "CLOSURE");
    assert_eq!(closed["receipts"][0]["paidAmt"], "100.00");

    // The same request id: the first answer; with another request: refused.
    let replay = ok(call(&app, &a, "close", &change("a-2", 1, json!({"paidAmt": "100.00"}))).await).await;
    assert_eq!(replay["replayed"], true);
    assert_eq!(replay["receipts"], closed["receipts"]);
    let p = problem(
        call(&app, &a, "close", &change("a-2", 1, json!({"paidAmt": "99.00"}))).await,
        409,
    )
    .await;
    assert_eq!(p["code"], "request_id_reused");

    // Closed is final, for everyone.
    let p = problem(call(&app, &a, "unlock", &change("a-3", 1, json!({}))).await, 409).await;
    assert_eq!(p["code"], "receipt_already_closed");
    let p = problem(call(&app, &b, "lock", &change("b-2", 1, json!({}))).await, 409).await;
    assert_eq!(p["code"], "receipt_already_closed");
    let p = problem(app.signed(&issuer, "POST", &rev, Some(&red)).await, 409).await;
    assert_eq!(p["code"], "receipt_locked");
    let status: Value = app
        .signed(&issuer, "GET", &format!("/v1/receipts/{BATCH}/0000000001"), None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(status["reimbursementState"], "CLOSURE");

    // The history: the reimburser holding it, the issuer and the operator read it.
    let path = format!(
        "/v1/reimburser/receipts/{BATCH}/0000000001/history?random={}",
        random_of(1)
    );
    let h = ok(app.signed(&a, "GET", &path, None).await).await;
    let actions: Vec<&str> = h["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    assert_eq!(actions, ["lock", "close"]);
    assert_eq!(h["entries"][0]["actor"], "insurer-a");
    assert_eq!(h["entries"][0]["requestId"], "a-1");
    assert_eq!(h["entries"][1]["paidAmt"], "100.00");
    assert!(h["entries"][0]["remoteAddr"].is_string());
    let from_issuer = ok(app
        .signed(
            &issuer,
            "GET",
            &format!("/v1/receipts/{BATCH}/0000000001/reimbursement-history"),
            None,
        )
        .await)
    .await;
    assert_eq!(from_issuer["entries"], h["entries"]);
    let id = created["id"].as_str().expect("id");
    let from_ops = ok(app
        .ops("GET", &format!("/v1/ops/receipts/{id}/reimbursement-history"), None)
        .await)
    .await;
    assert_eq!(from_ops["entries"], h["entries"]);
    // Without the check code, no history.
    let wrong = format!("/v1/reimburser/receipts/{BATCH}/0000000001/history?random=000000");
    let p = problem(app.signed(&b, "GET", &wrong, None).await, 404).await;
    assert_eq!(p["code"], "receipt_not_found");
});

// Unlock and reject release a lock; closing needs one; a reversed receipt cannot
// be locked, and the reversal is in the history.
both_modes!(unlock_reject_and_reversal, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;
    pushed(&app, &issuer, 2).await;
    let a = app.create_reimburser("insurer-a", &[AGENCY]).await;

    let p = problem(
        call(&app, &a, "close", &change("1", 2, json!({"paidAmt": "1.00"}))).await,
        409,
    )
    .await;
    assert_eq!(p["code"], "lock_required");
    let p = problem(call(&app, &a, "unlock", &change("2", 2, json!({}))).await, 409).await;
    assert_eq!(p["code"], "lock_required");
    ok(call(&app, &a, "lock", &change("3", 2, json!({}))).await).await;
    let u = ok(call(&app, &a, "unlock", &change("4", 2, json!({}))).await).await;
    assert_eq!(u["receipts"][0]["reimbursementState"], "INIT");
    ok(call(&app, &a, "lock", &change("5", 2, json!({}))).await).await;
    let p = problem(call(&app, &a, "reject", &change("6", 2, json!({}))).await, 422).await;
    assert_eq!(p["errors"][0]["pointer"], "/reason");
    let r = ok(call(&app, &a, "reject", &change("6", 2, json!({"reason": "不在保障范围"}))).await).await;
    assert_eq!(r["receipts"][0]["reimbursementState"], "INIT");

    // Reversed: no lock any more.
    let red = json!({"redBillBatchCode": BATCH, "redBillNo": "0000009002", "redRandom": "9f8e7d",
        "reversedAt": "2026-11-23T10:00:00+08:00", "reason": "患者退费"});
    let resp = app
        .signed(
            &issuer,
            "POST",
            &format!("/v1/receipts/{BATCH}/0000000002/reversal"),
            Some(&red),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 201);
    let p = problem(call(&app, &a, "lock", &change("7", 2, json!({}))).await, 409).await;
    assert_eq!(p["code"], "receipt_reversed");
    let v = ok(app
        .signed(&a, "POST", "/v1/reimburser/verifications", Some(&receipt(2)))
        .await)
    .await;
    assert_eq!(v["reversed"], true);
    assert_eq!(v["reimbursementState"], "CANCEL");

    let path = format!(
        "/v1/reimburser/receipts/{BATCH}/0000000002/history?random={}",
        random_of(2)
    );
    let h = ok(app.signed(&a, "GET", &path, None).await).await;
    let actions: Vec<String> = h["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["action"].as_str().unwrap_or(""),
                e["toState"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(
        actions,
        ["lock:LOCK", "unlock:INIT", "lock:LOCK", "reject:INIT", "reverse:CANCEL"]
    );
    assert_eq!(h["entries"][3]["reason"], "不在保障范围");
    assert_eq!(h["entries"][4]["actor"], format!("issuer:{}", issuer.app_id));
});

// A batch is all or nothing, and names the receipt that failed.
both_modes!(batches_are_all_or_nothing, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;
    for n in 1..=3 {
        pushed(&app, &issuer, n).await;
    }
    let a = app.create_reimburser("insurer-a", &[AGENCY]).await;
    let b = app.create_reimburser("insurer-b", &[AGENCY]).await;
    ok(call(&app, &b, "lock", &change("b-1", 2, json!({}))).await).await;

    let all = json!([receipt(1), receipt(2), receipt(3)]);
    let body = json!({"requestId": "batch-1", "action": "lock", "receipts": all});
    let p = problem(call(&app, &a, "batch", &body).await, 409).await;
    assert_eq!(p["code"], "receipt_locked_by_other");
    assert_eq!(p["errors"][0]["pointer"], "/receipts/1");
    // Nothing changed: the first is still free.
    let v = ok(app
        .signed(&a, "POST", "/v1/reimburser/verifications", Some(&receipt(1)))
        .await)
    .await;
    assert_eq!(v["reimbursementState"], "INIT");

    ok(call(&app, &b, "unlock", &change("b-2", 2, json!({}))).await).await;
    let locked = ok(call(
        &app,
        &a,
        "batch",
        &json!({"requestId": "batch-2", "action": "lock", "receipts": all}),
    )
    .await)
    .await;
    assert!(
        locked["receipts"]
            .as_array()
            .expect("receipts")
            .iter()
            .all(|r| r["reimbursementState"] == "LOCK")
    );
    let paid: Vec<Value> = (1..=3)
        .map(|n| {
            let mut r = receipt(n);
            r["paidAmt"] = json!("50.00");
            r
        })
        .collect();
    let closed = ok(call(
        &app,
        &a,
        "batch",
        &json!({"requestId": "batch-3", "action": "close", "receipts": paid}),
    )
    .await)
    .await;
    assert!(
        closed["receipts"]
            .as_array()
            .expect("receipts")
            .iter()
            .all(|r| r["reimbursementState"] == "CLOSURE" && r["paidAmt"] == "50.00")
    );

    // Bad batches are refused before anything is looked at.
    let p = problem(
        call(
            &app,
            &a,
            "batch",
            &json!({"requestId": "b4", "action": "pay", "receipts": all}),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(p["errors"][0]["pointer"], "/action");
    let p = problem(
        call(
            &app,
            &a,
            "batch",
            &json!({"requestId": "b5", "action": "lock", "receipts": []}),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(p["errors"][0]["pointer"], "/receipts");
});

// Only registered reimbursers, and only receipts of agencies they accept.
both_modes!(who_may_lock, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;
    pushed(&app, &issuer, 1).await;
    let stranger = app.create_reimburser("insurer-x", &[]).await;
    let p = problem(call(&app, &stranger, "lock", &change("x", 1, json!({}))).await, 404).await;
    assert_eq!(p["code"], "receipt_not_found");
    // Verification is open to any reimburser, and says it does not accept that agency.
    let v = ok(app
        .signed(&stranger, "POST", "/v1/reimburser/verifications", Some(&receipt(1)))
        .await)
    .await;
    assert_eq!(v["authentic"], true);
    assert_eq!(v["accepted"], false);
    // An issuer's credentials are not a reimburser's.
    let p = problem(call(&app, &issuer, "lock", &change("i", 1, json!({}))).await, 403).await;
    assert_eq!(p["code"], "app_wrong_kind");
    let p = problem(
        call(
            &app,
            &stranger,
            "lock",
            &json!({"requestId": "bad id!", "billBatchCode": "1", "billNo": "2", "random": "3"}),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(p["code"], "validation_failed");
});

// A lock held past reimbursement.lock_ttl_secs is released and reported.
both_modes!(expired_locks_are_released_and_reported, |mode: Mode| async move {
    let mut config = TestConfig::new(mode).await;
    config
        .set("PIAOJIA_REIMBURSEMENT__LOCK_TTL_SECS", "1")
        .set("PIAOJIA_REIMBURSEMENT__EXPIRY_CHECK_SECS", "1");
    let app = config.spawn().await;
    let issuer = app.issuer().await;
    pushed(&app, &issuer, 1).await;
    let a = app.create_reimburser("insurer-a", &[AGENCY]).await;
    ok(call(&app, &a, "lock", &change("1", 1, json!({}))).await).await;
    eventually(15, || async {
        let v = ok(app
            .signed(&a, "POST", "/v1/reimburser/verifications", Some(&receipt(1)))
            .await)
        .await;
        (v["reimbursementState"] == "INIT").then_some(())
    })
    .await;
    let alerts: Value = ok(app.ops("GET", "/v1/ops/alerts", None).await).await;
    let hit = alerts
        .as_array()
        .expect("alerts")
        .iter()
        .find(|a| a["rule"] == "reimbursement_lock_expired")
        .expect("an alert for the released lock");
    assert_eq!(hit["key"], format!("receipt:{BATCH}/0000000001"));
    let path = format!(
        "/v1/reimburser/receipts/{BATCH}/0000000001/history?random={}",
        random_of(1)
    );
    let h = ok(app.signed(&a, "GET", &path, None).await).await;
    assert_eq!(h["entries"][1]["action"], "expire");
    assert_eq!(h["entries"][1]["actor"], "system");
});

// Many reimbursers race for the same receipts: exactly one wins each, the others
// get the conflict code. On PostgreSQL the racers are split over two gateway
// processes sharing the database.
both_modes!(lock_race_has_one_winner, |mode: Mode| async move {
    const RECEIPTS: u64 = 4;
    const RACERS: usize = 8;
    let app = spawn_app(mode).await;
    let second = match mode {
        Mode::ScaleOut => Some(app.config.spawn().await),
        Mode::Embedded => None,
    };
    let issuer = app.issuer().await;
    for n in 1..=RECEIPTS {
        pushed(&app, &issuer, n).await;
    }
    let mut racers = Vec::new();
    for i in 0..RACERS {
        racers.push(app.create_reimburser(&format!("racer-{i}"), &[AGENCY]).await);
    }
    let app = std::sync::Arc::new(app);
    let second = second.map(std::sync::Arc::new);
    for n in 1..=RECEIPTS {
        let mut tasks = Vec::new();
        for (i, racer) in racers.iter().enumerate() {
            let target = match (&second, i % 2) {
                (Some(s), 1) => s.clone(),
                _ => app.clone(),
            };
            let racer = racer.clone();
            tasks.push(tokio::spawn(async move {
                let resp = call(&target, &racer, "lock", &change(&format!("race-{n}"), n, json!({}))).await;
                let status = resp.status().as_u16();
                let body: Value = resp.json().await.expect("json");
                (racer.app_id, status, body)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (who, status, body) = t.await.expect("task");
            match status {
                200 => winners.push(who),
                409 => assert_eq!(body["code"], "receipt_locked_by_other", "{body}"),
                other => panic!("unexpected {other}: {body}"),
            }
        }
        assert_eq!(winners.len(), 1, "receipt {n}: {winners:?}");
        let v = ok(app
            .signed(&racers[0], "POST", "/v1/reimburser/verifications", Some(&receipt(n)))
            .await)
        .await;
        assert_eq!(v["reimbursementState"], "LOCK");
    }
});

// Reversals forwarded in the receipt platform's own field names (writeOffEBill).
both_modes!(reversal_in_platform_field_names, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = app.issuer().await;
    pushed(&app, &issuer, 1).await;
    let body = json!({
        "eScarletBillBatchCode": BATCH,
        "eScarletBillNo": "0000009001",
        "eScarletRandom": "9F8E7D",
        "createTime": "20261123100000123",
        "billQRCode": "iVBORw0KGgo=",
        "pictureUrl": "https://einvoice.example/p.png",
        "pictureNetUrl": "https://einvoice.example/h5"
    });
    let path = format!("/v1/receipts/{BATCH}/0000000001/reversal");
    let resp = app.signed(&issuer, "POST", &path, Some(&body)).await;
    let status = resp.status().as_u16();
    let reversed: Value = resp.json().await.expect("json");
    assert_eq!(status, 201, "{reversed}");
    assert_eq!(reversed["reversal"]["redBillNo"], "0000009001");
    assert_eq!(reversed["reversal"]["reversedAt"], "2026-11-23T02:00:00.123Z");
    let mut bad = body.clone();
    bad["createTime"] = json!("2026-11-23 10:00");
    let p = problem(app.signed(&issuer, "POST", &path, Some(&bad)).await, 422).await;
    assert_eq!(p["errors"][0]["pointer"], "/createTime");
});

// With the app cache on (as in production), a reimburser's profile is read once
// and its calls keep their rules: its own agency's receipts only, one holder.
both_modes!(a_cached_reimburser_keeps_its_rules, |mode: Mode| async move {
    let mut config = TestConfig::new(mode).await;
    config.set("PIAOJIA_SECURITY__APP_CACHE_SECS", "30");
    let app = config.spawn().await;
    let issuer = app.issuer().await;
    for n in 1..=2 {
        pushed(&app, &issuer, n).await;
    }
    let a = app.create_reimburser("cached-a", &[AGENCY]).await;
    let b = app.create_reimburser("cached-b", &[]).await;
    for n in 1..=2 {
        let locked = ok(call(&app, &a, "lock", &change(&format!("c-{n}"), n, json!({}))).await).await;
        assert_eq!(locked["receipts"][0]["reimbursementState"], "LOCK", "{locked}");
        assert_eq!(locked["receipts"][0]["heldByYou"], true, "{locked}");
    }
    let p = problem(call(&app, &b, "lock", &change("c-b", 1, json!({}))).await, 404).await;
    assert_eq!(p["code"], "receipt_not_found", "{p}");
});
