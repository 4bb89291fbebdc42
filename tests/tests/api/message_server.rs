//! Our message server accepts only WeChat: signatures, a time window, replays bound
//! to their first body, secure mode where a key is configured, and every event
//! scoped to its own app's deliveries.

use piaojia_tests::both_modes;
use piaojia_tests::harness::{Issuer, Mode, TestApp, TestConfig, eventually, problem};
use piaojia_tests::samples::{self, BATCH};
use serde_json::Value;

const OA: &str = "wx0a1b2c3d4e5f6a7b";
const OTHER_OA: &str = "wx7b6a5f4e3d2c1b0a";
const TOKEN: &str = "msgtoken123";
const OTHER_TOKEN: &str = "othertoken456";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";

/// An official-account channel of `agency`, plain mode unless `aes_key` is given.
async fn channel(app: &TestApp, agency: &str, appid: &str, token: &str, aes_key: Option<&str>) {
    piaojia_gateway::provisioning::set_channel(
        app.store.as_ref(),
        &app.keyring,
        piaojia_gateway::provisioning::ChannelSpec {
            agency_code: Some(agency.to_owned()),
            kind: "wechat_template".into(),
            wechat_app_id: appid.into(),
            secret: format!("secret-of-{appid}"),
            template_id: "TMPL-1".into(),
            fields: serde_json::Map::new(),
            page: None,
            message_token: Some(token.into()),
            encoding_aes_key: aes_key.map(str::to_owned),
            enabled: true,
            long_term: false,
        },
    )
    .await
    .expect("channel");
}

fn job_finish(appid: &str, msg_id: &str, status: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[gh_{appid}]]></ToUserName><FromUserName><![CDATA[o-user]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>{msg_id}</MsgID>\
         <Status><![CDATA[{status}]]></Status></xml>",
        chrono::Utc::now().timestamp()
    )
}

/// Posts a plain-mode event signed with `token` at `ts`.
async fn post_plain(app: &TestApp, appid: &str, token: &str, ts: i64, nonce: &str, xml: &str) -> reqwest::Response {
    let ts = ts.to_string();
    let sig = piaojia_wechat::msgcrypt::signature(token, &ts, nonce);
    app.client
        .post(format!(
            "{}/v1/wechat/{appid}/events?signature={sig}&timestamp={ts}&nonce={nonce}",
            app.address
        ))
        .header("content-type", "text/xml")
        .body(xml.to_owned())
        .send()
        .await
        .expect("sent")
}

async fn delivered_template(app: &TestApp, issuer: &Issuer, n: u64) -> Value {
    let mut r = samples::outpatient(n);
    r["openID"] = piaojia_wechat_sim::new_openid().into();
    assert_eq!(app.push(issuer, &r).await.status().as_u16(), 201);
    eventually(10, || async move {
        let r: Value = app
            .signed(issuer, "GET", &format!("/v1/receipts/{BATCH}/{n:010}"), None)
            .await
            .json()
            .await
            .ok()?;
        (r["deliveries"][0]["status"] == "delivered").then(|| r["deliveries"][0].clone())
    })
    .await
}

async fn status_of(app: &TestApp, id: &str) -> Value {
    let list: Value = app
        .ops("GET", "/v1/ops/deliveries?channel=wechat_template", None)
        .await
        .json()
        .await
        .expect("json");
    list.as_array()
        .expect("deliveries")
        .iter()
        .find(|d| d["id"] == id)
        .expect("the delivery")["status"]
        .clone()
}

both_modes!(only_wechat_gets_in, |mode: Mode| async move {
    let app = TestConfig::new(mode).await.spawn().await;
    let sim = app.sim.clone().expect("sandbox simulator");
    let issuer = app.issuer().await;
    channel(&app, &issuer.agency_code, OA, TOKEN, None).await;
    sim.add_app(piaojia_wechat_sim::SimApp::new(
        OA,
        &format!("secret-of-{OA}"),
        piaojia_wechat_sim::AppKind::OfficialAccount,
    ));
    let delivery = delivered_template(&app, &issuer, 1).await;
    let msg_id = delivery["providerRef"]
        .as_str()
        .expect("the template's msgid")
        .to_owned();
    let now = chrono::Utc::now().timestamp();

    // Another agency's account, with a token of its own.
    app.create_agency("12110000400000002B", &[]).await;
    channel(&app, "12110000400000002B", OTHER_OA, OTHER_TOKEN, None).await;

    // A stale timestamp is refused, however valid its signature.
    let failed = job_finish(OA, &msg_id, "failed:user block");
    let stale = post_plain(&app, OA, TOKEN, now - 3600, "stale0001", &failed).await;
    assert_eq!(problem(stale, 403).await["code"], "stale_timestamp");
    // Another app's token cannot touch this app's delivery.
    let foreign = post_plain(&app, OTHER_OA, OTHER_TOKEN, now, "foreign001", &failed).await;
    assert_eq!(foreign.status().as_u16(), 200, "answered like any event of that app");
    let id = delivery["id"].as_str().expect("id").to_owned();
    // Events are handled after their acknowledgement: give it time to (not) happen.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(status_of(&app, &id).await, "delivered");

    // WeChat's report through the right app: the delivery turns failed once.
    let first = post_plain(&app, OA, TOKEN, now, "nonce00001", &failed).await;
    assert_eq!(first.text().await.expect("text"), "success");
    eventually(10, || async { (status_of(&app, &id).await == "failed").then_some(()) }).await;
    // WeChat's retry (same timestamp, nonce and body) is answered, not refused.
    let retry = post_plain(&app, OA, TOKEN, now, "nonce00001", &failed).await;
    assert_eq!(retry.text().await.expect("text"), "success");
    // The same timestamp and nonce with another body is a replay.
    let forged = job_finish(OA, "999999999", "failed:user block");
    let replay = post_plain(&app, OA, TOKEN, now, "nonce00001", &forged).await;
    assert_eq!(problem(replay, 403).await["code"], "replayed");
    // A report can never revive a failed delivery.
    let success = job_finish(OA, &msg_id, "success");
    assert_eq!(
        post_plain(&app, OA, TOKEN, now, "nonce00002", &success)
            .await
            .status()
            .as_u16(),
        200
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(status_of(&app, &id).await, "failed");

    // The URL check's signature, once spent, cannot carry a POST body.
    let verify_sig = piaojia_wechat::msgcrypt::signature(TOKEN, &now.to_string(), "verify0001");
    let verified = app
        .get(&format!(
            "/v1/wechat/{OA}/events?signature={verify_sig}&timestamp={now}&nonce=verify0001&echostr=hi"
        ))
        .await;
    assert_eq!(verified.text().await.expect("text"), "hi");
    let riding = post_plain(&app, OA, TOKEN, now, "verify0001", &failed).await;
    assert_eq!(problem(riding, 403).await["code"], "replayed");

    // An account with an EncodingAESKey accepts secure mode only.
    channel(&app, &issuer.agency_code, OA, TOKEN, Some(AES_KEY)).await;
    let plain = post_plain(&app, OA, TOKEN, now, "nonce00003", &failed).await;
    assert_eq!(problem(plain, 403).await["code"], "secure_mode_required");
});

/// The events kept in `appid`'s inbox, oldest first.
async fn inbox(app: &TestApp, appid: &str) -> Vec<piaojia_store::InboxEvent> {
    app.store.inbox_events(appid).await.expect("inbox")
}

// An event acknowledged is an event kept: recorded by a gateway that never handled
// it (its worker off, then the gateway gone), or claimed by a gateway that died
// handling it, it is handled once by the gateways that come after, on the same
// store; two of them never both take it, and WeChat's retries stay de-duplicated.
both_modes!(kept_events_survive_their_gateway, |mode: Mode| async move {
    let config = TestConfig::new(mode).await;
    let mut first = config.clone();
    first.set("PIAOJIA_WECHAT__INBOX_WORKER", "false");
    let a = first.spawn().await;
    let sim = a.sim.clone().expect("sandbox simulator");
    let issuer = a.issuer().await;
    channel(&a, &issuer.agency_code, OA, TOKEN, None).await;
    sim.add_app(piaojia_wechat_sim::SimApp::new(
        OA,
        &format!("secret-of-{OA}"),
        piaojia_wechat_sim::AppKind::OfficialAccount,
    ));
    let d1 = delivered_template(&a, &issuer, 1).await;
    let d2 = delivered_template(&a, &issuer, 2).await;
    let id = |d: &Value| d["id"].as_str().expect("id").to_owned();
    let msg = |d: &Value| d["providerRef"].as_str().expect("the template's msgid").to_owned();
    let now = chrono::Utc::now().timestamp();

    // Event 1 reaches gateway A, which acknowledges it (kept, not handled), and a
    // process claims it and dies before settling (its lease runs 8 s).
    let ev1 = job_finish(OA, &msg(&d1), "failed:user block");
    let r = post_plain(&a, OA, TOKEN, now, "keep000001", &ev1).await;
    assert_eq!(r.text().await.expect("text"), "success");
    let lease = chrono::TimeDelta::seconds(8);
    let claimed = a
        .store
        .claim_inbox_events(
            "crashed-gateway",
            piaojia_store::Timestamp::now(),
            (chrono::Utc::now() + lease).into(),
            10,
        )
        .await
        .expect("claimed");
    assert_eq!(claimed.len(), 1);
    // Event 2 reaches A too, and its retry (same timestamp, nonce, body) keeps nothing new.
    let ev2 = job_finish(OA, &msg(&d2), "failed:system failed");
    for _ in 0..2 {
        let r = post_plain(&a, OA, TOKEN, now, "keep000002", &ev2).await;
        assert_eq!(r.text().await.expect("text"), "success");
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let kept = inbox(&a, OA).await;
    assert_eq!(kept.len(), 2, "one row per event: {kept:?}");
    assert!(kept.iter().all(|e| e.state == "pending"));
    assert_eq!(status_of(&a, &id(&d1)).await, "delivered", "not handled yet");
    assert_eq!(status_of(&a, &id(&d2)).await, "delivered");
    a.stop().await;

    // Two new gateways on the same store, workers on.
    let b = config.spawn().await;
    let c = config.spawn().await;
    eventually(10, || async {
        (status_of(&b, &id(&d2)).await == "failed").then_some(())
    })
    .await;
    let kept = inbox(&b, OA).await;
    assert_eq!(kept[1].state, "done");
    assert_eq!(kept[1].attempts, 1, "handled by exactly one gateway, once");
    // The dead process's claim is respected until its lease expires …
    assert_eq!(kept[0].state, "pending");
    assert_eq!(kept[0].lease_owner.as_deref(), Some("crashed-gateway"));
    assert_eq!(status_of(&b, &id(&d1)).await, "delivered");
    // … then the event is taken again, and handled once.
    eventually(15, || async {
        (status_of(&c, &id(&d1)).await == "failed").then_some(())
    })
    .await;
    let kept = eventually(5, || async {
        let k = inbox(&b, OA).await;
        k.iter().all(|e| e.state == "done").then_some(k)
    })
    .await;
    assert_eq!(kept[0].attempts, 2, "the dead claim, then one more");
    assert!(kept[0].handled_at.is_some());

    // WeChat's late retries of both, to either gateway, keep and handle nothing again.
    for (gw, nonce, ev) in [(&b, "keep000001", &ev1), (&c, "keep000002", &ev2)] {
        let r = post_plain(gw, OA, TOKEN, now, nonce, ev).await;
        assert_eq!(r.text().await.expect("text"), "success");
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let again = inbox(&b, OA).await;
    assert_eq!(again, kept, "nothing kept or handled twice");
    b.stop().await;
    c.stop().await;
});
