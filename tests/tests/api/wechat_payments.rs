//! "Payments we know": the hospital's payment system reports a WeChat Pay payment
//! (`POST /v1/wechat-payments`), and a receipt pushed with only its
//! `weChatOrderNo` reaches the payer as if it had carried their `openID`: a
//! template message linking its page, and the receipt in that openid's wallet
//! before any registration. Pay-then-push and push-then-pay (delivered once),
//! idempotent reports and the conflict, validation, the receipt's own openid
//! winning, and another agency's payment never matching.

use piaojia_store::wallets::WalletAdd;
use piaojia_tests::both_modes;
use piaojia_tests::browser::Browser;
use piaojia_tests::harness::{Issuer, Mode, TestApp, field_codes, problem, spawn_app};
use piaojia_tests::samples;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::pages::{OA, hospital, push, receipt_url, template_to};

const PATH: &str = "/v1/wechat-payments";

fn payment(order_no: &str, app_id: &str, openid: &str) -> Value {
    json!({
        "weChatOrderNo": order_no,
        "appId": app_id,
        "openId": openid,
        "totalAmt": "128.50",
        "paidAt": "2026-11-23T09:28:00+08:00",
        "tradeType": "JSAPI",
    })
}

async fn report(app: &TestApp, issuer: &Issuer, body: &Value) -> reqwest::Response {
    app.signed(issuer, "POST", PATH, Some(body)).await
}

async fn reported(app: &TestApp, issuer: &Issuer, body: &Value, status: u16) -> Value {
    let resp = report(app, issuer, body).await;
    assert_eq!(resp.status().as_u16(), status, "report");
    resp.json().await.expect("json")
}

/// A receipt of this WeChat Pay order, without the payer's openid.
fn receipt_of_order(n: u64, order_no: &str) -> Value {
    let mut r = samples::outpatient(n);
    r["weChatOrderNo"] = order_no.into();
    r
}

fn template_deliveries(receipt: &Value) -> usize {
    receipt["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .filter(|d| d["channel"] == "wechat_template")
        .count()
}

async fn held(app: &TestApp, issuer: &Issuer, n: u64) -> Value {
    let resp = app
        .signed(issuer, "GET", &format!("/v1/receipts/{}/{n:010}", samples::BATCH), None)
        .await;
    assert_eq!(resp.status().as_u16(), 200, "receipt held");
    resp.json().await.expect("json")
}

fn id_of(receipt: &Value) -> Uuid {
    Uuid::parse_str(receipt["id"].as_str().expect("id")).expect("uuid")
}

/// The receipt is in the wallet kept under (appid, openid), put there by piaojia:
/// collecting it once more adds nothing.
async fn in_openid_wallet(app: &TestApp, appid: &str, openid: &str, receipt: Uuid) -> bool {
    let (_, added) = app
        .store
        .collect_for_openid(appid, openid, receipt)
        .await
        .expect("collect");
    added == WalletAdd::AlreadyThere
}

/// The receipt is not in the wallet of the payer known by (appid, openid).
async fn not_in_wallet_of(app: &TestApp, appid: &str, openid: &str, receipt: Uuid) -> bool {
    let payer = app
        .store
        .login_payer(appid, openid, None)
        .await
        .expect("payer")
        .payer
        .id;
    app.store
        .wallet_receipt(payer, receipt, None)
        .await
        .expect("wallet")
        .is_none()
}

// Pay-then-push: the payment is known when the receipt arrives without an openID.
both_modes!(pay_then_push_announces_and_collects, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = hospital(&app).await;
    let payer = piaojia_wechat_sim::new_openid();
    let order = "4200001234202611230000000001";
    let paid = reported(&app, &issuer, &payment(order, OA, &payer), 201).await;
    assert_eq!(paid["weChatOrderNo"], order);
    assert_eq!(paid["appId"], OA);
    assert_eq!(paid["openId"], payer.as_str());
    assert_eq!(paid["totalAmt"], "128.50");
    assert_eq!(paid["totalFen"], 12850);
    assert_eq!(paid["paidAt"], "2026-11-23T01:28:00Z", "stored in UTC");

    let created = push(&app, &issuer, &receipt_of_order(1, order)).await;
    assert_eq!(template_deliveries(&created), 1, "{created}");
    let id = id_of(&created);
    let sent = template_to(&app, &payer, 1).await;
    assert_eq!(
        sent[0].url.as_deref(),
        Some(receipt_url(&app, &id.to_string()).as_str()),
        "the message opens the receipt"
    );
    assert!(in_openid_wallet(&app, OA, &payer, id).await, "collected at push");
    let mut phone = Browser::of_wechat_user(OA, &payer);
    let page = phone.get(&receipt_url(&app, &id.to_string())).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("¥128.50"), "{}", page.body);
});

// Push-then-pay: the receipt waits without a payer message; the payment's report
// delivers it, once.
both_modes!(push_then_pay_delivers_once, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = hospital(&app).await;
    let payer = piaojia_wechat_sim::new_openid();
    let order = "4200001234202611230000000002";
    let created = push(&app, &issuer, &receipt_of_order(2, order)).await;
    assert_eq!(template_deliveries(&created), 0, "no payer known yet: {created}");
    let id = id_of(&created);

    let body = payment(order, OA, &payer);
    let first = reported(&app, &issuer, &body, 201).await;
    assert_eq!(
        template_deliveries(&held(&app, &issuer, 2).await),
        1,
        "announced on report"
    );
    let sent = template_to(&app, &payer, 1).await;
    assert_eq!(
        sent[0].url.as_deref(),
        Some(receipt_url(&app, &id.to_string()).as_str())
    );
    assert!(in_openid_wallet(&app, OA, &payer, id).await, "collected on report");

    // The same report again: the first record, and nothing more delivered.
    let again = reported(&app, &issuer, &body, 200).await;
    assert_eq!(again, first);
    assert_eq!(template_deliveries(&held(&app, &issuer, 2).await), 1, "announced once");

    // A receipt of the same order pushed after the payment goes straight out.
    let later = push(&app, &issuer, &receipt_of_order(3, order)).await;
    assert_eq!(template_deliveries(&later), 1, "{later}");
    assert!(in_openid_wallet(&app, OA, &payer, id_of(&later)).await);
});

both_modes!(
    a_repeat_is_the_first_record_another_payer_a_conflict,
    |mode: Mode| async move {
        let app = spawn_app(mode).await;
        let issuer = hospital(&app).await;
        let payer = piaojia_wechat_sim::new_openid();
        let order = "4200001234202611230000000003";
        let body = payment(order, OA, &payer);
        let first = reported(&app, &issuer, &body, 201).await;
        // The same payment, the amount as a number and paidAt in UTC: the same content.
        let mut same = body.clone();
        same["totalAmt"] = json!(128.5);
        same["paidAt"] = "2026-11-23T01:28:00Z".into();
        assert_eq!(reported(&app, &issuer, &same, 200).await, first);

        let mut other_payer = body.clone();
        other_payer["openId"] = piaojia_wechat_sim::new_openid().into();
        let p = problem(report(&app, &issuer, &other_payer).await, 409).await;
        assert_eq!(p["code"], "wechat_payment_conflict");
        let mut other_amount = body.clone();
        other_amount["totalAmt"] = "1.00".into();
        let p = problem(report(&app, &issuer, &other_amount).await, 409).await;
        assert_eq!(p["code"], "wechat_payment_conflict");
        // The conflicts changed nothing.
        assert_eq!(reported(&app, &issuer, &body, 200).await, first);
    }
);

both_modes!(invalid_reports_are_refused_field_by_field, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = hospital(&app).await;
    // Another agency's official account is not one of ours.
    app.create_agency("12110000400000002B", &[]).await;
    crate::official_account::official_account(&app, "12110000400000002B", "wxotheragency00001", None, None).await;

    let cases: [(Value, &str, &str); 7] = [
        (
            json!({ "weChatOrderNo": "42000012A4" }),
            "/weChatOrderNo",
            "invalid_format",
        ),
        (json!({ "weChatOrderNo": "4".repeat(33) }), "/weChatOrderNo", "too_long"),
        (json!({ "appId": "wxotheragency00001" }), "/appId", "invalid_value"),
        (json!({ "openId": "o bad" }), "/openId", "invalid_format"),
        (json!({ "totalAmt": "12.345" }), "/totalAmt", "too_many_decimals"),
        (json!({ "paidAt": "2026-11-23 09:28:00" }), "/paidAt", "invalid_format"),
        (json!({ "totalAmt": null }), "/totalAmt", "required"),
    ];
    for (change, pointer, code) in cases {
        let mut body = payment("4200001234202611230000000004", OA, &piaojia_wechat_sim::new_openid());
        for (k, v) in change.as_object().expect("object") {
            body[k] = v.clone();
        }
        let p = problem(report(&app, &issuer, &body).await, 422).await;
        assert_eq!(p["code"], "validation_failed");
        let found = field_codes(&p);
        assert!(
            found.iter().any(|(p, c)| p == pointer && c == code),
            "{pointer} {code} in {found:?}"
        );
    }
    // Everything missing: every field named at once.
    let p = problem(report(&app, &issuer, &json!({})).await, 422).await;
    let found = field_codes(&p);
    for pointer in ["/weChatOrderNo", "/appId", "/openId", "/totalAmt", "/paidAt"] {
        assert!(
            found.iter().any(|(p, c)| p == pointer && c == "required"),
            "{pointer} in {found:?}"
        );
    }
    // A field of the wrong JSON type.
    let p = problem(report(&app, &issuer, &json!({ "weChatOrderNo": 42 })).await, 400).await;
    assert_eq!(p["code"], "invalid_json");
    // Nothing was recorded: the order is still free.
    reported(
        &app,
        &issuer,
        &payment("4200001234202611230000000004", OA, &piaojia_wechat_sim::new_openid()),
        201,
    )
    .await;
});

// A receipt that carries its own openID keeps it, even when its order's payment
// names another payer.
both_modes!(the_receipts_own_openid_wins, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = hospital(&app).await;
    let (payment_payer, receipt_payer) = (piaojia_wechat_sim::new_openid(), piaojia_wechat_sim::new_openid());
    let order = "4200001234202611230000000005";
    reported(&app, &issuer, &payment(order, OA, &payment_payer), 201).await;
    let mut r = receipt_of_order(5, order);
    r["openID"] = receipt_payer.clone().into();
    let created = push(&app, &issuer, &r).await;
    assert_eq!(template_deliveries(&created), 1);
    let id = id_of(&created);
    template_to(&app, &receipt_payer, 1).await;
    assert!(in_openid_wallet(&app, OA, &receipt_payer, id).await);
    assert!(not_in_wallet_of(&app, OA, &payment_payer, id).await);
});

// Orders are per agency: another agency's payment of the same order number
// reaches none of ours, whichever comes first.
both_modes!(another_agencys_payment_never_matches, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let ours = hospital(&app).await;
    let theirs_oa = "wxotheragency00002";
    app.create_agency("12110000400000003C", &[]).await;
    let theirs = app.create_issuer("12110000400000003C", "hosp03-his", None).await;
    crate::official_account::official_account(&app, "12110000400000003C", theirs_oa, None, None).await;
    let their_payer = piaojia_wechat_sim::new_openid();

    // Their payment first, then our receipt of the same order number.
    let order = "4200001234202611230000000006";
    reported(&app, &theirs, &payment(order, theirs_oa, &their_payer), 201).await;
    let created = push(&app, &ours, &receipt_of_order(6, order)).await;
    assert_eq!(template_deliveries(&created), 0, "{created}");
    // Our receipt first, then their payment.
    let order = "4200001234202611230000000007";
    let waiting = push(&app, &ours, &receipt_of_order(7, order)).await;
    reported(&app, &theirs, &payment(order, theirs_oa, &their_payer), 201).await;
    assert_eq!(template_deliveries(&held(&app, &ours, 7).await), 0);
    for id in [id_of(&created), id_of(&waiting)] {
        assert!(not_in_wallet_of(&app, theirs_oa, &their_payer, id).await);
        assert!(not_in_wallet_of(&app, OA, &their_payer, id).await);
    }
    // Our own payment of that order still delivers our waiting receipt.
    let our_payer = piaojia_wechat_sim::new_openid();
    reported(&app, &ours, &payment(order, OA, &our_payer), 201).await;
    assert_eq!(template_deliveries(&held(&app, &ours, 7).await), 1);
    template_to(&app, &our_payer, 1).await;
});
