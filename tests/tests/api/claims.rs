//! Payer claims through HTTP: the payer chooses receipts and a reimburser,
//! consents to exactly its personal fields and submits; the reimburser is told by
//! a signed webhook, pulls the claim with a cursor, reads it in full (personal
//! data for it alone), acknowledges, locks and closes; the payer follows every
//! status and is told each change. Each refusal and conflict, withdrawal,
//! rejection and the issuer's reversal (which cancels the claim).

use base64::Engine as _;
use piaojia_core::parties::ClaimField;
use piaojia_tests::both_modes;
use piaojia_tests::harness::{Captured, Issuer, Mode, TestApp, TestConfig, eventually, field_codes, problem, receiver};
use piaojia_tests::samples::{self, BATCH};
use serde_json::{Value, json};

const AGENCY: &str = "12110000400000001A";
const OTHER_AGENCY: &str = "12110000400000002B";
const WALLET: &str = "wx1111aaaa2222bbbb";
const WALLET_TMPL: &str = "TMPL-WALLET-CLAIM";
const NAME: &str = "张三丰";
const ID: &str = "11010519491231002X";
const PDF: &[u8] = b"%PDF-1.7\n% piaojia claim test file\n%%EOF\n";

fn receipt(n: u64, name: &str, id: &str) -> Value {
    let mut r = samples::outpatient(n);
    r["payer"] = name.into();
    r["idCardNo"] = id.into();
    r["tel"] = "13900139000".into();
    r
}

fn random_of(n: u64) -> String {
    samples::outpatient(n)["random"].as_str().expect("random").to_owned()
}

async fn json_of(resp: reqwest::Response, status: u16) -> Value {
    let code = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(code, status, "{body}");
    body
}

struct World {
    app: TestApp,
    issuer: Issuer,
    /// Receives A's webhooks.
    hooks: Captured,
    _hook_server: actix_web::dev::ServerHandle,
    /// Accepts the agency, receives name and ID number, has a webhook.
    a: Issuer,
    /// Accepts the agency, receives the name only.
    b: Issuer,
    /// Accepts another agency only.
    c: Issuer,
    token: String,
    /// Receipt ids by number (1, 2, 3 are the payer's).
    ids: Vec<String>,
    /// Somebody else's receipt.
    foreign: String,
}

async fn world(mode: Mode) -> World {
    world_with(mode, &[]).await
}

/// The world with these settings (environment names) changed.
async fn world_with(mode: Mode, settings: &[(&str, &str)]) -> World {
    let mut config = TestConfig::new(mode).await;
    for (k, v) in settings {
        config.set(k, *v);
    }
    let app = config.spawn().await;
    app.create_agency(AGENCY, &[]).await;
    app.create_agency(OTHER_AGENCY, &[]).await;
    let issuer = app.create_issuer(AGENCY, "hosp01-his", None).await;
    app.platform_wallet(WALLET, WALLET_TMPL, true).await;
    let (url, hooks, handle) = receiver();
    let a = app
        .create_reimburser_with("insurer-a", &[AGENCY], Some(&url), &["name", "id_card_no"])
        .await;
    let b = app
        .create_reimburser_with("insurer-b", &[AGENCY], None, &["name"])
        .await;
    let c = app
        .create_reimburser_with("insurer-c", &[OTHER_AGENCY], None, &["name"])
        .await;

    let mut ids = vec![String::new()];
    for n in 1..=3 {
        let mut r = receipt(n, NAME, ID);
        if n == 1 {
            r["file"] = json!({"format": "pdf", "base64": base64::engine::general_purpose::STANDARD.encode(PDF)});
        }
        let created = json_of(app.push(&issuer, &r).await, 201).await;
        ids.push(created["id"].as_str().expect("id").to_owned());
    }
    let other = json_of(app.push(&issuer, &receipt(4, "李四", "110101199003077774")).await, 201).await;
    let foreign = other["id"].as_str().expect("id").to_owned();

    // The payer signs in, registers (collecting 1-3) and consents to the long-term template.
    let openid = piaojia_wechat_sim::new_openid();
    let session = app.mp_login(WALLET, &openid, None).await;
    let token = session["accessToken"].as_str().expect("token").to_owned();
    let sim = app.sim.clone().expect("sim");
    let code = sim.issue_phone_code(WALLET, "13900139000");
    let body = json!({"name": NAME, "idType": "resident", "idNumber": ID, "phoneCode": code,
        "consent": {"version": "2026-11", "accepted": true}});
    let registered = json_of(app.mp("PUT", "/v1/mp/profile", &token, Some(&body)).await, 200).await;
    assert_eq!(registered["collected"], 3, "{registered}");
    json_of(
        app.mp(
            "POST",
            "/v1/mp/subscriptions",
            &token,
            Some(&json!({"results": {WALLET_TMPL: "accept"}})),
        )
        .await,
        200,
    )
    .await;
    World {
        app,
        issuer,
        hooks,
        _hook_server: handle,
        a,
        b,
        c,
        token,
        ids,
        foreign,
    }
}

fn claim_body(reimburser: &str, receipts: &[&str], fields: &[&str]) -> Value {
    json!({
        "reimburser": reimburser,
        "receipts": receipts,
        "consent": {"fields": fields, "accepted": true},
        "fields": {"bankAccount": "6222020200112233445", "policyNo": "P2026-0001"},
    })
}

async fn submit(w: &World, body: &Value) -> reqwest::Response {
    w.app.mp("POST", "/v1/mp/claims", &w.token, Some(body)).await
}

async fn change(app: &TestApp, who: &Issuer, action: &str, request_id: &str, n: u64, extra: Value) -> Value {
    let mut body = json!({"requestId": request_id, "billBatchCode": BATCH, "billNo": format!("{n:010}"),
        "random": random_of(n)});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    json_of(
        app.signed(who, "POST", &format!("/v1/reimburser/receipts/{action}"), Some(&body))
            .await,
        200,
    )
    .await
}

async fn payer_claim(w: &World, id: &str) -> Value {
    json_of(
        w.app.mp("GET", &format!("/v1/mp/claims/{id}"), &w.token, None).await,
        200,
    )
    .await
}

/// A webhook received: its headers, raw body and body as JSON.
type Hook = (Vec<(String, String)>, Vec<u8>, Value);

/// The webhooks A received so far.
fn hooks_of(captured: &Captured) -> Vec<Hook> {
    captured
        .lock()
        .expect("lock")
        .iter()
        .map(|(h, b)| (h.clone(), b.clone(), serde_json::from_slice(b).expect("webhook JSON")))
        .collect()
}

async fn hook_of_type(captured: &Captured, kind: &str, claim: &str) -> Hook {
    let (kind, claim) = (kind.to_owned(), claim.to_owned());
    eventually(15, || {
        let found = hooks_of(captured)
            .into_iter()
            .find(|(_, _, v)| v["type"] == kind.as_str() && v["data"]["claimId"] == claim.as_str());
        async move { found }
    })
    .await
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_default()
}

async fn subscribe_statuses(app: &TestApp, count: usize) -> Vec<String> {
    let sim = app.sim.clone().expect("sim");
    eventually(15, || {
        let sent = sim.sent_subscribe_messages();
        async move {
            (sent.len() >= count).then(|| {
                sent.iter()
                    .map(|m| m.data["phrase5"]["value"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
        }
    })
    .await
}

// The whole journey: the payer claims, the reimburser is told, pulls, reads,
// verifies with the personal data, acknowledges, locks, closes; the payer sees
// each status and is told each change.
both_modes!(
    claim_journey_from_submission_to_reimbursement,
    |mode: Mode| async move {
        let w = world(mode).await;
        let app = &w.app;
        let (r1, r2) = (w.ids[1].as_str(), w.ids[2].as_str());

        // Which reimbursers take receipt 1, and what each receives.
        let list = json_of(
            app.mp("GET", &format!("/v1/mp/reimbursers?receipt={r1}"), &w.token, None)
                .await,
            200,
        )
        .await;
        let offered: Vec<&str> = list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["appId"].as_str().expect("appId"))
            .collect();
        assert_eq!(offered, ["insurer-a", "insurer-b"], "{list}");
        assert_eq!(list["items"][0]["personalFields"], json!(["name", "id_card_no"]));

        // Submitted: receipts 1 and 2 to A.
        let claim = json_of(
            submit(&w, &claim_body("insurer-a", &[r1, r2], &["id_card_no", "name"])).await,
            201,
        )
        .await;
        let id = claim["id"].as_str().expect("id").to_owned();
        assert_eq!(claim["status"], "submitted");
        assert_eq!(claim["statusText"], "已提交");
        assert_eq!(claim["withdrawable"], true);
        assert_eq!(claim["fields"]["bankAccount"], "***************3445");
        assert_eq!(claim["receipts"].as_array().map(Vec::len), Some(2));
        // A receipt in an open claim cannot be claimed again.
        let p = problem(submit(&w, &claim_body("insurer-b", &[r2], &["name"])).await, 409).await;
        assert_eq!(p["code"], "receipt_already_claimed");
        assert_eq!(p["errors"][0]["pointer"], "/receipts/0");

        // A is told by a Standard Webhooks webhook signed with its own secret.
        let (headers, raw, hook) = hook_of_type(&w.hooks, "claim.submitted", &id).await;
        assert_eq!(hook["data"]["status"], "submitted");
        let (msg_id, ts) = (header(&headers, "webhook-id"), header(&headers, "webhook-timestamp"));
        let expected = piaojia_notifier::channels::webhook::signature_header(
            std::slice::from_ref(&w.a.secret),
            msg_id,
            ts.parse().expect("timestamp"),
            &raw,
        );
        assert_eq!(header(&headers, "webhook-signature"), expected);
        assert!(
            !String::from_utf8_lossy(&raw).contains(NAME),
            "no personal data in a webhook"
        );
        // The claim's webhook hangs on its first receipt, but the issuer's view of
        // that receipt does not tell with whom the payer claimed.
        let seen = json_of(
            app.signed(&w.issuer, "GET", &format!("/v1/receipts/{BATCH}/0000000001"), None)
                .await,
            200,
        )
        .await;
        let channels: Vec<&str> = seen["deliveries"]
            .as_array()
            .expect("deliveries")
            .iter()
            .filter_map(|d| d["channel"].as_str())
            .collect();
        assert!(!channels.contains(&"reimburser_claim"), "{seen}");
        assert!(!seen.to_string().contains(&id), "{seen}");

        // A pulls its feed with a cursor; B's feed is empty and B cannot read A's claim.
        let feed = json_of(app.signed(&w.a, "GET", "/v1/reimburser/claims", None).await, 200).await;
        assert_eq!(feed["items"][0]["id"], id.as_str());
        assert_eq!(feed["items"][0]["receipts"][0]["billNo"], "0000000001");
        let cursor = feed["nextCursor"].as_str().expect("cursor").to_owned();
        let after = json_of(
            app.signed(
                &w.a,
                "GET",
                &format!("/v1/reimburser/claims?after={cursor}&limit=10"),
                None,
            )
            .await,
            200,
        )
        .await;
        assert_eq!(after["items"], json!([]));
        assert_eq!(after["nextCursor"], cursor.as_str());
        let p = problem(
            app.signed(&w.a, "GET", "/v1/reimburser/claims?after=x", None).await,
            422,
        )
        .await;
        assert_eq!(p["errors"][0]["pointer"], "/after");
        let feed_b = json_of(app.signed(&w.b, "GET", "/v1/reimburser/claims", None).await, 200).await;
        assert_eq!(feed_b["items"], json!([]));
        let p = problem(
            app.signed(&w.b, "GET", &format!("/v1/reimburser/claims/{id}"), None)
                .await,
            404,
        )
        .await;
        assert_eq!(p["code"], "claim_not_found");

        // A reads the claim in full: personal data unsealed for it, fields, receipts, files.
        let detail = json_of(
            app.signed(&w.a, "GET", &format!("/v1/reimburser/claims/{id}"), None)
                .await,
            200,
        )
        .await;
        assert_eq!(detail["personalData"], json!({"name": NAME, "id_card_no": ID}));
        assert_eq!(detail["fields"]["bankAccount"], "6222020200112233445");
        assert_eq!(detail["receipts"][0]["random"], random_of(1).as_str());
        assert_eq!(detail["receipts"][0]["totalAmt"], "128.50");
        assert_eq!(detail["receipts"][1]["file"], Value::Null);
        assert_eq!(detail["history"][0]["action"], "submit");
        let url = detail["receipts"][0]["file"]["url"].as_str().expect("file url");
        let path = &url[url.find("/v1/").expect("path")..];
        let file = app.signed(&w.a, "GET", path, None).await;
        assert_eq!(file.status().as_u16(), 200);
        assert_eq!(file.bytes().await.expect("bytes").as_ref(), PDF);
        let p = problem(app.signed(&w.b, "GET", path, None).await, 404).await;
        assert_eq!(p["code"], "claim_not_found");

        // Verification: personal data only for the party holding the claim.
        let q = json!({"billBatchCode": BATCH, "billNo": "0000000001", "random": random_of(1)});
        let v = json_of(
            app.signed(&w.a, "POST", "/v1/reimburser/verifications", Some(&q)).await,
            200,
        )
        .await;
        assert_eq!(v["claimId"], id.as_str());
        assert_eq!(v["personalData"]["name"], NAME);
        let v = json_of(
            app.signed(&w.b, "POST", "/v1/reimburser/verifications", Some(&q)).await,
            200,
        )
        .await;
        assert!(v.get("personalData").is_none() && !v.to_string().contains(NAME), "{v}");

        // Another payer sees none of it.
        let stranger = app.mp_login(WALLET, &piaojia_wechat_sim::new_openid(), None).await;
        let st = stranger["accessToken"].as_str().expect("token");
        let p = problem(app.mp("GET", &format!("/v1/mp/claims/{id}"), st, None).await, 404).await;
        assert_eq!(p["code"], "claim_not_found");
        let p = problem(
            app.mp("POST", &format!("/v1/mp/claims/{id}/withdrawal"), st, None)
                .await,
            404,
        )
        .await;
        assert_eq!(p["code"], "claim_not_found");
        let none = json_of(app.mp("GET", "/v1/mp/claims", st, None).await, 200).await;
        assert_eq!(none["items"], json!([]));

        // Acknowledged: received, and the payer is told.
        let ack = json_of(
            app.signed(
                &w.a,
                "POST",
                &format!("/v1/reimburser/claims/{id}/acknowledgement"),
                None,
            )
            .await,
            200,
        )
        .await;
        assert_eq!(ack["status"], "received");
        assert_eq!(subscribe_statuses(app, 1).await, ["已受理"]);
        let sent = app.sim.as_ref().expect("sim").sent_subscribe_messages();
        assert_eq!(
            sent[0].page.as_deref(),
            Some(format!("pages/wallet/detail?claim={id}").as_str())
        );

        // Locked: no withdrawal any more.
        change(app, &w.a, "lock", "lock-1", 1, json!({})).await;
        assert_eq!(payer_claim(&w, &id).await["status"], "locked");
        let p = problem(
            app.mp("POST", &format!("/v1/mp/claims/{id}/withdrawal"), &w.token, None)
                .await,
            409,
        )
        .await;
        assert_eq!(p["code"], "claim_locked");

        // Closed one by one: reimbursed once every receipt is, with the sum paid.
        change(app, &w.a, "close", "close-1", 1, json!({"paidAmt": "100.00"})).await;
        assert_eq!(payer_claim(&w, &id).await["status"], "locked");
        change(app, &w.a, "lock", "lock-2", 2, json!({})).await;
        change(app, &w.a, "close", "close-2", 2, json!({"paidAmt": "50.00"})).await;
        let done = payer_claim(&w, &id).await;
        assert_eq!(done["status"], "reimbursed");
        assert_eq!(done["statusText"], "已报销");
        assert_eq!(done["paidAmt"], "150.00");
        assert_eq!(done["withdrawable"], false);
        let actions: Vec<&str> = done["history"]
            .as_array()
            .expect("history")
            .iter()
            .map(|e| e["action"].as_str().expect("action"))
            .collect();
        assert_eq!(actions, ["submit", "acknowledge", "lock", "close"]);
        assert_eq!(subscribe_statuses(app, 3).await, ["已受理", "审核中", "已报销"]);
        let sent = app.sim.as_ref().expect("sim").sent_subscribe_messages();
        // Before it is paid, a message shows what was claimed: both receipts.
        assert_eq!(sent[0].data["amount2"]["value"], "257.00元");
        assert_eq!(sent[2].data["amount2"]["value"], "150.00元");
        let p = problem(
            app.mp("POST", &format!("/v1/mp/claims/{id}/withdrawal"), &w.token, None)
                .await,
            409,
        )
        .await;
        assert_eq!(p["code"], "claim_closed");
        // The reimbursed receipt cannot be claimed again, by anyone.
        let p = problem(submit(&w, &claim_body("insurer-b", &[r1], &["name"])).await, 409).await;
        assert_eq!(p["code"], "receipt_already_closed");

        // The payer's list shows it.
        let mine = json_of(app.mp("GET", "/v1/mp/claims", &w.token, None).await, 200).await;
        assert_eq!(mine["items"][0]["id"], id.as_str());
        assert_eq!(mine["items"][0]["status"], "reimbursed");
        let _ = &w.c;
        let _ = &w.issuer;
    }
);

// Every refusal of a submission, each with its stable code.
both_modes!(claim_submission_refusals, |mode: Mode| async move {
    let w = world(mode).await;
    let app = &w.app;
    let r1 = w.ids[1].as_str();

    // The consent must list exactly the reimburser's fields.
    for fields in [json!(["name"]), json!(["name", "id_card_no", "phone"]), json!([])] {
        let mut body = claim_body("insurer-a", &[r1], &[]);
        body["consent"]["fields"] = fields.clone();
        let p = problem(submit(&w, &body).await, 422).await;
        assert_eq!(p["code"], "consent_mismatch", "{fields}");
        assert_eq!(p["errors"][0]["pointer"], "/consent/fields");
    }
    // Consent not given.
    let mut body = claim_body("insurer-a", &[r1], &["name", "id_card_no"]);
    body["consent"]["accepted"] = json!(false);
    let p = problem(submit(&w, &body).await, 422).await;
    assert_eq!(p["code"], "validation_failed");
    assert_eq!(p["errors"][0]["pointer"], "/consent/accepted");
    // No receipts, duplicates, a malformed field.
    let p = problem(
        submit(&w, &claim_body("insurer-a", &[], &["name", "id_card_no"])).await,
        422,
    )
    .await;
    assert_eq!(p["errors"][0]["pointer"], "/receipts");
    let p = problem(
        submit(&w, &claim_body("insurer-a", &[r1, r1], &["name", "id_card_no"])).await,
        422,
    )
    .await;
    assert_eq!(p["errors"][0]["pointer"], "/receipts/1");
    let mut body = claim_body("insurer-a", &[r1], &["name", "id_card_no"]);
    body["fields"] = json!({"bank account!": "x"});
    let p = problem(submit(&w, &body).await, 422).await;
    assert_eq!(p["code"], "validation_failed");
    // An unknown reimburser.
    let p = problem(submit(&w, &claim_body("nobody", &[r1], &["name"])).await, 404).await;
    assert_eq!(p["code"], "reimburser_not_found");
    // Somebody else's receipt, and one that does not exist.
    let p = problem(
        submit(&w, &claim_body("insurer-b", &[r1, &w.foreign], &["name"])).await,
        404,
    )
    .await;
    assert_eq!(p["code"], "receipt_not_found");
    assert_eq!(p["errors"][0]["pointer"], "/receipts/1");
    let p = problem(
        submit(
            &w,
            &claim_body("insurer-b", &["019ad1c0-0000-7000-8000-000000000001"], &["name"]),
        )
        .await,
        404,
    )
    .await;
    assert_eq!(p["code"], "receipt_not_found");
    // A reimburser that does not accept the agency.
    let p = problem(submit(&w, &claim_body("insurer-c", &[r1], &["name"])).await, 422).await;
    assert_eq!(p["code"], "reimburser_does_not_accept");
    // A receipt another reimburser locked.
    change(app, &w.b, "lock", "b-lock-3", 3, json!({})).await;
    let p = problem(
        submit(&w, &claim_body("insurer-a", &[&w.ids[3]], &["name", "id_card_no"])).await,
        409,
    )
    .await;
    assert_eq!(p["code"], "receipt_locked_by_other");
    // Nothing was stored by any of these.
    let mine = json_of(app.mp("GET", "/v1/mp/claims", &w.token, None).await, 200).await;
    assert_eq!(mine["items"], json!([]));
    // A payer who never registered has no name to share.
    let other = app.mp_login(WALLET, &piaojia_wechat_sim::new_openid(), None).await;
    let ot = other["accessToken"].as_str().expect("token");
    let p = problem(
        app.mp(
            "POST",
            "/v1/mp/claims",
            ot,
            Some(&claim_body("insurer-b", &[r1], &["name"])),
        )
        .await,
        422,
    )
    .await;
    assert_eq!(p["errors"][0]["pointer"], "/personalData/name");
});

// Withdrawal frees the receipts and tells the reimburser; a rejection ends the
// claim with its reason; the issuer's reversal of a claimed receipt cancels the
// claim and tells the reimburser and the payer.
both_modes!(withdrawal_rejection_and_reversal, |mode: Mode| async move {
    let w = world(mode).await;
    let app = &w.app;
    let (r1, r2) = (w.ids[1].as_str(), w.ids[2].as_str());
    let fields = ["name", "id_card_no"];

    // Withdrawn before the reimburser locked it.
    let first = json_of(submit(&w, &claim_body("insurer-a", &[r1], &fields)).await, 201).await;
    let first_id = first["id"].as_str().expect("id").to_owned();
    let out = json_of(
        app.mp("POST", &format!("/v1/mp/claims/{first_id}/withdrawal"), &w.token, None)
            .await,
        200,
    )
    .await;
    assert_eq!(out["status"], "withdrawn");
    hook_of_type(&w.hooks, "claim.withdrawn", &first_id).await;
    let p = problem(
        app.mp("POST", &format!("/v1/mp/claims/{first_id}/withdrawal"), &w.token, None)
            .await,
        409,
    )
    .await;
    assert_eq!(p["code"], "claim_closed");
    // A withdrawn claim gives no personal data at verification.
    let q = json!({"billBatchCode": BATCH, "billNo": "0000000001", "random": random_of(1)});
    let v = json_of(
        app.signed(&w.a, "POST", "/v1/reimburser/verifications", Some(&q)).await,
        200,
    )
    .await;
    assert!(v.get("personalData").is_none(), "{v}");

    // The receipt is free again: claimed anew, then rejected with a reason.
    let second = json_of(submit(&w, &claim_body("insurer-a", &[r1], &fields)).await, 201).await;
    let second_id = second["id"].as_str().expect("id").to_owned();
    change(app, &w.a, "reject", "rej-1", 1, json!({"reason": "不在保障范围"})).await;
    let rejected = payer_claim(&w, &second_id).await;
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["statusText"], "未通过");
    assert_eq!(rejected["reason"], "不在保障范围");

    // Claimed, then reversed by the issuer (冲红) before any lock: cancelled.
    let third = json_of(submit(&w, &claim_body("insurer-a", &[r2], &fields)).await, 201).await;
    let third_id = third["id"].as_str().expect("id").to_owned();
    let red = json!({"redBillBatchCode": BATCH, "redBillNo": "0000009002", "redRandom": "9f8e7d",
        "reversedAt": "2026-11-23T10:00:00+08:00", "reason": "患者退费"});
    let rev = format!("/v1/receipts/{BATCH}/0000000002/reversal");
    let resp = app.signed(&w.issuer, "POST", &rev, Some(&red)).await;
    assert!(resp.status().is_success(), "{}", resp.status());
    let cancelled = payer_claim(&w, &third_id).await;
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["statusText"], "已作废");
    assert!(
        cancelled["reason"].as_str().is_some_and(|r| r.contains("患者退费")),
        "{cancelled}"
    );
    let (_, _, hook) = hook_of_type(&w.hooks, "claim.cancelled", &third_id).await;
    assert_eq!(hook["data"]["status"], "cancelled");
    let detail = json_of(
        app.signed(&w.a, "GET", &format!("/v1/reimburser/claims/{third_id}"), None)
            .await,
        200,
    )
    .await;
    let last = detail["history"]
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .expect("history");
    assert_eq!(last["actor"], "issuer:hosp01-his");
    assert_eq!(last["action"], "cancel");
    // A reversed receipt cannot be claimed.
    let p = problem(submit(&w, &claim_body("insurer-a", &[r2], &fields)).await, 409).await;
    assert_eq!(p["code"], "receipt_reversed");
    // The payer was told of the rejection and the cancellation.
    assert_eq!(subscribe_statuses(app, 2).await, ["未通过", "已作废"]);
    // A's feed holds all three claims in order.
    let feed = json_of(app.signed(&w.a, "GET", "/v1/reimburser/claims", None).await, 200).await;
    let ids: Vec<&str> = feed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [first_id.as_str(), second_id.as_str(), third_id.as_str()]);
    let _ = (&w.b, &w.c);
});

// Operators read every claim of a receipt with its history (who, what, from where,
// why), and one claim by id; never the personal data or the claim's fields.
both_modes!(
    operators_read_a_receipts_claims_and_their_history,
    |mode: Mode| async move {
        let w = world(mode).await;
        let app = &w.app;
        let r1 = w.ids[1].as_str();
        let fields = ["name", "id_card_no"];
        let mut body = claim_body("insurer-a", &[r1], &fields);
        body["fields"] = json!({"bankAccount": "6222020200112233445"});
        let first = json_of(submit(&w, &body).await, 201).await;
        let first_id = first["id"].as_str().expect("id").to_owned();
        app.mp("POST", &format!("/v1/mp/claims/{first_id}/withdrawal"), &w.token, None)
            .await;
        let second = json_of(submit(&w, &claim_body("insurer-a", &[r1], &fields)).await, 201).await;
        let second_id = second["id"].as_str().expect("id").to_owned();
        change(app, &w.a, "lock", "ops-lock-1", 1, json!({})).await;
        change(app, &w.a, "close", "ops-close-1", 1, json!({"paidAmt": "100.00"})).await;

        let listed = json_of(
            app.ops("GET", &format!("/v1/ops/receipts/{r1}/claims"), None).await,
            200,
        )
        .await;
        let items = listed["items"].as_array().expect("items");
        let ids: Vec<&str> = items.iter().map(|c| c["id"].as_str().expect("id")).collect();
        assert_eq!(ids, [first_id.as_str(), second_id.as_str()], "{listed}");
        assert_eq!(items[0]["status"], "withdrawn");
        let actions = |c: &Value| -> Vec<(String, String)> {
            c["history"]
                .as_array()
                .expect("history")
                .iter()
                .map(|e| {
                    (
                        e["actor"].as_str().unwrap_or_default().to_owned(),
                        e["action"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        };
        let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(actions(&items[0]), [pair("payer", "submit"), pair("payer", "withdraw")]);
        assert_eq!(items[1]["status"], "reimbursed");
        assert_eq!(items[1]["paidAmt"], "100.00");
        let second_actions = actions(&items[1]);
        assert_eq!(second_actions.first(), Some(&pair("payer", "submit")), "{listed}");
        assert_eq!(second_actions.last(), Some(&pair("insurer-a", "close")), "{listed}");
        assert!(second_actions.contains(&pair("insurer-a", "lock")), "{listed}");
        let close = items[1]["history"]
            .as_array()
            .and_then(|h| h.last())
            .cloned()
            .expect("close");
        assert_eq!(close["requestId"], "ops-close-1");
        assert!(close["remoteAddr"].is_string(), "{close}");
        // No personal data, no claim fields, whatever the view.
        let text = listed.to_string();
        for secret in [ID, "6222020200112233445", NAME] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }

        let one = json_of(app.ops("GET", &format!("/v1/ops/claims/{second_id}"), None).await, 200).await;
        assert_eq!(one, items[1]);
        let p = problem(
            app.ops("GET", &format!("/v1/ops/claims/{}", uuid::Uuid::now_v7()), None)
                .await,
            404,
        )
        .await;
        assert_eq!(p["code"], "claim_not_found");
        let p = problem(
            app.ops(
                "GET",
                &format!("/v1/ops/receipts/{}/claims", uuid::Uuid::now_v7()),
                None,
            )
            .await,
            404,
        )
        .await;
        assert_eq!(p["code"], "receipt_not_found");
        // Operators only.
        let resp = app
            .client
            .get(format!("{}/v1/ops/claims/{second_id}", app.address))
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status().as_u16(), 401);
    }
);

// Erasing the account withdraws the payer's open claims (the reimburser is told)
// and takes the personal data and fields out of every claim.
both_modes!(
    erasure_withdraws_open_claims_and_drops_their_personal_data,
    |mode: Mode| async move {
        let w = world(mode).await;
        let app = &w.app;
        let claim = json_of(
            submit(
                &w,
                &claim_body("insurer-a", &[w.ids[1].as_str()], &["name", "id_card_no"]),
            )
            .await,
            201,
        )
        .await;
        let id = claim["id"].as_str().expect("id").to_owned();
        let gone = app.mp("DELETE", "/v1/mp/profile", &w.token, None).await;
        assert!(gone.status().is_success(), "{}", gone.status());
        hook_of_type(&w.hooks, "claim.withdrawn", &id).await;
        let detail = json_of(
            app.signed(&w.a, "GET", &format!("/v1/reimburser/claims/{id}"), None)
                .await,
            200,
        )
        .await;
        assert_eq!(detail["status"], "withdrawn");
        assert_eq!(detail["personalData"], Value::Null);
        assert_eq!(detail["fields"], json!({}));
        assert!(!detail.to_string().contains(NAME), "{detail}");
        let q = json!({"billBatchCode": BATCH, "billNo": "0000000001", "random": random_of(1)});
        let v = json_of(
            app.signed(&w.a, "POST", "/v1/reimburser/verifications", Some(&q)).await,
            200,
        )
        .await;
        assert!(v.get("personalData").is_none(), "{v}");
    }
);

// Concurrent submissions of the same receipt: exactly one claim holds it, every
// other gets the conflict code.
both_modes!(
    concurrent_claims_of_one_receipt_have_one_winner,
    |mode: Mode| async move {
        let w = world(mode).await;
        let r3 = w.ids[3].clone();
        let bodies: Vec<Value> = (0..6)
            .map(|i| {
                if i % 2 == 0 {
                    claim_body("insurer-a", &[r3.as_str()], &["name", "id_card_no"])
                } else {
                    claim_body("insurer-b", &[r3.as_str()], &["name"])
                }
            })
            .collect();
        let answers = futures_util::future::join_all(bodies.iter().map(|b| submit(&w, b))).await;
        let mut won = 0;
        for resp in answers {
            match resp.status().as_u16() {
                201 => won += 1,
                409 => {
                    let p: Value = resp.json().await.expect("json");
                    assert_eq!(p["code"], "receipt_already_claimed", "{p}");
                }
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!(won, 1);
        let mine = json_of(w.app.mp("GET", "/v1/mp/claims", &w.token, None).await, 200).await;
        assert_eq!(mine["items"].as_array().map(Vec::len), Some(1));
    }
);

// A lock held too long is released: the claim goes back to received, by `system`.
both_modes!(
    an_expired_lock_takes_the_claim_back_to_received,
    |mode: Mode| async move {
        let w = world_with(
            mode,
            &[
                ("PIAOJIA_REIMBURSEMENT__LOCK_TTL_SECS", "1"),
                ("PIAOJIA_REIMBURSEMENT__EXPIRY_CHECK_SECS", "1"),
            ],
        )
        .await;
        let claim = json_of(
            submit(
                &w,
                &claim_body("insurer-a", &[w.ids[1].as_str()], &["name", "id_card_no"]),
            )
            .await,
            201,
        )
        .await;
        let id = claim["id"].as_str().expect("id").to_owned();
        change(&w.app, &w.a, "lock", "lock-e", 1, json!({})).await;
        let back = eventually(15, || {
            let w = &w;
            let id = id.clone();
            async move {
                let c = payer_claim(w, &id).await;
                (c["status"] == "received").then_some(c)
            }
        })
        .await;
        let last = back["history"]
            .as_array()
            .and_then(|h| h.last())
            .cloned()
            .expect("history");
        assert_eq!(last["action"], "expire");
        assert_eq!(last["fromStatus"], "locked");
        let detail = json_of(
            w.app
                .signed(&w.a, "GET", &format!("/v1/reimburser/claims/{id}"), None)
                .await,
            200,
        )
        .await;
        let last = detail["history"]
            .as_array()
            .and_then(|h| h.last())
            .cloned()
            .expect("history");
        assert_eq!(last["actor"], "system");
        // Withdrawable again.
        json_of(
            w.app
                .mp("POST", &format!("/v1/mp/claims/{id}/withdrawal"), &w.token, None)
                .await,
            200,
        )
        .await;
    }
);

fn batch_item(n: u64, paid: Option<&str>) -> Value {
    let mut item = json!({"billBatchCode": BATCH, "billNo": format!("{n:010}"), "random": random_of(n)});
    if let Some(p) = paid {
        item["paidAmt"] = json!(p);
    }
    item
}

// A batch moves each claim it touches once: the claims and their receipts'
// states are read for the whole batch, so a claim of two receipts locked (or
// closed) in one batch gets one event, and the sum paid covers both.
both_modes!(a_batch_moves_each_claim_once, |mode: Mode| async move {
    let w = world(mode).await;
    let app = &w.app;
    let two = json_of(
        submit(
            &w,
            &claim_body("insurer-b", &[w.ids[1].as_str(), w.ids[2].as_str()], &["name"]),
        )
        .await,
        201,
    )
    .await;
    let one = json_of(
        submit(&w, &claim_body("insurer-b", &[w.ids[3].as_str()], &["name"])).await,
        201,
    )
    .await;
    let (two, one) = (
        two["id"].as_str().expect("id").to_owned(),
        one["id"].as_str().expect("id").to_owned(),
    );
    let batch = |request_id: &str, action: &str, items: Vec<Value>| json!({"requestId": request_id, "action": action, "receipts": items});
    let locked = json_of(
        app.signed(
            &w.b,
            "POST",
            "/v1/reimburser/receipts/batch",
            Some(&batch("b-lock", "lock", (1..=3).map(|n| batch_item(n, None)).collect())),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(locked["receipts"].as_array().map(Vec::len), Some(3), "{locked}");
    for id in [&two, &one] {
        assert_eq!(payer_claim(&w, id).await["status"], "locked");
    }
    let closed = batch(
        "b-close",
        "close",
        vec![
            batch_item(1, Some("100.00")),
            batch_item(2, Some("20.50")),
            batch_item(3, Some("5.00")),
        ],
    );
    json_of(
        app.signed(&w.b, "POST", "/v1/reimburser/receipts/batch", Some(&closed))
            .await,
        200,
    )
    .await;
    let c = payer_claim(&w, &two).await;
    assert_eq!(c["status"], "reimbursed", "{c}");
    assert_eq!(c["paidAmt"], "120.50", "{c}");
    let actions: Vec<&str> = c["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["submit", "lock", "close"], "{c}");
    let c = payer_claim(&w, &one).await;
    assert_eq!(c["status"], "reimbursed", "{c}");
    assert_eq!(c["paidAmt"], "5.00", "{c}");
    // The reimburser's feed reads both claims' receipts at once, in claim order.
    let feed = json_of(app.signed(&w.b, "GET", "/v1/reimburser/claims", None).await, 200).await;
    let bills: Vec<Vec<&str>> = feed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            i["receipts"]
                .as_array()
                .expect("receipts")
                .iter()
                .filter_map(|r| r["billNo"].as_str())
                .collect()
        })
        .collect();
    assert_eq!(bills, [vec!["0000000001", "0000000002"], vec!["0000000003"]], "{feed}");
});

// The payer's claims come a page at a time, newest first: `nextCursor` leads to
// the next page and is null on the last; a bad cursor or limit is refused.
both_modes!(payer_claims_are_paged_with_a_cursor, |mode: Mode| async move {
    let w = world(mode).await;
    let app = &w.app;
    let mut submitted = Vec::new();
    for n in 1..=3 {
        let c = json_of(
            submit(&w, &claim_body("insurer-b", &[w.ids[n].as_str()], &["name"])).await,
            201,
        )
        .await;
        submitted.push(c["id"].as_str().expect("id").to_owned());
    }
    let mut seen = Vec::new();
    let mut path = "/v1/mp/claims?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let page = json_of(app.mp("GET", &path, &w.token, None).await, 200).await;
        pages += 1;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2, "{page}");
        seen.extend(items.iter().filter_map(|i| i["id"].as_str().map(str::to_owned)));
        match page["nextCursor"].as_str() {
            Some(cursor) => path = format!("/v1/mp/claims?limit=2&cursor={cursor}"),
            None => break,
        }
        assert!(pages < 5, "the pages end");
    }
    assert_eq!(pages, 2);
    submitted.reverse();
    assert_eq!(seen, submitted, "newest first, each once");
    // Without a limit: the default page holds them all, and nothing follows.
    let all = json_of(app.mp("GET", "/v1/mp/claims", &w.token, None).await, 200).await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(3));
    assert_eq!(all["nextCursor"], Value::Null);
    for (query, pointer) in [
        ("cursor=not-a-cursor", "/cursor"),
        ("limit=0", "/limit"),
        ("limit=1000", "/limit"),
    ] {
        let resp = app.mp("GET", &format!("/v1/mp/claims?{query}"), &w.token, None).await;
        let p = problem(resp, 422).await;
        assert_eq!(p["errors"][0]["pointer"], pointer, "{query}: {p}");
    }
});

// A claim made through the official account (its pages) is followed by template
// messages to the payer's openid there: no subscribe consent is needed.
both_modes!(
    an_official_account_claim_is_followed_by_template_messages,
    |mode: Mode| async move {
        const OA: &str = "wx0a1b2c3d4e5f6a7b";
        let app = TestConfig::new(mode).await.spawn().await;
        let sim = app.sim.clone().expect("sim");
        app.create_agency(AGENCY, &[]).await;
        let issuer = app.create_issuer(AGENCY, "hosp01-his", None).await;
        app.wechat_channel(AGENCY, "wechat_template", OA, "TMPL-RECEIPT-ISSUED")
            .await;
        let insurer = app.create_reimburser_with("insurer-oa", &[AGENCY], None, &[]).await;
        let openid = piaojia_wechat_sim::new_openid();
        let mut r = receipt(1, NAME, ID);
        r["openID"] = openid.clone().into();
        let created = json_of(app.push(&issuer, &r).await, 201).await;
        let receipt_id: uuid::Uuid = created["id"].as_str().expect("id").parse().expect("uuid");
        let statuses = |count: usize| {
            let sim = sim.clone();
            let openid = openid.clone();
            async move {
                eventually(15, || {
                    let sent: Vec<String> = sim
                        .sent_template_messages()
                        .into_iter()
                        .filter(|m| m.touser == openid)
                        .map(|m| {
                            serde_json::to_value(&m.data).expect("data")["phrase5"]["value"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned()
                        })
                        .collect();
                    async move { (sent.len() >= count).then_some(sent) }
                })
                .await
            }
        };
        // The receipt's own message first.
        assert_eq!(statuses(1).await.len(), 1);

        // The payer, as the pages sign them in, claims with the insurer.
        let payer = app.store.login_payer(OA, &openid, None).await.expect("login").payer;
        let agency = app.store.agency_by_code(AGENCY).await.expect("agency").expect("known");
        let submitted = app
            .store
            .submit_claim(piaojia_store::NewClaim {
                id: uuid::Uuid::now_v7(),
                payer_id: payer.id,
                reimburser_app_id: "insurer-oa".to_owned(),
                mp_app_id: OA.to_owned(),
                receipt_ids: vec![receipt_id],
                consented_fields: vec![],
                personal_sealed: app.keyring.seal_json(
                    &std::collections::BTreeMap::<String, String>::new(),
                    &piaojia_core::pii::purpose::claim_personal("insurer-oa"),
                ),
                fields_sealed: None,
                accepted_agency_ids: vec![agency.id],
                issued_after: None,
                scope: None,
                remote_addr: None,
            })
            .await
            .expect("submitted");
        assert!(
            matches!(submitted, piaojia_store::SubmitOutcome::Submitted(_)),
            "{submitted:?}"
        );
        // The insurer rejects it: the payer hears it by template message.
        change(&app, &insurer, "reject", "oa-rej-1", 1, json!({"reason": "材料不全"})).await;
        let got = statuses(2).await;
        assert_eq!(got.last().map(String::as_str), Some("未通过"), "{got:?}");
        assert!(sim.sent_subscribe_messages().is_empty(), "no subscribe message");
    }
);

both_modes!(a_reimburser_names_its_claim_fields, |mode: Mode| async move {
    let w = world(mode).await;
    let mut spec = TestApp::reimburser_spec("insurer-d", &[AGENCY], None, &["name"]);
    spec.claim_fields = vec![
        ClaimField::parse_spec("policyNo:保单号:required").expect("spec"),
        ClaimField::parse_spec("iban:收款账号").expect("spec"),
    ];
    let d = w.app.create_reimburser_from(spec).await;
    let r1 = w.ids[1].as_str();
    let list = json_of(
        w.app
            .mp("GET", &format!("/v1/mp/reimbursers?receipt={r1}"), &w.token, None)
            .await,
        200,
    )
    .await;
    let items = list["items"].as_array().expect("items");
    let offered = items
        .iter()
        .find(|i| i["appId"] == "insurer-d")
        .expect("insurer-d offered");
    assert_eq!(
        offered["claimFields"],
        json!([{"name": "policyNo", "label": "保单号", "required": true},
               {"name": "iban", "label": "收款账号", "required": false}]),
        "{list}"
    );
    // One that names none lists none, and takes any fields (as before).
    let a = items
        .iter()
        .find(|i| i["appId"] == "insurer-a")
        .expect("insurer-a offered");
    assert_eq!(a["claimFields"], json!([]));

    // A field it does not ask for, and the required one missing.
    let mut body = claim_body("insurer-d", &[r1], &["name"]);
    body["fields"] = json!({"bankAccount": "6222020200112233445"});
    let p = problem(submit(&w, &body).await, 422).await;
    assert_eq!(p["code"], "validation_failed");
    let mut seen = field_codes(&p);
    seen.sort();
    assert_eq!(
        seen,
        [
            ("/fields/bankAccount".to_owned(), "unknown_field".to_owned()),
            ("/fields/policyNo".to_owned(), "required".to_owned()),
        ],
        "{p}"
    );
    let mut body = claim_body("insurer-d", &[r1], &["name"]);
    body["fields"] = json!({"policyNo": "P2026-0099"});
    let claim = json_of(submit(&w, &body).await, 201).await;
    let detail = json_of(
        w.app
            .signed(
                &d,
                "GET",
                &format!("/v1/reimburser/claims/{}", claim["id"].as_str().expect("id")),
                None,
            )
            .await,
        200,
    )
    .await;
    assert_eq!(detail["fields"], json!({"policyNo": "P2026-0099"}), "{detail}");
});
