//! The card package for fiscal receipts: tickets, templates, authorisation pages, PDFs,
//! cards, the platform's status updates and reimbursers (DOMAIN.md §7).

use std::time::Duration;

use piaojia_wechat_sim::{CardStatus, FaultScope, Faults, SimConfig, SimError, new_openid, paths};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::*;

const PDF: &[u8] = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n";

fn fast() -> SimConfig {
    SimConfig {
        push_timeout: Duration::from_millis(500),
        ..config()
    }
}

async fn ticket(env: &Env, appid: &str) -> String {
    let r = env
        .call_get(appid, &format!("{}?type=wx_card", paths::GET_TICKET))
        .await;
    r["ticket"].as_str().unwrap_or_else(|| panic!("ticket: {r}")).to_owned()
}

/// A card template of `platform` for a unit.
async fn template(env: &Env, platform: &str) -> String {
    let body = json!({ "invoice_info": { "payee": "市第一人民医院", "base_info": { "logo_url": "http://mmbiz.qpic.cn/logo/0" } } });
    let r = env.call(platform, paths::CREATE_BILL_CARD, &body).await;
    r["card_id"]
        .as_str()
        .unwrap_or_else(|| panic!("card_id: {r}"))
        .to_owned()
}

fn auth_body(s_pappid: &str, order_id: &str, money: i64, ticket: &str) -> Value {
    json!({
        "s_pappid": s_pappid, "order_id": order_id, "money": money, "timestamp": 1_714_112_445,
        "source": "web", "redirect_url": "https://piaojia.example/after", "ticket": ticket,
    })
}

async fn auth_url(env: &Env, unit: &str, s_pappid: &str, order_id: &str, money: i64) -> String {
    let t = ticket(env, unit).await;
    let r = env
        .call(
            unit,
            paths::GET_BILL_AUTH_URL,
            &auth_body(s_pappid, order_id, money, &t),
        )
        .await;
    r["auth_url"]
        .as_str()
        .unwrap_or_else(|| panic!("auth_url: {r}"))
        .to_owned()
}

async fn upload(env: &Env, appid: &str, pdf: &[u8]) -> Value {
    let token = env.token(appid).await;
    let boundary = "----simtest7MA4YWxkTrZu0gW";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"pdf\"; filename=\"r.pdf\"\r\nContent-Type: application/pdf\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(pdf);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    env.http
        .post(env.url(&format!("{}?access_token={token}", paths::SET_PDF)))
        .header("content-type", format!("multipart/form-data; boundary={boundary}"))
        .body(body)
        .send()
        .await
        .expect("setpdf")
        .json()
        .await
        .expect("json")
}

async fn media(env: &Env, appid: &str) -> String {
    let r = upload(env, appid, PDF).await;
    r["s_media_id"]
        .as_str()
        .unwrap_or_else(|| panic!("s_media_id: {r}"))
        .to_owned()
}

fn insert_body(order_id: &str, card_id: &str, appid: &str, fee: i64, no: &str, code: &str, media: &str) -> Value {
    json!({
        "order_id": order_id, "card_id": card_id, "appid": appid,
        "card_ext": { "user_card": { "invoice_user_data": {
            "fee": fee, "title": "市第一人民医院", "billing_time": 1_714_112_445,
            "billing_no": no, "billing_code": code, "s_pdf_media_id": media,
        } } },
    })
}

/// Everything up to a card in `payer`'s package (self-built platform: OA plays both roles).
async fn issue(env: &Env, card_id: &str, order_id: &str, payer: &str, serial: &str) -> String {
    let s_pappid = env.sim.s_pappid(OA);
    let url = auth_url(env, OA, &s_pappid, order_id, 1250).await;
    env.sim.authorize_invoice(&url, payer).await.expect("payer agrees");
    let m = media(env, OA).await;
    let r = env
        .call(
            OA,
            paths::INSERT_BILL,
            &insert_body(order_id, card_id, OA, 1250, "11060124", serial, &m),
        )
        .await;
    r["code"]
        .as_str()
        .unwrap_or_else(|| panic!("insertbill: {r}"))
        .to_owned()
}

#[tokio::test]
async fn card_tickets_are_shared_until_near_expiry() {
    let env = Env::start(config()).await;
    let r = env.call_get(OA, &format!("{}?type=wx_card", paths::GET_TICKET)).await;
    assert_eq!(
        (errcode(&r), r["errmsg"].as_str(), r["expires_in"].as_i64()),
        (0, Some("ok"), Some(7200))
    );
    let first = r["ticket"].as_str().expect("ticket").to_owned();
    assert_eq!(ticket(&env, OA).await, first);
    assert_eq!(env.sim.ticket_issues(OA), 1, "the same ticket, not a new one");
    // jsapi tickets are separate.
    let jsapi = env.call_get(OA, &format!("{}?type=jsapi", paths::GET_TICKET)).await;
    assert_ne!(jsapi["ticket"], first.as_str());
    assert_eq!(
        errcode(&env.call_get(OA, &format!("{}?type=nope", paths::GET_TICKET)).await),
        40097
    );
    assert_eq!(
        errcode(&env.call_get(MP, &format!("{}?type=wx_card", paths::GET_TICKET)).await),
        48001
    );
    // getticket is GET only.
    assert_eq!(errcode(&env.call(OA, paths::GET_TICKET, &json!({})).await), 43001);

    // With less than five minutes left a new one comes; the old one works until it expires.
    env.sim.advance_clock(Duration::from_secs(6950));
    let second = ticket(&env, OA).await;
    assert_ne!(second, first);
    let s_pappid = env.sim.s_pappid(OA);
    let r = env
        .call(
            OA,
            paths::GET_BILL_AUTH_URL,
            &auth_body(&s_pappid, "o-old", 100, &first),
        )
        .await;
    assert_eq!(errcode(&r), 0, "{r}");
    env.sim.advance_clock(Duration::from_secs(300));
    let r = env
        .call(
            OA,
            paths::GET_BILL_AUTH_URL,
            &auth_body(&s_pappid, "o-expired", 100, &first),
        )
        .await;
    assert_eq!(errcode(&r), 72031, "an expired ticket: {r}");
    // Another account's ticket is not ours.
    let unit_ticket = ticket(&env, UNIT).await;
    let r = env
        .call(
            OA,
            paths::GET_BILL_AUTH_URL,
            &auth_body(&s_pappid, "o-foreign", 100, &unit_ticket),
        )
        .await;
    assert_eq!(errcode(&r), 72031);
    // Two wx_card tickets and one jsapi ticket.
    assert_eq!(env.sim.ticket_issues(OA), 3);
    let (_, counters) = env.admin(Method::GET, &format!("/sim/counters/{OA}"), None).await;
    assert_eq!(counters["ticket_issues"], 3);
    env.stop().await;
}

#[tokio::test]
async fn payer_agrees_on_the_page_and_the_receipt_lands_in_the_card_package() {
    let env = Env::start(fast()).await;
    let inbox = Inbox::success();
    let h = attach(&env, OA, &inbox, None).await;

    let r = env.call(OA, paths::INVOICE_SET_URL, &json!({})).await;
    let invoice_url = r["invoice_url"].as_str().expect("invoice_url");
    let s_pappid = env.sim.s_pappid(OA);
    assert!(invoice_url.ends_with(&format!("s_pappid={s_pappid}")), "{invoice_url}");
    let (_, admin) = env
        .admin(Method::GET, &format!("/sim/invoice/s_pappid/{OA}"), None)
        .await;
    assert_eq!(admin["s_pappid"], s_pappid.as_str());

    let card_id = template(&env, OA).await;
    assert_eq!(env.sim.bill_cards()[0].payee, "市第一人民医院");
    let t = ticket(&env, OA).await;
    let r = env
        .call(OA, paths::GET_BILL_AUTH_URL, &auth_body(&s_pappid, "order-1", 1250, &t))
        .await;
    assert_eq!(r["expire_time"], 7200);
    let url = r["auth_url"].as_str().expect("auth_url").to_owned();
    assert!(
        url.starts_with(&format!("{}{}?", env.base, paths::INVOICE_AUTH_PAGE)),
        "{url}"
    );
    let q = json!({ "s_pappid": s_pappid, "order_id": "order-1" });
    assert_eq!(
        env.call(OA, paths::GET_AUTH_DATA, &q).await["invoice_status"],
        "never auth"
    );

    // The payer opens the link: first who they are, then the page, then they agree.
    let resp = env.browse(&url, None).await;
    let page = resp.text().await.expect("html");
    assert!(page.contains("模拟微信授权"), "{page}");
    let payer = new_openid();
    let resp = env.submit(&url, &[("step", "login"), ("typed", &payer)], None).await;
    assert_eq!(resp.status().as_u16(), 303);
    let cookie = cookie_of(&resp).expect("cookie");
    let page = env.browse(&url, Some(&cookie)).await.text().await.expect("html");
    assert!(
        page.contains("收入微信卡包") && page.contains("¥12.50") && page.contains("order-1"),
        "{page}"
    );
    assert!(!page.contains("<script"));
    let resp = env.submit(&url, &[("step", "agree")], Some(&cookie)).await;
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(location(&resp), "https://piaojia.example/after");

    let pushes = env.sim.wait_for_pushes(1, Duration::from_secs(5)).await;
    assert_eq!(pushes[0].event, "user_authorize_invoice");
    let xml = &inbox.received()[0].1;
    assert_eq!(xml_field(xml, "Event"), "user_authorize_invoice");
    assert_eq!(xml_field(xml, "FromUserName"), payer);
    assert_eq!(xml_field(xml, "ToUserName"), OA_GH);
    assert_eq!(xml_field(xml, "SuccOrderId"), "order-1");
    assert_eq!(xml_field(xml, "FailOrderId"), "");
    assert_eq!(xml_field(xml, "AuthorizeAppId"), OA);
    assert_eq!(xml_field(xml, "Source"), "web");
    let r = env.call(OA, paths::GET_AUTH_DATA, &q).await;
    assert_eq!(r["invoice_status"], "auth success");
    assert!(r["auth_time"].as_i64().expect("auth_time") > 1_700_000_000);
    // Opening the link again shows it done; agreeing again pushes nothing.
    let page = env.browse(&url, Some(&cookie)).await.text().await.expect("html");
    assert!(page.contains("已收入卡包"), "{page}");
    assert!(env.sim.authorize_invoice(&url, &payer).await.expect("again").is_empty());

    let m = media(&env, OA).await;
    let r = env
        .call(
            OA,
            paths::INSERT_BILL,
            &insert_body("order-1", &card_id, OA, 1250, "11060124", "0000000001", &m),
        )
        .await;
    assert_eq!((errcode(&r), r["openid"].as_str()), (0, Some(payer.as_str())), "{r}");
    let code = r["code"].as_str().expect("code").to_owned();
    assert_eq!(code.len(), 12);

    let cards = env.sim.card_package(OA, &payer);
    assert_eq!(cards.len(), 1);
    let card = &cards[0];
    assert_eq!(
        (card.card_id.as_str(), card.code.as_str(), card.fee),
        (card_id.as_str(), code.as_str(), 1250)
    );
    assert_eq!(
        (card.billing_no.as_str(), card.billing_code.as_str()),
        ("11060124", "0000000001")
    );
    assert_eq!(card.status, CardStatus::Init);
    let order = env
        .sim
        .invoice_orders()
        .into_iter()
        .find(|o| o.order_id == "order-1")
        .expect("order");
    assert_eq!(order.code.as_deref(), Some(code.as_str()));

    // The admin views: JSON, and the payer's 卡包 as a page (by openid or by the browser's cookie).
    let (status, json_cards) = env
        .admin(
            Method::GET,
            &format!("/sim/cardpackage?appid={OA}&openid={payer}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(json_cards[0]["status"], "INVOICE_REIMBURSE_INIT");
    let page = env
        .browse(&format!("/sim/cardpackage/page?appid={OA}"), Some(&cookie))
        .await
        .text()
        .await
        .expect("html");
    for needle in [
        "我的卡包",
        "市第一人民医院",
        "¥12.50",
        "11060124",
        "0000000001",
        "可报销",
    ] {
        assert!(page.contains(needle), "{needle} in {page}");
    }
    let pdf_link = format!("{}/{m}", paths::INVOICE_PDF);
    assert!(page.contains(&pdf_link));
    let pdf = env.browse(&pdf_link, None).await;
    assert_eq!(pdf.headers()["content-type"], "application/pdf");
    assert_eq!(pdf.bytes().await.expect("bytes").as_ref(), PDF);
    assert_eq!(
        env.browse(&format!("{}/12345", paths::INVOICE_PDF), None)
            .await
            .status()
            .as_u16(),
        404
    );
    env.stop().await;
    h.stop(false).await;
}

#[tokio::test]
async fn unit_and_platform_each_hear_the_payer_under_their_own_openid() {
    let env = Env::start(fast()).await;
    let (unit_inbox, plat_inbox) = (Inbox::success(), Inbox::success());
    let h1 = attach(&env, UNIT, &unit_inbox, None).await;
    let h2 = attach(&env, OA, &plat_inbox, None).await;
    let card_id = template(&env, OA).await;
    let s_pappid = env.sim.s_pappid(OA);
    let url = auth_url(&env, UNIT, &s_pappid, "u-1", 800).await;
    let payer_in_unit = new_openid();
    let (status, pushes) = env
        .admin(
            Method::POST,
            "/sim/invoice/authorize",
            Some(&json!({ "auth_url": url, "openid": payer_in_unit })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(pushes.as_array().map(Vec::len), Some(2));
    let unit_xml = &unit_inbox.received()[0].1;
    let plat_xml = &plat_inbox.received()[0].1;
    assert_eq!(xml_field(unit_xml, "FromUserName"), payer_in_unit);
    let payer_in_platform = xml_field(plat_xml, "FromUserName").to_owned();
    assert_ne!(payer_in_platform, payer_in_unit);
    assert_eq!(payer_in_platform, env.sim.openid_in(UNIT, &payer_in_unit, OA));
    assert_eq!(xml_field(plat_xml, "AuthorizeAppId"), UNIT);
    // Both may ask whether it was authorised.
    let q = json!({ "s_pappid": s_pappid, "order_id": "u-1" });
    assert_eq!(
        env.call(UNIT, paths::GET_AUTH_DATA, &q).await["invoice_status"],
        "auth success"
    );
    assert_eq!(
        env.call(OA, paths::GET_AUTH_DATA, &q).await["invoice_status"],
        "auth success"
    );
    assert_eq!(errcode(&env.call(REIMB, paths::GET_AUTH_DATA, &q).await), 40078);

    let m = media(&env, OA).await;
    let r = env
        .call(
            OA,
            paths::INSERT_BILL,
            &insert_body("u-1", &card_id, UNIT, 800, "11060124", "0000000007", &m),
        )
        .await;
    assert_eq!(
        r["openid"],
        payer_in_platform.as_str(),
        "the platform learns its own openid: {r}"
    );
    assert_eq!(env.sim.card_package(UNIT, &payer_in_unit).len(), 1);
    assert_eq!(env.sim.card_package(OA, &payer_in_platform).len(), 1);
    assert_eq!(env.sim.card_package(UNIT, &new_openid()).len(), 0);
    env.stop().await;
    h1.stop(false).await;
    h2.stop(false).await;
}

#[tokio::test]
async fn authorisation_errors() {
    let env = Env::start(config()).await;
    let s_pappid = env.sim.s_pappid(OA);
    let t = ticket(&env, OA).await;
    let call = |body: Value| {
        let env = &env;
        async move { errcode(&env.call(OA, paths::GET_BILL_AUTH_URL, &body).await) }
    };
    assert_eq!(call(auth_body("bm90LWEtcGxhdGZvcm0", "o", 100, &t)).await, 72031);
    assert_eq!(
        call(auth_body(&env.sim.s_pappid(MP), "o", 100, &t)).await,
        72031,
        "a mini-program is no platform"
    );
    assert_eq!(call(auth_body(&s_pappid, "o", 0, &t)).await, 72031);
    let mut bad_source = auth_body(&s_pappid, "o", 100, &t);
    bad_source["source"] = json!("pc");
    assert_eq!(call(bad_source).await, 72031);
    assert_eq!(call(auth_body(&s_pappid, "o", 100, "not-a-ticket")).await, 72031);
    assert_eq!(call(auth_body(&s_pappid, &"9".repeat(65), 100, &t)).await, 72031);
    assert_eq!(call(auth_body(&s_pappid, "o", 100, &t)).await, 0);
    assert_eq!(
        call(auth_body(&s_pappid, "o", 200, &t)).await,
        72031,
        "same order, other money"
    );
    // Asking again for a pending order gives a new link; the old one stops working.
    let first = env.sim.invoice_orders()[0].auth_url.clone();
    assert_eq!(call(auth_body(&s_pappid, "o", 100, &t)).await, 0);
    let second = env.sim.invoice_orders()[0].auth_url.clone();
    assert_ne!(first, second);
    assert_eq!(
        env.sim.authorize_invoice(&first, &new_openid()).await.err(),
        Some(SimError::UnknownAuthUrl)
    );
    assert!(
        env.browse(&first, None)
            .await
            .text()
            .await
            .expect("html")
            .contains("授权链接无效")
    );

    // Unknown orders, pending orders, other payers, expiry.
    let q = |order: &str| json!({ "s_pappid": s_pappid, "order_id": order });
    assert_eq!(
        errcode(&env.call(OA, paths::GET_AUTH_DATA, &q("never-asked")).await),
        40078
    );
    let payer = new_openid();
    env.sim.authorize_invoice(&second, &payer).await.expect("agree");
    assert_eq!(
        env.sim.authorize_invoice(&second, &new_openid()).await.err(),
        Some(SimError::OrderTakenByOther)
    );
    let (status, _) = env
        .admin(
            Method::POST,
            "/sim/invoice/authorize",
            Some(&json!({ "auth_url": second, "openid": new_openid() })),
        )
        .await;
    assert_eq!(status, 409);
    let other = env
        .browse(&format!("/sim/browser/login?appid={OA}&openid={}", new_openid()), None)
        .await;
    let page = env
        .browse(&second, cookie_of(&other).as_deref())
        .await
        .text()
        .await
        .expect("html");
    assert!(page.contains("该票据已由其他微信用户领取"), "{page}");

    let late = auth_url(&env, OA, &s_pappid, "late", 100).await;
    env.sim.advance_clock(Duration::from_secs(7201));
    assert_eq!(
        env.sim.authorize_invoice(&late, &payer).await.err(),
        Some(SimError::AuthUrlExpired)
    );
    assert!(
        env.browse(&late, None)
            .await
            .text()
            .await
            .expect("html")
            .contains("已过期")
    );
    let (status, _) = env
        .admin(
            Method::POST,
            "/sim/invoice/authorize",
            Some(&json!({ "auth_url": late, "openid": payer })),
        )
        .await;
    assert_eq!(status, 410);

    // rejectinsert: only for authorised orders; afterwards insertbill answers 72035.
    let reject = |order: &str| json!({ "s_pappid": s_pappid, "order_id": order, "reason": "缴费信息有误", "url": "https://piaojia.example/why" });
    assert_eq!(
        errcode(&env.call(OA, paths::REJECT_INSERT, &reject("late")).await),
        72038
    );
    assert_eq!(errcode(&env.call(OA, paths::REJECT_INSERT, &reject("o")).await), 0);
    let order = env
        .sim
        .invoice_orders()
        .into_iter()
        .find(|o| o.order_id == "o")
        .expect("order");
    assert_eq!(order.rejected_reason.as_deref(), Some("缴费信息有误"));
    let card_id = template(&env, OA).await;
    let m = media(&env, OA).await;
    let r = env
        .call(
            OA,
            paths::INSERT_BILL,
            &insert_body("o", &card_id, OA, 100, "11060124", "0000000002", &m),
        )
        .await;
    assert_eq!(errcode(&r), 72035);
    env.stop().await;
}

#[tokio::test]
async fn insert_bill_errors() {
    let env = Env::start(config()).await;
    let card_id = template(&env, OA).await;
    let foreign_card = template(&env, UNIT).await;
    let s_pappid = env.sim.s_pappid(OA);
    let payer = new_openid();
    let url = auth_url(&env, OA, &s_pappid, "ins-1", 1250).await;
    let m = media(&env, OA).await;
    let insert = |body: Value| {
        let env = &env;
        async move { errcode(&env.call(OA, paths::INSERT_BILL, &body).await) }
    };
    let body = |order: &str, card: &str, fee: i64, no: &str, code: &str, media: &str| {
        insert_body(order, card, OA, fee, no, code, media)
    };

    assert_eq!(
        insert(body("ins-1", &card_id, 1250, "11060124", "0000000001", &m)).await,
        72038,
        "not yet authorised"
    );
    assert_eq!(
        insert(body("nope", &card_id, 1250, "11060124", "0000000001", &m)).await,
        72038
    );
    env.sim.authorize_invoice(&url, &payer).await.expect("agree");
    assert_eq!(
        insert(body("ins-1", "pNoSuchCard", 1250, "11060124", "0000000001", &m)).await,
        40073
    );
    assert_eq!(
        insert(body("ins-1", &foreign_card, 1250, "11060124", "0000000001", &m)).await,
        72015
    );
    assert_eq!(
        insert(body("ins-1", &card_id, 1300, "11060124", "0000000001", &m)).await,
        72031,
        "fee ≠ money"
    );
    assert_eq!(
        insert(body("ins-1", &card_id, 1250, "1106012", "0000000001", &m)).await,
        72031
    );
    assert_eq!(
        insert(body("ins-1", &card_id, 1250, "11060124", "000000001X", &m)).await,
        72031
    );
    assert_eq!(
        insert(body("ins-1", &card_id, 1250, "11060124", "0000000001", "1234")).await,
        72040
    );
    let unit_media = media(&env, UNIT).await;
    assert_eq!(
        insert(body("ins-1", &card_id, 1250, "11060124", "0000000001", &unit_media)).await,
        72040,
        "another account's upload"
    );
    let mut shapeless = body("ins-1", &card_id, 1250, "11060124", "0000000001", &m);
    shapeless["card_ext"]["user_card"] = json!({ "fee": 1250 });
    assert_eq!(insert(shapeless).await, 72031);
    // The other platform cannot insert into this order.
    let r = env
        .call(
            UNIT,
            paths::INSERT_BILL,
            &insert_body("ins-1", &foreign_card, OA, 1250, "11060124", "0000000001", &unit_media),
        )
        .await;
    assert_eq!(errcode(&r), 72015);

    assert_eq!(
        insert(body("ins-1", &card_id, 1250, "11060124", "0000000001", &m)).await,
        0
    );
    // One card per order; the PDF was used; the same code + number never twice.
    let m2 = media(&env, OA).await;
    assert_eq!(
        insert(body("ins-1", &card_id, 1250, "11060124", "0000000002", &m2)).await,
        72024
    );
    let url2 = auth_url(&env, OA, &s_pappid, "ins-2", 1250).await;
    env.sim.authorize_invoice(&url2, &payer).await.expect("agree");
    assert_eq!(
        insert(body("ins-2", &card_id, 1250, "11060124", "0000000002", &m)).await,
        72040
    );
    assert_eq!(
        insert(body("ins-2", &card_id, 1250, "11060124", "0000000001", &m2)).await,
        72042
    );
    assert_eq!(
        insert(body("ins-2", &card_id, 1250, "11060124", "0000000002", &m2)).await,
        0
    );
    // rejectinsert after the card went in is too late.
    let r = env
        .call(
            OA,
            paths::REJECT_INSERT,
            &json!({ "s_pappid": s_pappid, "order_id": "ins-2", "reason": "x" }),
        )
        .await;
    assert_eq!(errcode(&r), 72024);
    assert_eq!(env.sim.card_package(OA, &payer).len(), 2);
    env.stop().await;
}

#[tokio::test]
async fn pdf_uploads() {
    let env = Env::start(SimConfig {
        max_pdf_bytes: 1024,
        ..config()
    })
    .await;
    let r = upload(&env, OA, PDF).await;
    assert_eq!(errcode(&r), 0, "{r}");
    assert!(r["s_media_id"].as_str().is_some_and(|m| m.len() == 19));
    assert_eq!(errcode(&upload(&env, OA, b"<html>not a pdf</html>").await), 72040);
    assert_eq!(errcode(&upload(&env, OA, b"").await), 72043);
    let mut big = PDF.to_vec();
    big.resize(1025, b' ');
    assert_eq!(errcode(&upload(&env, OA, &big).await), 72043);
    // No `pdf` field at all.
    let token = env.token(OA).await;
    let r: Value = env
        .http
        .post(env.url(&format!("{}?access_token={token}", paths::SET_PDF)))
        .json(&json!({ "pdf": "base64?" }))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(errcode(&r), 41005);
    // The recorded call keeps the upload's shape, not its bytes.
    let calls = env.sim.calls_to(paths::SET_PDF);
    assert_eq!(calls[0].body["multipart"][0]["name"], "pdf");
    assert_eq!(calls[0].body["multipart"][0]["bytes"], PDF.len());

    // An upload is usable for three days.
    let card_id = template(&env, OA).await;
    let s_pappid = env.sim.s_pappid(OA);
    let url = auth_url(&env, OA, &s_pappid, "pdf-1", 1250).await;
    env.sim.authorize_invoice(&url, &new_openid()).await.expect("agree");
    let m = media(&env, OA).await;
    env.sim.advance_clock(Duration::from_secs(3 * 86_400 + 1));
    let r = env
        .call(
            OA,
            paths::INSERT_BILL,
            &insert_body("pdf-1", &card_id, OA, 1250, "11060124", "0000000001", &m),
        )
        .await;
    assert_eq!(errcode(&r), 72040);
    env.stop().await;
}

struct Reimbursement {
    env: Env,
    card_id: String,
    payer: String,
    codes: Vec<String>,
    inbox: Inbox,
}

/// Three cards of one payer, the platform listening for status events.
async fn three_cards() -> (Reimbursement, actix_web::dev::ServerHandle) {
    let env = Env::start(fast()).await;
    let inbox = Inbox::success();
    let h = attach(&env, OA, &inbox, None).await;
    let card_id = template(&env, OA).await;
    let payer = new_openid();
    let mut codes = Vec::new();
    for i in 1..=3 {
        codes.push(issue(&env, &card_id, &format!("r-{i}"), &payer, &format!("000000000{i}")).await);
    }
    // The authorisation pushes.
    env.sim.wait_for_pushes(3, Duration::from_secs(5)).await;
    (
        Reimbursement {
            env,
            card_id,
            payer,
            codes,
            inbox,
        },
        h,
    )
}

fn item(card_id: &str, encrypt_code: &str) -> Value {
    json!({ "card_id": card_id, "encrypt_code": encrypt_code })
}

fn update(card_id: &str, encrypt_code: &str, status: &str) -> Value {
    let mut v = item(card_id, encrypt_code);
    v["reimburse_status"] = json!(status);
    v
}

#[tokio::test]
async fn reimbursers_lock_close_and_conflict() {
    let (r, h) = three_cards().await;
    let (env, card_id) = (&r.env, r.card_id.as_str());
    let mine = env
        .sim
        .choose_invoice(REIMB, OA, &r.payer, &[&r.codes[0], &r.codes[1]])
        .expect("choose");
    assert_eq!(mine.len(), 2);
    assert_eq!(mine[0].app_id, OA);
    let theirs = env
        .sim
        .choose_invoice(REIMB2, OA, &r.payer, &[&r.codes[0]])
        .expect("choose");
    let (a, b, a2) = (&mine[0].encrypt_code, &mine[1].encrypt_code, &theirs[0].encrypt_code);

    let info = env.call(REIMB, paths::REIMBURSE_GET_INFO, &item(card_id, a)).await;
    assert_eq!(errcode(&info), 0, "{info}");
    assert_eq!(info["card_id"], card_id);
    assert_eq!(info["payee"], "市第一人民医院");
    assert_eq!(info["user_info"]["fee"], 1250);
    assert_eq!(info["user_info"]["billing_no"], "11060124");
    assert_eq!(info["user_info"]["billing_code"], "0000000001");
    assert_eq!(info["user_info"]["reimburse_status"], "INVOICE_REIMBURSE_INIT");
    let holder_in_reimb = info["openid"].as_str().expect("openid").to_owned();
    assert_eq!(holder_in_reimb, env.sim.openid_in(OA, &r.payer, REIMB));
    let pdf_url = info["user_info"]["pdf_url"].as_str().expect("pdf_url");
    assert_eq!(
        env.browse(pdf_url, None).await.bytes().await.expect("pdf").as_ref(),
        PDF
    );

    // Codes are per reimburser; garbage is invalid.
    assert_eq!(
        errcode(&env.call(REIMB2, paths::REIMBURSE_GET_INFO, &item(card_id, a)).await),
        40078
    );
    assert_eq!(
        errcode(
            &env.call(REIMB, paths::REIMBURSE_GET_INFO, &item(card_id, "garbage"))
                .await
        ),
        72031
    );
    assert_eq!(
        errcode(&env.call(REIMB, paths::REIMBURSE_GET_INFO, &item("pOther", a)).await),
        72031
    );

    let upd = |appid: &'static str, code: String, status: &'static str| {
        let env = &r.env;
        let card_id = card_id.to_owned();
        async move {
            errcode(
                &env.call(appid, paths::REIMBURSE_UPDATE_STATUS, &update(&card_id, &code, status))
                    .await,
            )
        }
    };
    assert_eq!(
        upd(REIMB, a.clone(), "INVOICE_REIMBURSE_CLOSURE").await,
        72039,
        "close needs a lock"
    );
    assert_eq!(upd(REIMB, a.clone(), "INVOICE_REIMBURSE_LOCK").await, 0);
    assert_eq!(
        upd(REIMB, a.clone(), "INVOICE_REIMBURSE_LOCK").await,
        0,
        "the holder may repeat itself"
    );
    assert_eq!(
        upd(REIMB2, a2.clone(), "INVOICE_REIMBURSE_LOCK").await,
        72023,
        "held by another reimburser"
    );
    assert_eq!(upd(REIMB2, a2.clone(), "INVOICE_REIMBURSE_INIT").await, 72023);
    assert_eq!(upd(REIMB, a.clone(), "INVOICE_REIMBURSE_CANCEL").await, 72031);
    assert_eq!(upd(REIMB, a.clone(), "LOCK").await, 72031);
    // The platform cannot reverse what a reimburser holds.
    let cancel =
        |code: &str| json!({ "card_id": card_id, "code": code, "reimburse_status": "INVOICE_REIMBURSE_CANCEL" });
    assert_eq!(
        errcode(&env.call(OA, paths::PLATFORM_UPDATE_STATUS, &cancel(&r.codes[0])).await),
        72023
    );
    assert_eq!(upd(REIMB, a.clone(), "INVOICE_REIMBURSE_CLOSURE").await, 0);
    assert_eq!(
        upd(REIMB, a.clone(), "INVOICE_REIMBURSE_INIT").await,
        72024,
        "closure is final"
    );
    assert_eq!(
        errcode(&env.call(OA, paths::PLATFORM_UPDATE_STATUS, &cancel(&r.codes[0])).await),
        72024
    );
    let closed = env.sim.card(card_id, &r.codes[0]).expect("card");
    assert_eq!(
        (closed.status, closed.lock_holder.as_deref()),
        (CardStatus::Closure, Some(REIMB))
    );

    // Unlock gives the card back to the pool: then another reimburser may lock it.
    assert_eq!(upd(REIMB, b.clone(), "INVOICE_REIMBURSE_LOCK").await, 0);
    assert_eq!(upd(REIMB, b.clone(), "INVOICE_REIMBURSE_INIT").await, 0);
    let b2 = env
        .sim
        .choose_invoice(REIMB2, OA, &r.payer, &[&r.codes[1]])
        .expect("choose")[0]
        .encrypt_code
        .clone();
    assert_eq!(upd(REIMB2, b2.clone(), "INVOICE_REIMBURSE_LOCK").await, 0);
    // Locked by REIMB2: REIMB can no longer pick it, closed cards neither.
    assert_eq!(
        env.sim.choose_invoice(REIMB, OA, &r.payer, &[&r.codes[1]]).err(),
        Some(SimError::CardNotChoosable)
    );
    assert_eq!(
        env.sim.choose_invoice(REIMB, OA, &r.payer, &[&r.codes[0]]).err(),
        Some(SimError::CardNotChoosable)
    );
    assert_eq!(
        env.sim.choose_invoice(REIMB, OA, &r.payer, &["000000000000"]).err(),
        Some(SimError::UnknownCard)
    );

    // Every change (not the repeat) was pushed to the platform as update_invoice_status.
    env.sim.wait_for_pushes(3 + 5, Duration::from_secs(5)).await;
    let statuses: Vec<(String, String)> = r
        .inbox
        .received()
        .iter()
        .filter(|(_, x)| xml_field(x, "Event") == "update_invoice_status")
        .map(|(_, x)| (xml_field(x, "Code").to_owned(), xml_field(x, "Status").to_owned()))
        .collect();
    let c = |i: usize| r.codes[i].clone();
    let expected = vec![
        (c(0), "INVOICE_REIMBURSE_LOCK".to_owned()),
        (c(0), "INVOICE_REIMBURSE_CLOSURE".to_owned()),
        (c(1), "INVOICE_REIMBURSE_LOCK".to_owned()),
        (c(1), "INVOICE_REIMBURSE_INIT".to_owned()),
        (c(1), "INVOICE_REIMBURSE_LOCK".to_owned()),
    ];
    let mut got = statuses.clone();
    got.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(got, want, "{statuses:?}");
    let one = r
        .inbox
        .received()
        .into_iter()
        .find(|(_, x)| xml_field(x, "Event") == "update_invoice_status")
        .expect("an event");
    assert_eq!(xml_field(&one.1, "CardId"), card_id);
    assert_eq!(xml_field(&one.1, "FromUserName"), r.payer);
    r.env.stop().await;
    h.stop(false).await;
}

#[tokio::test]
async fn batch_updates_are_all_or_nothing() {
    let (r, h) = three_cards().await;
    let (env, card_id) = (&r.env, r.card_id.as_str());
    let (status, chosen) = env
        .admin(
            Method::POST,
            "/sim/invoice/choose",
            Some(&json!({ "reimburser_appid": REIMB2, "appid": OA, "openid": r.payer })),
        )
        .await;
    assert_eq!(status, 200);
    let chosen: Vec<(String, String)> = chosen
        .as_array()
        .expect("list")
        .iter()
        .map(|c| {
            (
                c["card_id"].as_str().expect("id").to_owned(),
                c["encrypt_code"].as_str().expect("code").to_owned(),
            )
        })
        .collect();
    assert_eq!(chosen.len(), 3, "every submittable card");
    let list: Vec<Value> = chosen.iter().map(|(c, e)| item(c, e)).collect();
    let holder = env.sim.openid_in(OA, &r.payer, REIMB2);

    let batch = env
        .call(REIMB2, paths::REIMBURSE_GET_BATCH, &json!({ "item_list": list }))
        .await;
    assert_eq!(batch["item_list"].as_array().map(Vec::len), Some(3), "{batch}");
    assert_eq!(
        errcode(
            &env.call(REIMB2, paths::REIMBURSE_GET_BATCH, &json!({ "item_list": [] }))
                .await
        ),
        72031
    );
    let mut with_garbage = list.clone();
    with_garbage.push(item(card_id, "garbage"));
    assert_eq!(
        errcode(
            &env.call(
                REIMB2,
                paths::REIMBURSE_GET_BATCH,
                &json!({ "item_list": with_garbage })
            )
            .await
        ),
        72031
    );

    // Close one card first; a batch lock including it fails and changes nothing.
    let (c0, e0) = &chosen[0];
    assert_eq!(
        errcode(
            &env.call(
                REIMB2,
                paths::REIMBURSE_UPDATE_STATUS,
                &update(c0, e0, "INVOICE_REIMBURSE_LOCK")
            )
            .await
        ),
        0
    );
    assert_eq!(
        errcode(
            &env.call(
                REIMB2,
                paths::REIMBURSE_UPDATE_STATUS,
                &update(c0, e0, "INVOICE_REIMBURSE_CLOSURE")
            )
            .await
        ),
        0
    );
    let batch_lock = |cards: Vec<Value>, openid: &str| json!({ "openid": openid, "reimburse_status": "INVOICE_REIMBURSE_LOCK", "invoice_list": cards });
    let r1 = env
        .call(
            REIMB2,
            paths::REIMBURSE_UPDATE_BATCH,
            &batch_lock(list.clone(), &holder),
        )
        .await;
    assert_eq!(errcode(&r1), 72024, "{r1}");
    let statuses = |env: &Env| {
        let mut s: Vec<CardStatus> = env.sim.card_package(OA, &r.payer).iter().map(|c| c.status).collect();
        s.sort_by_key(|c| c.wire());
        s
    };
    assert_eq!(
        statuses(env),
        vec![CardStatus::Closure, CardStatus::Init, CardStatus::Init],
        "nothing applied"
    );
    // Not the holder's openid, or not the holder at all.
    assert_eq!(
        errcode(
            &env.call(
                REIMB2,
                paths::REIMBURSE_UPDATE_BATCH,
                &batch_lock(list[1..].to_vec(), &r.payer)
            )
            .await
        ),
        72031
    );
    assert_eq!(
        errcode(
            &env.call(REIMB2, paths::REIMBURSE_UPDATE_BATCH, &batch_lock(vec![], &holder))
                .await
        ),
        72031
    );

    // Pushes run in the background: let those of the earlier calls land first.
    let mut pushes_before = env.sim.pushed_events().len();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = env.sim.pushed_events().len();
        if now == pushes_before {
            break;
        }
        pushes_before = now;
    }
    assert_eq!(
        errcode(
            &env.call(
                REIMB2,
                paths::REIMBURSE_UPDATE_BATCH,
                &batch_lock(list[1..].to_vec(), &holder)
            )
            .await
        ),
        0
    );
    assert_eq!(
        statuses(env),
        vec![CardStatus::Closure, CardStatus::Lock, CardStatus::Lock]
    );
    assert!(
        env.sim
            .card_package(OA, &r.payer)
            .iter()
            .filter(|c| c.status == CardStatus::Lock)
            .all(|c| c.lock_holder.as_deref() == Some(REIMB2))
    );
    let pushes = env.sim.wait_for_pushes(pushes_before + 2, Duration::from_secs(5)).await;
    assert_eq!(
        pushes.len(),
        pushes_before + 2,
        "one update_invoice_status per changed card"
    );
    let close_all = json!({ "openid": holder, "reimburse_status": "INVOICE_REIMBURSE_CLOSURE", "invoice_list": list[1..].to_vec() });
    assert_eq!(
        errcode(&env.call(REIMB2, paths::REIMBURSE_UPDATE_BATCH, &close_all).await),
        0
    );
    assert!(
        env.sim
            .card_package(OA, &r.payer)
            .iter()
            .all(|c| c.status == CardStatus::Closure)
    );
    r.env.stop().await;
    h.stop(false).await;
}

#[tokio::test]
async fn platform_reverses_cards_and_busy_is_retryable() {
    let (r, h) = three_cards().await;
    let (env, card_id) = (&r.env, r.card_id.as_str());
    let set = |code: &str, status: &str| json!({ "card_id": card_id, "code": code, "reimburse_status": status });
    assert_eq!(
        errcode(
            &env.call(
                OA,
                paths::PLATFORM_UPDATE_STATUS,
                &set(&r.codes[2], "INVOICE_REIMBURSE_CANCEL")
            )
            .await
        ),
        0
    );
    assert_eq!(
        errcode(
            &env.call(
                OA,
                paths::PLATFORM_UPDATE_STATUS,
                &set(&r.codes[2], "INVOICE_REIMBURSE_CANCEL")
            )
            .await
        ),
        0,
        "repeating a reversal is harmless"
    );
    assert_eq!(
        env.sim.card(card_id, &r.codes[2]).expect("card").status,
        CardStatus::Cancel
    );
    assert_eq!(
        errcode(
            &env.call(
                OA,
                paths::PLATFORM_UPDATE_STATUS,
                &set(&r.codes[2], "INVOICE_REIMBURSE_INIT")
            )
            .await
        ),
        72024
    );
    assert_eq!(
        errcode(
            &env.call(
                UNIT,
                paths::PLATFORM_UPDATE_STATUS,
                &set(&r.codes[1], "INVOICE_REIMBURSE_CANCEL")
            )
            .await
        ),
        72015
    );
    assert_eq!(
        errcode(
            &env.call(
                OA,
                paths::PLATFORM_UPDATE_STATUS,
                &set("000000000000", "INVOICE_REIMBURSE_CANCEL")
            )
            .await
        ),
        72031
    );
    assert_eq!(
        errcode(
            &env.call(
                OA,
                paths::PLATFORM_UPDATE_STATUS,
                &json!({ "card_id": "pNope", "code": r.codes[1], "reimburse_status": "INVOICE_REIMBURSE_CANCEL" })
            )
            .await
        ),
        40073
    );
    // A cancelled card is shown as such and cannot be chosen.
    let page = env
        .browse(&format!("/sim/cardpackage/page?appid={OA}&openid={}", r.payer), None)
        .await
        .text()
        .await
        .expect("html");
    assert!(page.contains("已作废"), "{page}");
    assert_eq!(
        env.sim.choose_invoice(REIMB, OA, &r.payer, &[&r.codes[2]]).err(),
        Some(SimError::CardNotChoosable)
    );
    // Platform status changes are not reimburser changes: no update_invoice_status.
    assert!(
        r.inbox
            .received()
            .iter()
            .all(|(_, x)| xml_field(x, "Event") != "update_invoice_status")
    );

    // WeChat's 72036 (busy) through a fault: the card is untouched.
    let chosen = env
        .sim
        .choose_invoice(REIMB, OA, &r.payer, &[&r.codes[1]])
        .expect("choose");
    env.sim.set_faults(
        FaultScope::Path(paths::REIMBURSE_UPDATE_STATUS.into()),
        Faults::error_rate_with(1.0, 72036, "invoice is busy, try again please"),
    );
    let busy = env
        .call(
            REIMB,
            paths::REIMBURSE_UPDATE_STATUS,
            &update(card_id, &chosen[0].encrypt_code, "INVOICE_REIMBURSE_LOCK"),
        )
        .await;
    assert_eq!(errcode(&busy), 72036);
    assert_eq!(
        env.sim.card(card_id, &r.codes[1]).expect("card").status,
        CardStatus::Init
    );
    env.sim.clear_faults();
    let (status, orders) = env.admin(Method::GET, "/sim/invoice/orders", None).await;
    assert_eq!(status, 200);
    assert_eq!(orders.as_array().map(Vec::len), Some(3));
    let (_, templates) = env.admin(Method::GET, "/sim/invoice/templates", None).await;
    assert_eq!(templates[0]["card_id"], card_id);
    let (status, _) = env.admin(Method::GET, "/sim/cardpackage?appid=wxnope", None).await;
    assert_eq!(status, 404);
    r.env.stop().await;
    h.stop(false).await;
}
