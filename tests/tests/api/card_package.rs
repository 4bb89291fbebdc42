//! WeChat's card package (卡包) end to end against the simulator: the agency's
//! card template, the "收入微信卡包" link of the template message, the payer's
//! agreement, the PDF upload and the insertion as deliveries, the card in the
//! payer's package, the reversal cancelling it, a reimburser's lock mirrored, and
//! WeChat's status reports recorded.

use base64::Engine as _;
use piaojia_store::ReimbursementState;
use piaojia_tests::both_modes;
use piaojia_tests::harness::{Mode, TestApp, TestConfig, eventually};
use piaojia_tests::samples::{self, BATCH};
use piaojia_wechat_sim::CardStatus;
use serde_json::{Value, json};

use crate::official_account::{official_account, sandbox_client};

const OA: &str = "wx9e8d7c6b5a4f3e2d";
const PDF: &[u8] = b"%PDF-1.7\n% piaojia card test\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n";

async fn enable(app: &TestApp, agency: &str) -> piaojia_store::CardUnit {
    piaojia_gateway::card_package::enable(
        app.store.as_ref(),
        &app.keyring,
        &sandbox_client(app),
        piaojia_gateway::card_package::EnableCard {
            agency_code: agency.to_owned(),
            wechat_app_id: OA.to_owned(),
            payee: "测试市第一人民医院".to_owned(),
            logo_url: "https://mmbiz.qpic.cn/logo.png".to_owned(),
        },
    )
    .await
    .expect("card package enabled")
}

/// Pushes receipt `n` with a PDF for `payer` and returns the template message's link path.
async fn pushed_with_link(
    app: &TestApp,
    issuer: &piaojia_tests::harness::Issuer,
    n: u64,
    payer: &str,
) -> (Value, String) {
    let sim = app.sim.as_ref().expect("sim");
    let mut r = samples::outpatient(n);
    r["openID"] = payer.into();
    r["file"] = json!({ "format": "pdf", "base64": base64::engine::general_purpose::STANDARD.encode(PDF) });
    let resp = app.push(issuer, &r).await;
    assert_eq!(resp.status().as_u16(), 201);
    let created: Value = resp.json().await.expect("json");
    let id = created["id"].as_str().expect("id").to_owned();
    let url = eventually(10, || async {
        sim.sent_template_messages()
            .into_iter()
            .find(|m| m.touser == payer)
            .and_then(|m| m.url)
    })
    .await;
    assert!(url.contains(&format!("/h5/{OA}/receipts/{id}/card?t=")), "{url}");
    let path = url.split_once("/h5/").map(|(_, p)| format!("/h5/{p}")).expect("path");
    (created, path)
}

/// The receipt's card order once it meets `pred`, waiting up to `secs` seconds.
async fn card_order_where(
    app: &TestApp,
    receipt_id: uuid::Uuid,
    secs: u64,
    pred: impl Fn(&piaojia_store::CardOrder) -> bool,
) -> piaojia_store::CardOrder {
    eventually(secs, || async {
        app.store
            .card_order_for_receipt(receipt_id)
            .await
            .expect("store")
            .filter(|o| pred(o))
    })
    .await
}

/// A receipt of `payer` pushed, taken into their card package (the payer agrees
/// at WeChat's page) and its card's `code` recorded: its id and the card.
async fn in_card_package(
    app: &TestApp,
    issuer: &piaojia_tests::harness::Issuer,
    n: u64,
    payer: &str,
) -> (uuid::Uuid, piaojia_wechat_sim::SimCard) {
    let sim = app.sim.as_ref().expect("sim");
    let (created, path) = pushed_with_link(app, issuer, n, payer).await;
    let receipt_id = uuid::Uuid::parse_str(created["id"].as_str().expect("id")).expect("uuid");
    let auth_url = app.get(&path).await.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    sim.authorize_invoice(&auth_url, payer).await.expect("agreed");
    let card = eventually(15, || async { sim.card_package(OA, payer).into_iter().next() }).await;
    // The card is in WeChat's package a moment before insertbill's answer is recorded.
    card_order_where(app, receipt_id, 10, |o| o.code.is_some()).await;
    (receipt_id, card)
}

/// WeChat reports a status of one of our cards (`update_invoice_status`), as a
/// reimburser's change through WeChat's own calls makes it do.
async fn report_card_status(
    sim: &piaojia_wechat_sim::Simulator,
    payer: &str,
    card: &piaojia_wechat_sim::SimCard,
    status: piaojia_wechat::client::ReimburseStatus,
) {
    let gh = sim.app(OA).expect("app").original_id;
    let xml = piaojia_wechat::event::Event::update_invoice_status(
        &gh,
        payer,
        chrono::Utc::now().timestamp(),
        status,
        &card.card_id,
        &card.code,
    );
    assert!(sim.push_xml(OA, Some(payer), &xml).await.expect("push").acknowledged);
}

both_modes!(card_package_journey, |mode: Mode| async move {
    let app = TestConfig::new(mode).await.spawn().await;
    let sim = app.sim.clone().expect("sim");
    let issuer = app.issuer().await;
    official_account(&app, &issuer.agency_code, OA, None, Some("{cardUrl}")).await;
    let unit = enable(&app, &issuer.agency_code).await;
    assert!(unit.enabled);
    assert_eq!(sim.bill_cards().len(), 1, "one template per agency");
    assert_eq!(
        enable(&app, &issuer.agency_code).await.card_id,
        unit.card_id,
        "kept on a repeat"
    );
    assert_eq!(sim.bill_cards().len(), 1);

    let payer = piaojia_wechat_sim::new_openid();
    let (created, path) = pushed_with_link(&app, &issuer, 1, &payer).await;
    let receipt_id = uuid::Uuid::parse_str(created["id"].as_str().expect("id")).expect("uuid");

    // A forged or foreign link reveals nothing.
    let forged = app
        .get(&format!("{}x", path.trim_end_matches(|c: char| c.is_ascii_hexdigit())))
        .await;
    assert_eq!(forged.status().as_u16(), 403);
    let other = app.get(&path.replace(OA, "wx0000000000000000")).await;
    assert_eq!(other.status().as_u16(), 403);

    // The link obtains the authorisation URL and sends the payer there.
    let resp = app.get(&path).await;
    assert_eq!(resp.status().as_u16(), 302);
    let auth_url = resp.headers()["location"].to_str().expect("location").to_owned();
    let order = sim
        .invoice_orders()
        .into_iter()
        .find(|o| o.auth_url == auth_url)
        .expect("the order WeChat holds");
    assert_eq!(order.money, created["totalFen"].as_i64().unwrap_or(order.money));

    // The payer agrees: user_authorize_invoice → setpdf → insertbill.
    let pushes = sim.authorize_invoice(&auth_url, &payer).await.expect("agreed");
    assert!(pushes.iter().all(|p| p.acknowledged), "{pushes:?}");
    let card = eventually(15, || async { sim.card_package(OA, &payer).into_iter().next() }).await;
    assert_eq!(card.billing_no, BATCH);
    assert_eq!(card.billing_code, "0000000001");
    assert_eq!(card.card_id, unit.card_id);
    assert_eq!(card.status, CardStatus::Init);
    // The card's 抬头 is the payer named on the receipt, not the hospital.
    assert_eq!(Some(card.title.as_str()), samples::outpatient(1)["payer"].as_str());
    let stored = card_order_where(&app, receipt_id, 10, |o| o.code.is_some()).await;
    assert_eq!(stored.code.as_deref(), Some(card.code.as_str()));
    // A second agreement (WeChat's retry, or the payer again) starts nothing twice.
    assert!(
        sim.authorize_invoice(&auth_url, &payer)
            .await
            .expect("again")
            .is_empty()
    );
    // The link now says the receipt is in the card package.
    assert_eq!(app.get(&path).await.status().as_u16(), 200);

    // Each call is a tracked delivery.
    let list: Value = app
        .ops("GET", "/v1/ops/deliveries", None)
        .await
        .json()
        .await
        .expect("json");
    let channels: Vec<&str> = list
        .as_array()
        .expect("deliveries")
        .iter()
        .filter_map(|d| d["channel"].as_str())
        .collect();
    assert!(
        channels.contains(&"card_pdf") && channels.contains(&"card_insert"),
        "{channels:?}"
    );
    let interfaces = app
        .ops("GET", "/v1/ops/interfaces", None)
        .await
        .text()
        .await
        .expect("figures");
    for api in ["getbillauthurl", "getauthdata", "setpdf", "insertbill"] {
        assert!(
            interfaces.contains(&format!("wechat:{OA}:{api}")),
            "{api}: {interfaces}"
        );
    }

    // The reversal cancels the card.
    let red = json!({
        "redBillBatchCode": BATCH,
        "redBillNo": "0000009001",
        "redRandom": "9f8e7d",
        "reversedAt": "2026-11-23T10:00:00+08:00",
        "reason": "患者退费"
    });
    let resp = app
        .signed(
            &issuer,
            "POST",
            &format!("/v1/receipts/{BATCH}/0000000001/reversal"),
            Some(&red),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 201);
    eventually(15, || async {
        (sim.card(&card.card_id, &card.code)?.status == CardStatus::Cancel).then_some(())
    })
    .await;
    card_order_where(&app, receipt_id, 10, |o| {
        o.card_status.as_deref() == Some("INVOICE_REIMBURSE_CANCEL")
    })
    .await;
    // A reversed receipt is not offered again.
    assert_eq!(app.get(&path).await.status().as_u16(), 409);
});

both_modes!(
    reimbursement_states_are_mirrored_and_reports_recorded,
    |mode: Mode| async move {
        let app = TestConfig::new(mode).await.spawn().await;
        let sim = app.sim.clone().expect("sim");
        let issuer = app.issuer().await;
        official_account(&app, &issuer.agency_code, OA, None, Some("{cardUrl}")).await;
        enable(&app, &issuer.agency_code).await;
        let payer = piaojia_wechat_sim::new_openid();
        let (receipt_id, card) = in_card_package(&app, &issuer, 2, &payer).await;

        // The reimbursement flow locks, then closes: mirrored to the card.
        let wake = piaojia_notifier::Wake::local();
        let store = app.store.as_ref();
        for (state, status) in [
            (ReimbursementState::Lock, CardStatus::Lock),
            (ReimbursementState::Closure, CardStatus::Closure),
        ] {
            assert!(
                piaojia_gateway::card_package::mirror_reimbursement(store, &wake, receipt_id, state)
                    .await
                    .expect("mirrored")
            );
            eventually(15, || async {
                (sim.card(&card.card_id, &card.code)?.status == status).then_some(())
            })
            .await;
        }
        // A receipt without a card has nothing to mirror.
        let plain: Value = app
            .push(&issuer, &samples::outpatient(3))
            .await
            .json()
            .await
            .expect("json");
        let plain_id = uuid::Uuid::parse_str(plain["id"].as_str().expect("id")).expect("uuid");
        assert!(
            !piaojia_gateway::card_package::mirror_reimbursement(store, &wake, plain_id, ReimbursementState::Lock)
                .await
                .expect("nothing")
        );

        // WeChat's update_invoice_status is recorded on the card.
        report_card_status(&sim, &payer, &card, piaojia_wechat::client::ReimburseStatus::Lock).await;
        card_order_where(&app, receipt_id, 10, |o| {
            o.wechat_status.as_deref() == Some("INVOICE_REIMBURSE_LOCK")
        })
        .await;
    }
);

// A reimburser that takes the receipt from the payer's card package locks and
// closes it through WeChat's own calls; WeChat reports it (update_invoice_status)
// and piaojia keeps that lock (party `wechat`), so no reimburser here takes or
// pays the receipt meanwhile. Our own mirror is no news; a report against a
// receipt another party holds here changes nothing and raises an alert.
both_modes!(a_lock_taken_through_wechat_is_kept_here, |mode: Mode| async move {
    let app = TestConfig::new(mode).await.spawn().await;
    let sim = app.sim.clone().expect("sim");
    let issuer = app.issuer().await;
    official_account(&app, &issuer.agency_code, OA, None, Some("{cardUrl}")).await;
    enable(&app, &issuer.agency_code).await;
    let insurer = app.create_reimburser("insurer-a", &[&issuer.agency_code]).await;
    let payer = piaojia_wechat_sim::new_openid();
    let (receipt_id, card) = in_card_package(&app, &issuer, 2, &payer).await;
    let gh = sim.app(OA).expect("app").original_id;
    // WeChat de-duplicates by sender and CreateTime: each report a second apart.
    let sent = std::sync::atomic::AtomicI64::new(chrono::Utc::now().timestamp());
    let report = |status: piaojia_wechat::client::ReimburseStatus| {
        let xml = piaojia_wechat::event::Event::update_invoice_status(
            &gh,
            &payer,
            sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            status,
            &card.card_id,
            &card.code,
        );
        let sim = sim.clone();
        let payer = payer.clone();
        async move {
            assert!(sim.push_xml(OA, Some(&payer), &xml).await.expect("push").acknowledged);
        }
    };
    let wechat_status_is = |status: &'static str| {
        let app = &app;
        async move {
            card_order_where(app, receipt_id, 10, |o| o.wechat_status.as_deref() == Some(status)).await;
        }
    };
    let holding = || async {
        let r = app
            .store
            .reimbursement_of(receipt_id)
            .await
            .expect("store")
            .expect("held");
        (r.state, r.holder)
    };
    let random = samples::outpatient(2)["random"].as_str().expect("random").to_owned();
    let call = |action: &'static str, request_id: &'static str| {
        let body = json!({"requestId": request_id, "billBatchCode": BATCH, "billNo": "0000000002",
            "random": random});
        let app = &app;
        let insurer = &insurer;
        async move {
            app.signed(
                insurer,
                "POST",
                &format!("/v1/reimburser/receipts/{action}"),
                Some(&body),
            )
            .await
        }
    };
    use piaojia_wechat::client::ReimburseStatus as W;

    // The insurer here locks it: mirrored to the card. WeChat's echo of that is no news.
    assert_eq!(call("lock", "wx-1").await.status().as_u16(), 200);
    eventually(15, || async {
        (sim.card(&card.card_id, &card.code)?.status == CardStatus::Lock).then_some(())
    })
    .await;
    card_order_where(&app, receipt_id, 10, |o| {
        o.card_status.as_deref() == Some("INVOICE_REIMBURSE_LOCK")
    })
    .await;
    report(W::Lock).await;
    wechat_status_is("INVOICE_REIMBURSE_LOCK").await;
    assert_eq!(
        holding().await,
        (ReimbursementState::Lock, Some("insurer-a".to_owned()))
    );
    // A closure reported through WeChat while the insurer holds it: nothing moves, an alert.
    report(W::Closure).await;
    wechat_status_is("INVOICE_REIMBURSE_CLOSURE").await;
    let alert = eventually(10, || async {
        app.store
            .firing_alert("wechat_lock_conflict", &format!("receipt:{BATCH}/0000000002"))
            .await
            .expect("store")
    })
    .await;
    assert!(alert.message.contains("insurer-a"), "{}", alert.message);
    assert_eq!(
        holding().await,
        (ReimbursementState::Lock, Some("insurer-a".to_owned()))
    );

    // The insurer lets go; then a reimburser locks it through WeChat: kept here.
    assert_eq!(call("unlock", "wx-2").await.status().as_u16(), 200);
    card_order_where(&app, receipt_id, 15, |o| {
        o.card_status.as_deref() == Some("INVOICE_REIMBURSE_INIT")
    })
    .await;
    report(W::Lock).await;
    let held = eventually(10, || async {
        let h = holding().await;
        (h.1.as_deref() == Some("wechat")).then_some(h)
    })
    .await;
    assert_eq!(held.0, ReimbursementState::Lock);
    let resp = call("lock", "wx-3").await;
    assert_eq!(resp.status().as_u16(), 409);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "receipt_locked_by_other", "{body}");
    // Closed through WeChat: closed here, for good; the history says who.
    report(W::Closure).await;
    let closed = eventually(10, || async {
        let h = holding().await;
        (h.0 == ReimbursementState::Closure).then_some(h)
    })
    .await;
    assert_eq!(closed.1.as_deref(), Some("wechat"));
    let history: Value = app
        .signed(
            &issuer,
            "GET",
            &format!("/v1/receipts/{BATCH}/0000000002/reimbursement-history"),
            None,
        )
        .await
        .json()
        .await
        .expect("json");
    let entries: Vec<(String, String)> = history["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or_default().to_owned(),
                e["action"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        entries,
        [
            pair("insurer-a", "lock"),
            pair("insurer-a", "unlock"),
            pair("wechat", "lock"),
            pair("wechat", "close"),
        ],
        "{history}"
    );
});

// The message server's inbox retries an event whose handling failed (here WeChat's
// getauthdata answers errors): with backoff until it works, and for good, reported
// as an alert, when it never does.
both_modes!(failed_events_are_retried_then_reported, |mode: Mode| async move {
    let mut config = TestConfig::new(mode).await;
    config.set("PIAOJIA_WECHAT__INBOX_RETRY_SCHEDULE", "300ms,300ms,3s");
    let app = config.spawn().await;
    let sim = app.sim.clone().expect("sim");
    let issuer = app.issuer().await;
    official_account(&app, &issuer.agency_code, OA, None, Some("{cardUrl}")).await;
    enable(&app, &issuer.agency_code).await;
    let fail_authdata = || {
        sim.set_faults(
            piaojia_wechat_sim::FaultScope::Path(piaojia_wechat_sim::paths::GET_AUTH_DATA.to_owned()),
            piaojia_wechat_sim::Faults {
                error_rate: 1.0,
                errcode: -1,
                errmsg: "system error".to_owned(),
                ..Default::default()
            },
        );
    };
    let authorize_events = || async {
        app.store
            .inbox_events(OA)
            .await
            .expect("inbox")
            .into_iter()
            .filter(|e| e.event == "user_authorize_invoice")
            .collect::<Vec<_>>()
    };

    // Failing at first: retried, and inserted once WeChat answers again.
    let payer = piaojia_wechat_sim::new_openid();
    let (_, path) = pushed_with_link(&app, &issuer, 1, &payer).await;
    let auth_url = app.get(&path).await.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    fail_authdata();
    let pushes = sim.authorize_invoice(&auth_url, &payer).await.expect("agreed");
    assert!(
        pushes.iter().all(|p| p.acknowledged),
        "acknowledged before it failed: {pushes:?}"
    );
    eventually(10, || async {
        let e = authorize_events().await;
        (e.len() == 1 && e[0].attempts >= 2 && e[0].state == "pending").then_some(())
    })
    .await;
    sim.clear_faults();
    let card = eventually(15, || async { sim.card_package(OA, &payer).into_iter().next() }).await;
    assert_eq!(card.billing_code, "0000000001");
    let kept = authorize_events().await;
    assert_eq!(kept[0].state, "done");
    assert!(kept[0].last_error.is_none());

    // Failing every time: failed after the last retry, and reported.
    let payer = piaojia_wechat_sim::new_openid();
    let (_, path) = pushed_with_link(&app, &issuer, 2, &payer).await;
    let auth_url = app.get(&path).await.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    fail_authdata();
    sim.authorize_invoice(&auth_url, &payer).await.expect("agreed");
    let failed = eventually(15, || async {
        authorize_events().await.into_iter().find(|e| e.state == "failed")
    })
    .await;
    assert_eq!(failed.attempts, 4, "the first try and three retries");
    assert!(failed.last_error.as_deref().is_some_and(|e| !e.is_empty()));
    // The alert is raised just after the event is marked failed.
    let alert = eventually(5, || async {
        let alerts: Value = app.ops("GET", "/v1/ops/alerts", None).await.json().await.expect("json");
        alerts
            .as_array()
            .expect("alerts")
            .iter()
            .find(|a| a["rule"] == piaojia_gateway::inbox::EVENT_FAILED_RULE)
            .cloned()
    })
    .await;
    assert!(alert["key"].as_str().expect("key").contains(OA));
    assert!(sim.card_package(OA, &payer).is_empty());

    // The operator sees it: masked openid, attempts, last error, never the body.
    let listed = |query: &'static str| {
        let app = &app;
        async move {
            let r = app.ops("GET", &format!("/v1/ops/wechat-inbox{query}"), None).await;
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.expect("json")
        }
    };
    let failed_list = listed("?status=failed").await;
    let rows = failed_list.as_array().expect("list");
    assert_eq!(rows.len(), 1, "{failed_list}");
    let row = &rows[0];
    assert_eq!(row["id"], failed.id.to_string());
    assert_eq!(row["event"], "user_authorize_invoice");
    assert_eq!(row["appId"], OA);
    assert_eq!(row["status"], "failed");
    assert_eq!(row["attempts"], 4);
    assert!(row["lastError"].as_str().is_some_and(|e| !e.is_empty()));
    let masked = row["openId"].as_str().expect("a masked openid");
    assert!(masked.contains('*') && masked != payer && masked.starts_with(&payer[..4]));
    let text = failed_list.to_string();
    assert!(!text.contains(&payer) && !text.contains(&failed.payload_sealed));
    assert!(row.get("payloadSealed").is_none() && row.get("dedupKey").is_none());
    let all = listed("").await;
    assert!(all.as_array().expect("list").len() >= 2);
    let first_page = listed("?limit=1").await;
    let first_id = first_page[0]["id"].as_str().expect("id").to_owned();
    let r = app
        .ops("GET", &format!("/v1/ops/wechat-inbox?limit=1&after={first_id}"), None)
        .await;
    let second_page: Value = r.json().await.expect("json");
    assert_ne!(second_page[0]["id"], first_page[0]["id"], "paged");
    let bad = app.ops("GET", "/v1/ops/wechat-inbox?status=lost", None).await;
    assert_eq!(bad.status(), 422);
    assert_eq!(bad.json::<Value>().await.expect("json")["code"], "validation_failed");

    // Re-driving: a done event is refused, an unknown one is not found …
    let r = app
        .ops("POST", &format!("/v1/ops/wechat-inbox/{}/retry", kept[0].id), None)
        .await;
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.expect("json")["code"], "inbox_event_not_failed");
    let r = app
        .ops(
            "POST",
            &format!("/v1/ops/wechat-inbox/{}/retry", uuid::Uuid::now_v7()),
            None,
        )
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.expect("json")["code"], "inbox_event_not_found");

    // … a failed one is due again with its attempts starting over; WeChat still
    // failing, it fails for good again, all its retries tried.
    let since = chrono::Utc::now();
    let r = app
        .ops("POST", &format!("/v1/ops/wechat-inbox/{}/retry", failed.id), None)
        .await;
    assert_eq!(r.status(), 200);
    let again: Value = r.json().await.expect("json");
    assert_eq!(again["status"], "pending");
    // Starting over: 0, or 1 when a worker, woken by the re-drive, took it
    // before the answer was read back.
    assert!(again["attempts"].as_i64().is_some_and(|a| a <= 1), "{again}");
    let refailed = eventually(15, || async {
        authorize_events()
            .await
            .into_iter()
            .find(|e| e.state == "failed" && e.handled_at.is_some_and(|t| chrono::DateTime::from(t) >= since))
    })
    .await;
    assert_eq!(refailed.attempts, 4);
    // Its alert renewed, not doubled.
    let key = format!("wechat:{OA}:{}", failed.id);
    let of_event = |alerts: &Value| -> Vec<Value> {
        alerts
            .as_array()
            .expect("alerts")
            .iter()
            .filter(|a| a["key"] == key.as_str())
            .cloned()
            .collect()
    };
    let alerts: Value = app.ops("GET", "/v1/ops/alerts", None).await.json().await.expect("json");
    assert_eq!(of_event(&alerts).len(), 1, "{alerts}");

    // WeChat back: the batch re-drive of everything failed since then inserts the card, once.
    sim.clear_faults();
    let none = app
        .ops(
            "POST",
            "/v1/ops/wechat-inbox/retry",
            Some(&json!({"failedSince": chrono::Utc::now() + chrono::TimeDelta::hours(1)})),
        )
        .await;
    assert_eq!(none.json::<Value>().await.expect("json")["retried"], 0);
    let r = app
        .ops(
            "POST",
            "/v1/ops/wechat-inbox/retry",
            Some(&json!({ "failedSince": since })),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.expect("json")["retried"], 1);
    eventually(15, || async {
        authorize_events()
            .await
            .into_iter()
            .find(|e| e.id == failed.id && e.state == "done")
    })
    .await;
    // Done at last: its alert is resolved.
    eventually(10, || async {
        app.store
            .firing_alert(piaojia_gateway::inbox::EVENT_FAILED_RULE, &key)
            .await
            .expect("store")
            .is_none()
            .then_some(())
    })
    .await;
    let alerts: Value = app.ops("GET", "/v1/ops/alerts", None).await.json().await.expect("json");
    let ours = of_event(&alerts);
    assert_eq!(ours.len(), 1, "{alerts}");
    assert_eq!(ours[0]["state"], "resolved", "{alerts}");
    assert_eq!(sim.card_package(OA, &payer).len(), 1, "inserted once");
    assert!(listed("?status=failed").await.as_array().expect("list").is_empty());
});

both_modes!(a_card_whose_insertion_answer_was_lost, |mode: Mode| async move {
    let app = TestConfig::new(mode).await.spawn().await;
    let sim = app.sim.clone().expect("sim");
    let issuer = app.issuer().await;
    official_account(&app, &issuer.agency_code, OA, None, Some("{cardUrl}")).await;
    enable(&app, &issuer.agency_code).await;
    let payer = piaojia_wechat_sim::new_openid();
    let (created, path) = pushed_with_link(&app, &issuer, 3, &payer).await;
    let receipt_id = uuid::Uuid::parse_str(created["id"].as_str().expect("id")).expect("uuid");
    // insertbill takes effect at WeChat but answers after our timeout (2 s).
    sim.set_faults(
        piaojia_wechat_sim::FaultScope::Path(piaojia_wechat_sim::paths::INSERT_BILL.to_owned()),
        piaojia_wechat_sim::Faults::timeouts(1.0, 3_000),
    );
    let auth_url = app.get(&path).await.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    sim.authorize_invoice(&auth_url, &payer).await.expect("agreed");
    let card = eventually(15, || async { sim.card_package(OA, &payer).into_iter().next() }).await;
    sim.set_faults(
        piaojia_wechat_sim::FaultScope::Path(piaojia_wechat_sim::paths::INSERT_BILL.to_owned()),
        piaojia_wechat_sim::Faults::default(),
    );
    // The retry hears 72024 (the order has its card): delivered, its code unknown,
    // and the operators are told its status cannot be mirrored.
    let order = card_order_where(&app, receipt_id, 20, |o| o.inserted_at.is_some()).await;
    assert_eq!(order.code, None);
    let key = format!("card:{}", order.order_id);
    eventually(10, || async {
        app.store.firing_alert("card_code_unknown", &key).await.expect("store")
    })
    .await;
    let inserts: Vec<Value> = eventually(10, || async {
        let list: Vec<Value> = app
            .ops("GET", "/v1/ops/deliveries?channel=card_insert", None)
            .await
            .json()
            .await
            .expect("json");
        list.iter().all(|d| d["status"] == "delivered").then_some(list)
    })
    .await;
    assert_eq!(inserts.len(), 1, "{inserts:?}");
    assert!(inserts[0]["attempts"].as_i64() >= Some(2), "{inserts:?}");
    assert_eq!(sim.card_package(OA, &payer).len(), 1, "one card, inserted once");
    // The link says it is in the card package, and asks WeChat for nothing more.
    assert_eq!(app.get(&path).await.status().as_u16(), 200);

    // Reversed meanwhile: the card cannot be cancelled yet.
    let red = json!({"redBillBatchCode": BATCH, "redBillNo": "0000009003", "redRandom": "9f8e7d",
        "reversedAt": "2026-11-23T10:00:00+08:00", "reason": "患者退费"});
    let resp = app
        .signed(
            &issuer,
            "POST",
            &format!("/v1/receipts/{BATCH}/0000000003/reversal"),
            Some(&red),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 201);
    // WeChat's first report of the card (a reimburser there locks it) names its
    // code: learned, the alert resolved, the missed reversal mirrored (CANCEL),
    // and the lock refused here as on any reversed receipt.
    report_card_status(&sim, &payer, &card, piaojia_wechat::client::ReimburseStatus::Lock).await;
    let learned = card_order_where(&app, receipt_id, 10, |o| o.code.is_some()).await;
    assert_eq!(learned.code.as_deref(), Some(card.code.as_str()));
    eventually(10, || async {
        app.store
            .firing_alert("card_code_unknown", &key)
            .await
            .expect("store")
            .is_none()
            .then_some(())
    })
    .await;
    eventually(15, || async {
        (sim.card(&card.card_id, &card.code)?.status == CardStatus::Cancel).then_some(())
    })
    .await;
    let state = app
        .store
        .reimbursement_of(receipt_id)
        .await
        .expect("store")
        .expect("state");
    assert_eq!(state.state, ReimbursementState::Cancel);
});
