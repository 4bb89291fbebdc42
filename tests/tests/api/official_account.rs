//! The official account's message server, complete, with events the simulator
//! produces: the menu's "我的票据" entry answered with a link (plain and
//! encrypted), follows and unfollows recorded (an unfollowed payer gets no
//! template message), WeChat's retries handled once, oversized and entity-laden
//! XML refused, and the callbacks in the figures.

use piaojia_gateway::provisioning;
use piaojia_tests::both_modes;
use piaojia_tests::harness::{Mode, TestApp, TestConfig, eventually, problem};
use piaojia_tests::samples::{self, BATCH};
use piaojia_wechat::msgcrypt::{self, MsgCrypt};
use piaojia_wechat_sim::{MessageServer, SimApp};
use serde_json::Value;

const OA: &str = "wx1c2d3e4f5a6b7c8d";
const TOKEN: &str = "oatoken7788";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const MENU_KEY: &str = "PIAOJIA_MY_RECEIPTS";

/// The agency's official account with its message server, in piaojia and in the simulator.
pub async fn official_account(app: &TestApp, agency: &str, appid: &str, aes_key: Option<&str>, page: Option<&str>) {
    let secret = format!("secret-of-{appid}");
    provisioning::set_channel(
        app.store.as_ref(),
        &app.keyring,
        provisioning::ChannelSpec {
            agency_code: Some(agency.to_owned()),
            kind: "wechat_template".into(),
            wechat_app_id: appid.into(),
            secret: secret.clone(),
            template_id: "TMPL-OA".into(),
            fields: serde_json::Map::new(),
            page: page.map(str::to_owned),
            message_token: Some(TOKEN.into()),
            encoding_aes_key: aes_key.map(str::to_owned),
            enabled: true,
            long_term: false,
        },
    )
    .await
    .expect("channel");
    let sim = app.sim.as_ref().expect("sandbox simulator");
    sim.add_app(
        SimApp::official_account(appid, &secret).with_message_server(MessageServer {
            url: format!("{}/v1/wechat/{appid}/events", app.address),
            token: TOKEN.into(),
            encoding_aes_key: aes_key.map(str::to_owned),
        }),
    );
}

/// The WeChat client a command would use: the app's sandbox.
pub fn sandbox_client(app: &TestApp) -> piaojia_wechat::client::WechatClient {
    piaojia_wechat::client::WechatClient::new(
        &format!("{}/sandbox/wechat", app.address),
        piaojia_wechat::client::TokenCache::Memory,
    )
    .expect("client")
}

async fn set_menu(app: &TestApp, appid: &str) {
    let settings = app.config.settings();
    let menu = piaojia_gateway::menu::create(
        app.store.as_ref(),
        &app.keyring,
        &sandbox_client(app),
        &settings,
        appid,
        false,
    )
    .await
    .expect("menu/create");
    assert_eq!(menu.to_json()["button"][0]["name"], "我的票据");
    let sim_menu = app
        .sim
        .as_ref()
        .expect("sim")
        .menu(appid)
        .expect("the menu WeChat holds");
    assert_eq!(sim_menu["button"][0]["type"], "click");
    assert_eq!(sim_menu["button"][0]["key"], MENU_KEY);
}

async fn figures(app: &TestApp, path: &str) -> String {
    app.ops("GET", path, None).await.text().await.expect("figures")
}

both_modes!(menu_click_answers_with_the_receipts_link, |mode: Mode| async move {
    let app = TestConfig::new(mode).await.spawn().await;
    let sim = app.sim.clone().expect("sim");
    let issuer = app.issuer().await;
    official_account(&app, &issuer.agency_code, OA, None, None).await;
    set_menu(&app, OA).await;

    let payer = piaojia_wechat_sim::new_openid();
    let pushed = sim.click_menu(OA, &payer, MENU_KEY).await.expect("click");
    assert!(pushed.acknowledged, "{pushed:?}");
    let reply = pushed.reply.expect("a passive reply");
    assert!(reply.valid, "{:?}", reply.error);
    assert_eq!(reply.msg_type.as_deref(), Some("news"));
    assert_eq!(reply.to_user_name.as_deref(), Some(payer.as_str()));
    assert_eq!(reply.articles[0].title, "我的票据");
    assert!(
        reply.articles[0].url.ends_with(&format!("/h5/{OA}/receipts")),
        "{}",
        reply.articles[0].url
    );

    // The callbacks appear in the per-interface and per-event figures.
    let interfaces = figures(&app, "/v1/ops/interfaces").await;
    assert!(
        interfaces.contains(&format!("wechat:{OA}:message_server")),
        "{interfaces}"
    );
    let channels = figures(&app, "/v1/ops/channels").await;
    assert!(channels.contains(&format!("message_server:{OA}:CLICK")), "{channels}");
});

both_modes!(secure_mode_click_reply_decrypts, |mode: Mode| async move {
    let app = TestConfig::new(mode).await.spawn().await;
    let sim = app.sim.clone().expect("sim");
    let issuer = app.issuer().await;
    official_account(&app, &issuer.agency_code, OA, Some(AES_KEY), None).await;
    set_menu(&app, OA).await;

    let payer = piaojia_wechat_sim::new_openid();
    let pushed = sim.click_menu(OA, &payer, MENU_KEY).await.expect("click");
    assert!(pushed.secure && pushed.acknowledged, "{pushed:?}");
    let reply = pushed.reply.expect("a passive reply");
    // The simulator decrypted and checked it with its own implementation …
    assert!(reply.valid, "{:?}", reply.error);
    assert_eq!(reply.signature_valid, Some(true));
    assert!(reply.articles[0].url.ends_with(&format!("/h5/{OA}/receipts")));
    // … and so does the official algorithm (checked against the official vectors).
    let env = piaojia_wechat::event::parse_event(&reply.raw).expect("envelope");
    let (enc, sig) = (env.encrypt.expect("Encrypt"), env.msg_signature.expect("MsgSignature"));
    let (ts, nonce) = (env.time_stamp.expect("TimeStamp"), env.nonce.expect("Nonce"));
    assert!(msgcrypt::verify_msg_signature(TOKEN, &ts, &nonce, &enc, &sig));
    let plain = MsgCrypt::new(TOKEN, AES_KEY, OA)
        .expect("key")
        .decrypt(&enc)
        .expect("decrypts");
    assert!(plain.contains("我的票据"), "{plain}");

    // Plain mode is refused for this account.
    let now = chrono::Utc::now().timestamp().to_string();
    let sig = msgcrypt::signature(TOKEN, &now, "plain0001");
    let resp = app
        .client
        .post(format!(
            "{}/v1/wechat/{OA}/events?signature={sig}&timestamp={now}&nonce=plain0001",
            app.address
        ))
        .body(piaojia_wechat::event::Event::click("gh_x", &payer, 1, MENU_KEY))
        .send()
        .await
        .expect("sent");
    assert_eq!(problem(resp, 403).await["code"], "secure_mode_required");
});

both_modes!(unfollowed_payers_get_no_template_message, |mode: Mode| async move {
    let app = TestConfig::new(mode).await.spawn().await;
    let sim = app.sim.clone().expect("sim");
    let issuer = app.issuer().await;
    official_account(&app, &issuer.agency_code, OA, None, None).await;
    let payer = piaojia_wechat_sim::new_openid();

    let followed = sim.follow(OA, &payer).await.expect("follow");
    assert!(followed.acknowledged);
    eventually(10, || async {
        (app.store.following(OA, &payer).await.expect("store") == Some(true)).then_some(())
    })
    .await;
    let gone = sim.unfollow(OA, &payer).await.expect("unfollow");
    assert!(gone.acknowledged);
    eventually(10, || async {
        (app.store.following(OA, &payer).await.expect("store") == Some(false)).then_some(())
    })
    .await;

    let before = sim.sent_template_count();
    let mut r = samples::outpatient(1);
    r["openID"] = payer.clone().into();
    assert_eq!(app.push(&issuer, &r).await.status().as_u16(), 201);
    let delivery = eventually(10, || async {
        let r: Value = app
            .signed(&issuer, "GET", &format!("/v1/receipts/{BATCH}/0000000001"), None)
            .await
            .json()
            .await
            .ok()?;
        (r["deliveries"][0]["status"] == "failed").then(|| r["deliveries"][0].clone())
    })
    .await;
    assert!(
        delivery["lastError"]
            .as_str()
            .unwrap_or_default()
            .contains("unfollowed"),
        "{delivery}"
    );
    assert_eq!(sim.sent_template_count(), before, "nothing was sent");
});

both_modes!(retries_are_handled_once, |mode: Mode| async move {
    let app = TestConfig::new(mode).await.spawn().await;
    let sim = app.sim.clone().expect("sim");
    let issuer = app.issuer().await;
    official_account(&app, &issuer.agency_code, OA, None, None).await;
    let payer = piaojia_wechat_sim::new_openid();
    let t = chrono::Utc::now().timestamp();
    let gh = sim.app(OA).expect("app").original_id;
    let unsubscribe = piaojia_wechat::event::Event::unsubscribe(&gh, &payer, t);
    let subscribe = piaojia_wechat::event::Event::subscribe(&gh, &payer, t, None, None);

    assert!(
        sim.push_xml(OA, Some(&payer), &unsubscribe)
            .await
            .expect("push")
            .acknowledged
    );
    eventually(10, || async {
        (app.store.following(OA, &payer).await.expect("store") == Some(false)).then_some(())
    })
    .await;
    // Followed again within the same second.
    assert!(
        sim.push_xml(OA, Some(&payer), &subscribe)
            .await
            .expect("push")
            .acknowledged
    );
    eventually(10, || async {
        (app.store.following(OA, &payer).await.expect("store") == Some(true)).then_some(())
    })
    .await;
    // WeChat retrying the first push (new nonce, same event) is answered and ignored.
    let retry = sim.push_xml(OA, Some(&payer), &unsubscribe).await.expect("push");
    assert!(retry.acknowledged);
    assert_eq!(
        retry.attempts.last().and_then(|a| a.body.clone()).as_deref(),
        Some("success")
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.store.following(OA, &payer).await.expect("store"), Some(true));
});

both_modes!(oversized_and_entity_laden_xml_is_refused, |mode: Mode| async move {
    let app = TestConfig::new(mode).await.spawn().await;
    let issuer = app.issuer().await;
    official_account(&app, &issuer.agency_code, OA, None, None).await;
    let post = |nonce: &'static str, body: String| {
        let app = &app;
        async move {
            let now = chrono::Utc::now().timestamp().to_string();
            let sig = msgcrypt::signature(TOKEN, &now, nonce);
            app.client
                .post(format!(
                    "{}/v1/wechat/{OA}/events?signature={sig}&timestamp={now}&nonce={nonce}",
                    app.address
                ))
                .header("content-type", "text/xml")
                .body(body)
                .send()
                .await
                .expect("sent")
        }
    };
    let big = format!("<xml><Content><![CDATA[{}]]></Content></xml>", "x".repeat(300 * 1024));
    assert_eq!(post("big000001", big).await.status().as_u16(), 413);
    let doctype = "<!DOCTYPE xml [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>\
        <xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime>\
        <MsgType>event</MsgType><Event>CLICK</Event><EventKey>&x;</EventKey></xml>"
        .to_owned();
    assert_eq!(
        problem(post("dtd000001", doctype).await, 400).await["code"],
        "invalid_body"
    );
    let entity = "<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime>\
        <MsgType>event</MsgType><Event>CLICK</Event><EventKey>&lol;</EventKey></xml>"
        .to_owned();
    assert_eq!(
        problem(post("ent000001", entity).await, 400).await["code"],
        "invalid_body"
    );
    // A forged signature is refused before anything is read.
    let now = chrono::Utc::now().timestamp();
    let resp = app
        .client
        .post(format!(
            "{}/v1/wechat/{OA}/events?signature=deadbeef&timestamp={now}&nonce=forged001",
            app.address
        ))
        .body("<xml></xml>")
        .send()
        .await
        .expect("sent");
    assert_eq!(problem(resp, 403).await["code"], "bad_signature");
});
