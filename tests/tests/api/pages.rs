//! The official account's pages (H5) and WeChat's own channel, end to end against
//! the simulator: pay-then-push (a receipt with the payer's openid is announced,
//! collected into their wallet before they register, and opens through web
//! OAuth; a reversal is announced and shown), the paper QR (check code), the
//! kiosk QR (qrcode/create, scanned by a new follower), and what strangers get.

use std::time::Duration;

use piaojia_core::pii::purpose;
use piaojia_gateway::provisioning;
use piaojia_store::Timestamp;
use piaojia_store::pages::NewScene;
use piaojia_tests::both_modes;
use piaojia_tests::browser::Browser;
use piaojia_tests::harness::{Issuer, Mode, TestApp, eventually_named, problem, spawn_app};
use piaojia_tests::samples::{self, BATCH};
use piaojia_wechat_sim::{MessageServer, SentTemplateMessage, SimApp};
use serde_json::{Value, json};

pub const OA: &str = "wxpagesofficial001";
const TOKEN: &str = "pages-message-token";

/// The agency's official account, with its message server in the simulator.
pub async fn official_account(app: &TestApp, agency_code: &str) {
    let secret = format!("secret-of-{OA}");
    provisioning::set_channel(
        app.store.as_ref(),
        &app.keyring,
        provisioning::ChannelSpec {
            agency_code: Some(agency_code.to_owned()),
            kind: "wechat_template".to_owned(),
            wechat_app_id: OA.to_owned(),
            secret: secret.clone(),
            template_id: "tpl-receipt".to_owned(),
            fields: serde_json::Map::new(),
            page: None,
            message_token: Some(TOKEN.to_owned()),
            encoding_aes_key: None,
            enabled: true,
            long_term: false,
        },
    )
    .await
    .expect("channel set");
    let sim = app.sim.as_ref().expect("sandbox");
    let mut oa = SimApp::official_account(OA, &secret);
    oa.name = Some("示例医院服务号".to_owned());
    oa.message_server = Some(MessageServer {
        url: format!("{}/v1/wechat/{OA}/events", app.address),
        token: TOKEN.to_owned(),
        encoding_aes_key: None,
    });
    sim.add_app(oa);
}

/// An agency with an issuer and an official account.
pub async fn hospital(app: &TestApp) -> Issuer {
    let issuer = app.issuer().await;
    official_account(app, &issuer.agency_code).await;
    issuer
}

pub fn receipt_url(app: &TestApp, receipt_id: &str) -> String {
    format!("{}/h5/{OA}/receipts/{receipt_id}", app.address)
}

pub async fn template_to(app: &TestApp, openid: &str, n: usize) -> Vec<SentTemplateMessage> {
    let sim = app.sim.as_ref().expect("sandbox");
    eventually_named(10, "template messages", || async {
        let sent: Vec<_> = sim
            .sent_template_messages()
            .into_iter()
            .filter(|m| m.touser == openid)
            .collect();
        (sent.len() >= n).then_some(sent)
    })
    .await
}

fn templates_to(app: &TestApp, openid: &str) -> usize {
    app.sim
        .as_ref()
        .expect("sandbox")
        .sent_template_messages()
        .iter()
        .filter(|m| m.touser == openid)
        .count()
}

pub async fn push(app: &TestApp, issuer: &Issuer, receipt: &Value) -> Value {
    let resp = app.push(issuer, receipt).await;
    assert_eq!(resp.status().as_u16(), 201, "push");
    resp.json().await.expect("json")
}

async fn interfaces(app: &TestApp) -> Value {
    app.ops("GET", "/v1/ops/interfaces", None)
        .await
        .json()
        .await
        .expect("json")
}

fn tracks(interfaces: &Value, key: &str) -> bool {
    interfaces["outbound"]
        .as_array()
        .expect("list")
        .iter()
        .any(|i| i["key"] == key && i["last5m"]["attempts"].as_i64().unwrap_or(0) >= 1)
}

// Pay-then-push: the openid's receipt is announced by a template message linking
// its page, is in that openid's wallet before any registration, opens through
// silent web OAuth with a safe session cookie, and stays the payer's alone; its
// reversal is announced and shown.
both_modes!(pay_then_push_opens_the_receipt_page, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = hospital(&app).await;
    let payer = piaojia_wechat_sim::new_openid();
    let mut r = samples::outpatient(1);
    r["openID"] = payer.clone().into();
    let created = push(&app, &issuer, &r).await;
    let id = created["id"].as_str().expect("id").to_owned();

    let sent = template_to(&app, &payer, 1).await;
    assert_eq!(sent[0].url.as_deref(), Some(receipt_url(&app, &id).as_str()));
    assert_eq!(sent[0].data["phrase5"]["value"], "已开具");

    let mut phone = Browser::of_wechat_user(OA, &payer);
    let page = phone.get(&receipt_url(&app, &id)).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.url, receipt_url(&app, &id), "back on the receipt after OAuth");
    for seen in [
        "¥128.50",
        "已开具",
        "未报销",
        "西药费",
        "阿莫西林胶囊",
        "统筹基金支付",
        "¥60.00",
        "张*丰",
        "收入微信卡包",
    ] {
        assert!(page.body.contains(seen), "{seen} missing: {}", page.body);
    }
    assert!(!page.body.contains("<script"), "no script on the pages");
    let session = page
        .set_cookies
        .iter()
        .find(|c| c.starts_with("pj_h5="))
        .expect("a session cookie");
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", &format!("Path=/h5/{OA}")] {
        assert!(session.contains(attr), "{attr} missing: {session}");
    }
    let csp = page.header("content-security-policy");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("style-src 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.header("x-frame-options"), "DENY");
    let css = phone.get(&format!("{}/h5/static/h5.css", app.address)).await;
    assert_eq!(css.status, 200);
    assert!(css.header("content-type").starts_with("text/css"));

    // The list, with the wallet's filters.
    let list = phone.get(&format!("{}/h5/{OA}/receipts", app.address)).await;
    assert_eq!(list.status, 200);
    assert!(
        list.body.contains("0000000001") && list.body.contains("示例市第一人民医院"),
        "{}",
        list.body
    );
    let reversed_only = phone
        .get(&format!("{}/h5/{OA}/receipts?state=reversed", app.address))
        .await;
    assert!(!reversed_only.body.contains("0000000001"));
    assert!(reversed_only.body.contains("暂无票据"));
    let by_text = phone
        .get(&format!(
            "{}/h5/{OA}/receipts?q=%E8%A1%80%E5%B8%B8%E8%A7%84",
            app.address
        ))
        .await;
    assert!(by_text.body.contains("0000000001"), "found by an item's name");

    // Another WeChat user opening the same link sees nothing of it.
    let stranger = piaojia_wechat_sim::new_openid();
    let mut other = Browser::of_wechat_user(OA, &stranger);
    let denied = other.get(&receipt_url(&app, &id)).await;
    assert_eq!(denied.status, 404);
    assert!(denied.body.contains("未找到票据"));
    assert!(!denied.body.contains("128.50") && !denied.body.contains("张*丰"));
    let their_list = other.get(&format!("{}/h5/{OA}/receipts", app.address)).await;
    assert!(!their_list.body.contains("0000000001"));

    // The reversal is announced the same way, and the page shows it.
    let resp = app
        .signed(
            &issuer,
            "POST",
            &format!("/v1/receipts/{BATCH}/0000000001/reversal"),
            Some(
                &json!({ "redBillBatchCode": BATCH, "redBillNo": "0000009001", "redRandom": "9f8e7d",
                "reversedAt": "2026-11-23T10:00:00+08:00", "reason": "患者退费" }),
            ),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 201);
    let sent = template_to(&app, &payer, 2).await;
    assert_eq!(sent[1].data["phrase5"]["value"], "已冲红");
    assert_eq!(sent[1].url.as_deref(), Some(receipt_url(&app, &id).as_str()));
    let page = phone.get(&receipt_url(&app, &id)).await;
    assert!(page.body.contains("已冲红") && page.body.contains("0000009001") && page.body.contains("患者退费"));
    assert!(
        !page.body.contains("收入微信卡包"),
        "a reversed receipt is not offered to the card package"
    );

    // OAuth code exchanges are tracked per interface.
    assert!(
        tracks(&interfaces(&app).await, &format!("wechat:{OA}:oauth2_access_token")),
        "oauth tracked"
    );
});

/// The bill numbers in a mini-program payer's wallet, sorted.
async fn wallet_bills(app: &TestApp, token: &str) -> Vec<String> {
    let page: Value = app
        .mp("GET", "/v1/mp/receipts", token, None)
        .await
        .json()
        .await
        .expect("json");
    let mut bills: Vec<String> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["billNo"].as_str().expect("billNo").to_owned())
        .collect();
    bills.sort();
    bills
}

// The openid's wallet and a mini-program's become one when web OAuth reports the
// unionid the mini-program sign-in holds: what was pushed before and after is in
// both, and the account's pages still show it.
both_modes!(
    unionid_merges_the_openid_wallet_into_the_mini_program_payer,
    |mode: Mode| async move {
        const WALLET: &str = "wxmergewallet0001";
        let app = spawn_app(mode).await;
        let issuer = hospital(&app).await;
        app.platform_wallet(WALLET, "tpl-wallet-merge", false).await;
        let sim = app.sim.as_ref().expect("sandbox");
        let oa_openid = piaojia_wechat_sim::new_openid();
        let mp_openid = piaojia_wechat_sim::new_openid();
        let unionid = format!("u-{}", piaojia_wechat_sim::new_openid());

        let mut r = samples::outpatient(1);
        r["openID"] = oa_openid.clone().into();
        push(&app, &issuer, &r).await;
        let session = app.mp_login(WALLET, &mp_openid, Some(&unionid)).await;
        let token = session["accessToken"].as_str().expect("token").to_owned();
        assert!(wallet_bills(&app, &token).await.is_empty(), "two payers so far");

        // The official account is bound to the same open platform: its OAuth now
        // reports the unionid, and the two payers become one.
        sim.bind_unionid(OA, &oa_openid, &unionid);
        let mut phone = Browser::of_wechat_user(OA, &oa_openid);
        let list = phone.get(&format!("{}/h5/{OA}/receipts", app.address)).await;
        assert_eq!(list.status, 200, "{}", list.body);
        assert!(list.body.contains("0000000001"), "{}", list.body);
        assert_eq!(
            wallet_bills(&app, &token).await,
            ["0000000001"],
            "merged into the mini-program's payer"
        );

        // Later pushes to the openid reach the one wallet.
        let mut r = samples::outpatient(2);
        r["openID"] = oa_openid.clone().into();
        push(&app, &issuer, &r).await;
        assert_eq!(wallet_bills(&app, &token).await, ["0000000001", "0000000002"]);
        let list = phone.get(&format!("{}/h5/{OA}/receipts", app.address)).await;
        assert!(list.body.contains("0000000002"), "{}", list.body);
        // Signing in again changes nothing.
        let again = app.mp_login(WALLET, &mp_openid, Some(&unionid)).await;
        let again = again["accessToken"].as_str().expect("token");
        assert_eq!(wallet_bills(&app, again).await, ["0000000001", "0000000002"]);
    }
);

// Every failure is a page, not JSON, and reveals nothing.
both_modes!(failures_are_error_pages, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    hospital(&app).await;
    let mut b = Browser::new();
    // A callback not started by this browser (login CSRF) is refused.
    let forged = b
        .get(&format!("{}/h5/{OA}/oauth?code=abc&state=forged", app.address))
        .await;
    assert_eq!(forged.status, 400);
    assert!(forged.body.contains("登录已失效"));
    assert!(forged.header("content-type").starts_with("text/html"));
    assert!(!forged.set_cookies.iter().any(|c| c.starts_with("pj_h5=")));
    // Not an account of ours.
    let unknown = b.get(&format!("{}/h5/wxnotours000000000/receipts", app.address)).await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.body.contains("公众号未开通"));
    // No such page.
    let missing = b.get(&format!("{}/h5/{OA}/nothing/here", app.address)).await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("页面不存在"));
    // Not signed in: sent to WeChat's authorize page with snsapi_base.
    let (resp, cookies) = b
        .hop(reqwest::Method::GET, &format!("{}/h5/{OA}/receipts", app.address), None)
        .await;
    assert_eq!(resp.status().as_u16(), 302);
    let location = resp.headers()["location"].to_str().expect("location").to_owned();
    assert!(location.contains("/connect/oauth2/authorize?appid=") && location.contains("scope=snsapi_base"));
    assert!(location.ends_with("#wechat_redirect"));
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("pj_h5_oauth=") && c.contains("HttpOnly"))
    );
    // WeChat refusing the code (a code of another app, say) is an error page.
    let payer = piaojia_wechat_sim::new_openid();
    let mut phone = Browser::of_wechat_user(OA, &payer);
    let (start, _) = phone
        .hop(reqwest::Method::GET, &format!("{}/h5/{OA}/receipts", app.address), None)
        .await;
    let state_param = url::Url::parse(start.headers()["location"].to_str().expect("location"))
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("state");
    let bad = phone
        .get(&format!(
            "{}/h5/{OA}/oauth?code=notacode&state={state_param}",
            app.address
        ))
        .await;
    assert_eq!(bad.status, 401);
    assert!(bad.body.contains("微信授权失败"));
    // The API keeps answering problem+json.
    problem(app.get("/v1/nothing").await, 404).await;
});

// Scan to view (a): the paper receipt's QR (its check code) opens that receipt
// through OAuth with "加入我的票夹", a CSRF-protected form.
both_modes!(paper_qr_adds_the_receipt, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = hospital(&app).await;
    let r = samples::outpatient(7);
    let created = push(&app, &issuer, &r).await;
    let id = created["id"].as_str().expect("id").to_owned();
    let random = r["random"].as_str().expect("random").to_owned();
    let payer = piaojia_wechat_sim::new_openid();
    let mut phone = Browser::of_wechat_user(OA, &payer);
    let paper = format!(
        "{}/h5/{OA}/paper?billBatchCode={BATCH}&billNo=0000000007&random={random}",
        app.address
    );
    let page = phone.get(&paper).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("¥128.50") && page.body.contains("加入我的票夹"));
    let csrf = page.hidden("csrf").expect("a CSRF token in the form");

    // Without the token (a cross-site form), nothing is added.
    let forged = phone
        .post_form(
            &format!("{}/h5/{OA}/wallet", app.address),
            &[("billBatchCode", BATCH), ("billNo", "0000000007"), ("random", &random)],
        )
        .await;
    assert_eq!(forged.status, 403);
    assert!(forged.body.contains("页面已过期"));
    let list = phone.get(&format!("{}/h5/{OA}/receipts", app.address)).await;
    assert!(!list.body.contains("0000000007"));

    let added = phone
        .post_form(
            &format!("{}/h5/{OA}/wallet", app.address),
            &[
                ("csrf", &csrf),
                ("billBatchCode", BATCH),
                ("billNo", "0000000007"),
                ("random", &random),
            ],
        )
        .await;
    assert_eq!(added.status, 200, "{}", added.body);
    assert!(added.url.starts_with(&receipt_url(&app, &id)));
    assert!(added.body.contains("已加入您的票夹"));
    let list = phone.get(&format!("{}/h5/{OA}/receipts", app.address)).await;
    assert!(list.body.contains("0000000007"));
    let again = phone.get(&paper).await;
    assert!(again.body.contains("已在您的票夹中") && !again.body.contains("加入我的票夹"));

    // A wrong check code proves nothing and says nothing.
    let mut other = Browser::of_wechat_user(OA, &piaojia_wechat_sim::new_openid());
    let wrong = other
        .get(&format!(
            "{}/h5/{OA}/paper?billBatchCode={BATCH}&billNo=0000000007&random=zzzzzz",
            app.address
        ))
        .await;
    assert_eq!(wrong.status, 404);
    assert!(wrong.body.contains("无法核对") && !wrong.body.contains("128.50"));
    // The issuer platform's own QR payload works too.
    let qr = format!("https://verify.example.gov.cn/pj?billBatchCode={BATCH}&billNo=0000000007&random={random}");
    let by_qr = other
        .get(&format!(
            "{}/h5/{OA}/paper?qr={}",
            app.address,
            url::form_urlencoded::byte_serialize(qr.as_bytes()).collect::<String>()
        ))
        .await;
    assert_eq!(by_qr.status, 200);
    assert!(by_qr.body.contains("加入我的票夹"));
});

// Scan to view (b): an issuer's temporary QR code for a receipt (qrcode/create),
// scanned by a new follower, delivers and announces the receipt to them alone;
// a second scanner, a forged scene and an expired one get nothing.
both_modes!(kiosk_qr_delivers_to_the_scanner, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = hospital(&app).await;
    let sim = app.sim.as_ref().expect("sandbox");
    let created = push(&app, &issuer, &samples::outpatient(3)).await;
    let id = created["id"].as_str().expect("id").to_owned();
    let path = format!("/v1/receipts/{BATCH}/0000000003/qrcode");
    let resp = app.signed(&issuer, "POST", &path, None).await;
    assert_eq!(resp.status().as_u16(), 201);
    let qr: Value = resp.json().await.expect("json");
    let ticket = qr["ticket"].as_str().expect("ticket");
    assert!(qr["url"].as_str().expect("url").starts_with("http"));
    assert_eq!(qr["expireSeconds"], 600);
    assert_eq!(qr["wechatAppId"], OA);
    assert!(qr["expiresAt"].is_string());
    let png = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        qr["imagePngBase64"].as_str().expect("png"),
    )
    .expect("base64");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let created_qr = sim.calls_to("/cgi-bin/qrcode/create");
    let scene = created_qr[0].body["action_info"]["scene"]["scene_str"]
        .as_str()
        .expect("scene")
        .to_owned();
    assert_eq!(created_qr[0].body["action_name"], "QR_STR_SCENE");
    assert!(
        scene.len() >= 40 && !scene.contains(&id) && !scene.contains("0000000003"),
        "{scene}"
    );

    // A new follower scans it: subscribe with qrscene_.
    let payer = piaojia_wechat_sim::new_openid();
    let event = sim.scan(ticket, &payer).await.expect("scanned");
    assert_eq!(event.event, "subscribe");
    let sent = template_to(&app, &payer, 1).await;
    assert_eq!(sent[0].url.as_deref(), Some(receipt_url(&app, &id).as_str()));
    let mut phone = Browser::of_wechat_user(OA, &payer);
    let page = phone.get(&receipt_url(&app, &id)).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("¥128.50"));
    // Scanning again (now a follower: SCAN) announces nothing more.
    let again = sim.scan(ticket, &payer).await.expect("scanned");
    assert_eq!(again.event, "SCAN");

    // Someone else scanning the same code gets nothing.
    let stranger = piaojia_wechat_sim::new_openid();
    sim.scan(ticket, &stranger).await.expect("scanned");
    // A forged scene and an expired one deliver nothing either.
    let forger = piaojia_wechat_sim::new_openid();
    let original = sim.app(OA).expect("app").original_id;
    let mut forged =
        piaojia_wechat::event::Event::new_event(&original, &forger, chrono::Utc::now().timestamp(), "SCAN");
    forged.event_key = Some(format!("pj{}", "A".repeat(40)));
    sim.push_xml(OA, Some(&forger), &forged.to_xml()).await.expect("pushed");
    let expired_scene = format!("pj{}", "B".repeat(40));
    app.store
        .insert_scene(NewScene {
            scene_hash: app
                .keyring
                .keyed_hash(purpose::hash::QR_SCENE, expired_scene.as_bytes()),
            receipt_id: uuid::Uuid::parse_str(&id).expect("uuid"),
            agency_id: app
                .store
                .agency_by_code(&issuer.agency_code)
                .await
                .expect("agency")
                .expect("agency")
                .id,
            wechat_app_id: OA.to_owned(),
            expires_at: Timestamp::now() - chrono::TimeDelta::seconds(1),
        })
        .await
        .expect("scene");
    let late = piaojia_wechat_sim::new_openid();
    let mut expired = piaojia_wechat::event::Event::new_event(&original, &late, chrono::Utc::now().timestamp(), "SCAN");
    expired.event_key = Some(expired_scene);
    sim.push_xml(OA, Some(&late), &expired.to_xml()).await.expect("pushed");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(templates_to(&app, &payer), 1, "announced once");
    for who in [&stranger, &forger, &late] {
        assert_eq!(templates_to(&app, who), 0, "nothing for {who}");
        let mut b = Browser::of_wechat_user(OA, who);
        let denied = b.get(&receipt_url(&app, &id)).await;
        assert_eq!(denied.status, 404);
        assert!(!denied.body.contains("128.50"));
    }

    // QR creation is tracked per interface; a reversed receipt gets no QR code.
    assert!(tracks(&interfaces(&app).await, &format!("wechat:{OA}:qrcode_create")));
    let resp = app
        .signed(
            &issuer,
            "POST",
            &format!("/v1/receipts/{BATCH}/0000000003/reversal"),
            Some(
                &json!({ "redBillBatchCode": BATCH, "redBillNo": "0000009003", "redRandom": "9f8e7d",
                "reversedAt": "2026-11-23T10:00:00+08:00", "reason": "患者退费" }),
            ),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 201);
    let body = problem(app.signed(&issuer, "POST", &path, None).await, 409).await;
    assert_eq!(body["code"], "receipt_reversed");
    let body = problem(
        app.signed(
            &issuer,
            "POST",
            &format!("/v1/receipts/{BATCH}/0000000099/qrcode"),
            None,
        )
        .await,
        404,
    )
    .await;
    assert_eq!(body["code"], "receipt_not_found");
});

// A payer known by an openid first, then signing in to the mini-program of the
// same account family with the same unionid later, keeps the same wallet; and a
// payer erased takes their page sessions with them.
both_modes!(openid_wallet_is_the_payers_wallet, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = hospital(&app).await;
    let payer = piaojia_wechat_sim::new_openid();
    let mut r = samples::outpatient(11);
    r["openID"] = payer.clone().into();
    let created = push(&app, &issuer, &r).await;
    let id = uuid::Uuid::parse_str(created["id"].as_str().expect("id")).expect("uuid");
    // Collected in the same transaction as the push, before any sign-in.
    let (payer_id, added) = app.store.collect_for_openid(OA, &payer, id).await.expect("collect");
    assert_eq!(added, piaojia_store::wallets::WalletAdd::AlreadyThere);
    let detail = app
        .store
        .wallet_receipt(payer_id, id, None)
        .await
        .expect("wallet")
        .expect("in the openid's wallet");
    assert_eq!(detail.source, piaojia_store::wallets::WalletSource::Collected);
    // A page sign-in finds that same payer.
    let mut phone = Browser::of_wechat_user(OA, &payer);
    assert_eq!(phone.get(&receipt_url(&app, &id.to_string())).await.status, 200);
    let login = app.store.login_payer(OA, &payer, None).await.expect("login");
    assert_eq!(login.payer.id, payer_id);
    assert!(!login.created);
    // Erasure ends the page sessions too.
    assert!(app.store.delete_payer(payer_id).await.expect("erased"));
    let (resp, _) = phone
        .hop(reqwest::Method::GET, &receipt_url(&app, &id.to_string()), None)
        .await;
    assert_eq!(resp.status().as_u16(), 302, "signed out: back to OAuth");
});
