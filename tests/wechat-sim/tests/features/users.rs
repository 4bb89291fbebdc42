use std::time::Duration;

use piaojia_wechat_sim::{SimConfig, SimError, new_openid, paths, secure};
use reqwest::Method;
use serde_json::json;

use crate::common::*;

fn fast() -> SimConfig {
    SimConfig {
        push_timeout: Duration::from_millis(400),
        template_event_delay: Duration::ZERO,
        ..config()
    }
}

async fn qrcode(env: &Env, scene: &str, expire: Option<u64>) -> String {
    let scene = json!({ "scene": { "scene_str": scene } });
    let body = match expire {
        Some(e) => json!({ "expire_seconds": e, "action_name": "QR_STR_SCENE", "action_info": scene }),
        None => json!({ "action_name": "QR_LIMIT_STR_SCENE", "action_info": scene }),
    };
    let r = env.call(OA, paths::QRCODE_CREATE, &body).await;
    r["ticket"].as_str().expect("ticket").to_owned()
}

async fn create_menu(env: &Env) {
    let menu = json!({ "button": [
        { "type": "click", "name": "我的票据", "key": "MY_RECEIPTS" },
        { "name": "更多", "sub_button": [{ "type": "click", "name": "客服", "key": "SUPPORT" }] },
    ] });
    assert_eq!(errcode(&env.call(OA, paths::MENU_CREATE, &menu).await), 0);
}

/// The reply a message server gives to `received` (a plain push): text.
fn text_reply(received: &Received, content: &str) -> String {
    let xml = &received.1;
    format!(
        "<xml><ToUserName><![CDATA[{}]]></ToUserName><FromUserName><![CDATA[{}]]></FromUserName>\
         <CreateTime>1714112445</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{content}]]></Content></xml>",
        xml_field(xml, "FromUserName"),
        xml_field(xml, "ToUserName"),
    )
}

#[tokio::test]
async fn follow_scan_click_unfollow_push_their_events() {
    let env = Env::start(fast()).await;
    let inbox = Inbox::success();
    let h = attach(&env, OA, &inbox, None).await;
    create_menu(&env).await;
    let alice = new_openid();

    let ev = env.sim.follow(OA, &alice).await.expect("follow");
    assert!(ev.delivered && ev.acknowledged);
    assert_eq!(ev.event, "subscribe");
    assert_eq!(ev.openid.as_deref(), Some(alice.as_str()));
    assert_eq!(env.sim.follow(OA, &alice).await.err(), Some(SimError::AlreadyFollowing));

    // A follower scanning gets SCAN; a newcomer gets subscribe with qrscene_.
    let ticket = qrcode(&env, "receipt:42", Some(600)).await;
    env.sim.scan(&ticket, &alice).await.expect("scan");
    let bob = new_openid();
    env.sim.scan(&ticket, &bob).await.expect("scan");
    env.sim.scan(&ticket, &bob).await.expect("second scan");
    env.sim.click_menu(OA, &alice, "SUPPORT").await.expect("click");
    assert_eq!(
        env.sim.click_menu(OA, &alice, "NOT_IN_MENU").await.err(),
        Some(SimError::UnknownMenuKey("NOT_IN_MENU".into()))
    );
    env.sim.unfollow(OA, &alice).await.expect("unfollow");
    assert!(!env.sim.is_following(OA, &alice));
    assert_eq!(env.sim.unfollow(OA, &alice).await.err(), Some(SimError::NotFollowing));
    assert_eq!(
        env.sim.click_menu(OA, &alice, "MY_RECEIPTS").await.err(),
        Some(SimError::NotFollowing)
    );

    let got = inbox.received();
    assert_eq!(got.len(), 6);
    let events: Vec<(&str, Option<&str>)> = got
        .iter()
        .map(|(_, x)| (xml_field(x, "Event"), xml_opt(x, "EventKey")))
        .collect();
    assert_eq!(
        events,
        vec![
            ("subscribe", None),
            ("SCAN", Some("receipt:42")),
            ("subscribe", Some("qrscene_receipt:42")),
            ("SCAN", Some("receipt:42")),
            ("CLICK", Some("SUPPORT")),
            ("unsubscribe", None),
        ]
    );
    for (q, xml) in &got {
        assert_eq!(xml_field(xml, "ToUserName"), OA_GH);
        assert_eq!(xml_field(xml, "MsgType"), "event");
        assert_eq!(
            q["signature"],
            secure::signature(&format!("token-{OA}"), &q["timestamp"], &q["nonce"])
        );
        assert_eq!(xml_field(xml, "FromUserName"), q["openid"]);
    }
    assert_eq!(xml_field(&got[1].1, "Ticket"), ticket);
    assert_eq!(xml_field(&got[2].1, "FromUserName"), bob);

    // Unfollowed users no longer get template messages.
    let tpl = json!({ "touser": alice, "template_id": "T", "data": { "thing1": { "value": "票据" } } });
    assert_eq!(errcode(&env.call(OA, paths::TEMPLATE_SEND, &tpl).await), 43004);
    // Following again works, and template messages reach them again.
    env.sim.follow(OA, &alice).await.expect("follow again");
    assert_eq!(errcode(&env.call(OA, paths::TEMPLATE_SEND, &tpl).await), 0);
    env.stop().await;
    h.stop(false).await;
}

#[tokio::test]
async fn scans_honour_ticket_expiry_and_errors() {
    let env = Env::start(fast()).await;
    let inbox = Inbox::success();
    let h = attach(&env, OA, &inbox, None).await;
    let temporary = qrcode(&env, "t", Some(60)).await;
    let permanent = qrcode(&env, "p", None).await;
    let user = new_openid();
    env.sim.advance_clock(Duration::from_secs(61));
    assert_eq!(
        env.sim.scan(&temporary, &user).await.err(),
        Some(SimError::QrCodeExpired)
    );
    assert_eq!(env.sim.scan("gQnope", &user).await.err(), Some(SimError::UnknownTicket));
    env.sim.advance_clock(Duration::from_secs(86_400 * 365));
    let ev = env
        .sim
        .scan(&permanent, &user)
        .await
        .expect("permanent codes never expire");
    assert!(ev.xml.contains("qrscene_p"));
    assert_eq!(
        env.sim.scan(&permanent, "short").await.err(),
        Some(SimError::InvalidOpenid)
    );
    assert_eq!(
        env.sim.follow("wx0000000000000000", &user).await.err(),
        Some(SimError::UnknownApp("wx0000000000000000".into()))
    );
    env.sim.set_message_server(OA, None).expect("app");
    assert_eq!(
        env.sim.follow(OA, &new_openid()).await.err(),
        Some(SimError::NoMessageServer(OA.into()))
    );
    env.stop().await;
    h.stop(false).await;
}

#[tokio::test]
async fn failed_pushes_are_retried_three_times_with_the_same_event() {
    let env = Env::start(fast()).await;
    // 500, then no answer within the push timeout, then success.
    let inbox = Inbox::answering(|n, _| match n {
        0 => (500, "oops".into(), Duration::ZERO),
        1 => (200, "success".into(), Duration::from_millis(900)),
        _ => (200, "success".into(), Duration::ZERO),
    });
    let h = attach(&env, OA, &inbox, None).await;
    let ev = env.sim.follow(OA, &new_openid()).await.expect("follow");
    assert_eq!(ev.attempts.len(), 3, "{:?}", ev.attempts);
    assert_eq!(ev.attempts[0].http_status, Some(500));
    assert!(ev.attempts[1].error.is_some(), "the slow answer timed out");
    assert_eq!(ev.attempts[2].http_status, Some(200));
    assert!(ev.delivered && ev.acknowledged);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let got = inbox.received();
    assert_eq!(got.len(), 3);
    assert!(
        got.iter().all(|(q, body)| *body == got[0].1 && *q == got[0].0),
        "same event, same CreateTime, same signature"
    );

    // A server that never answers well: three tries in all, then WeChat gives up.
    let broken = Inbox::answering(|_, _| (503, String::new(), Duration::ZERO));
    let h2 = attach(&env, OA, &broken, None).await;
    let ev = env.sim.follow(OA, &new_openid()).await.expect("follow");
    assert_eq!(ev.attempts.len(), 3);
    assert!(!ev.delivered && !ev.acknowledged);
    assert_eq!(broken.received().len(), 3);
    // Every attempt is recorded, and also through the admin API.
    let (_, events) = env.admin(Method::GET, "/sim/events", None).await;
    let last = events.as_array().and_then(|e| e.last()).expect("events").clone();
    assert_eq!(last["attempts"].as_array().map(Vec::len), Some(3));
    assert_eq!(last["delivered"], false);
    env.stop().await;
    h.stop(false).await;
    h2.stop(false).await;
}

#[tokio::test]
async fn plain_passive_replies_are_recorded() {
    let env = Env::start(fast()).await;
    let inbox = Inbox::answering(|_, r| {
        let body = match xml_field(&r.1, "EventKey") {
            "MY_RECEIPTS" => text_reply(r, "您有 2 张新票据"),
            "SUPPORT" => format!(
                "<xml><ToUserName><![CDATA[{}]]></ToUserName><FromUserName><![CDATA[{}]]></FromUserName>\
                 <CreateTime>1</CreateTime><MsgType><![CDATA[news]]></MsgType><ArticleCount>1</ArticleCount>\
                 <Articles><item><Title><![CDATA[客服中心]]></Title><Description><![CDATA[工作日 9:00-17:00]]></Description>\
                 <PicUrl><![CDATA[https://piaojia.example/p.png]]></PicUrl><Url><![CDATA[https://piaojia.example/help?a=1&b=2]]></Url></item></Articles></xml>",
                xml_field(&r.1, "FromUserName"),
                xml_field(&r.1, "ToUserName")
            ),
            // Addressed to someone else: WeChat refuses it.
            _ => text_reply(r, "x").replacen(xml_field(&r.1, "FromUserName"), "oSomeoneElse00000000000000000", 1),
        };
        (200, body, Duration::ZERO)
    });
    let h = attach(&env, OA, &inbox, None).await;
    create_menu(&env).await;
    let user = new_openid();
    let ev = env.sim.click_menu(OA, &user, "MY_RECEIPTS").await.expect("click");
    let reply = ev.reply.clone().expect("a reply");
    assert!(reply.valid && ev.acknowledged, "{reply:?}");
    assert_eq!(ev.attempts.len(), 1);
    assert_eq!(reply.msg_type.as_deref(), Some("text"));
    assert_eq!(reply.content.as_deref(), Some("您有 2 张新票据"));
    assert_eq!(reply.to_user_name.as_deref(), Some(user.as_str()));
    assert_eq!(reply.from_user_name.as_deref(), Some(OA_GH));

    let ev = env.sim.click_menu(OA, &user, "SUPPORT").await.expect("click");
    let reply = ev.reply.clone().expect("a reply");
    assert!(reply.valid, "{reply:?}");
    assert_eq!(reply.articles.len(), 1);
    assert_eq!(reply.articles[0].title, "客服中心");
    assert_eq!(reply.articles[0].url, "https://piaojia.example/help?a=1&b=2");

    // A reply WeChat cannot use counts as no answer: tried three times.
    let ticket = qrcode(&env, "s", Some(60)).await;
    let ev = env.sim.scan(&ticket, &user).await.expect("scan");
    assert_eq!(ev.attempts.len(), 3);
    assert!(ev.delivered && !ev.acknowledged);
    let reply = ev.reply.expect("reply");
    assert!(!reply.valid);
    assert!(
        reply.error.as_deref().expect("why").contains("ToUserName"),
        "{:?}",
        reply.error
    );

    let (_, replies) = env.admin(Method::GET, "/sim/replies", None).await;
    assert_eq!(replies.as_array().map(Vec::len), Some(3));
    assert_eq!(replies[0]["content"], "您有 2 张新票据");
    assert_eq!(env.sim.passive_replies().len(), 3);
    env.stop().await;
    h.stop(false).await;
}

#[tokio::test]
async fn garbage_and_entity_replies_are_refused() {
    let env = Env::start(fast()).await;
    let inbox = Inbox::answering(|n, r| {
        let body = match n {
            0 => "{\"reply\":\"json is not a reply\"}".to_owned(),
            1 => format!("<!DOCTYPE xml [<!ENTITY x \"boom\">]>{}", text_reply(r, "&x;")),
            _ => text_reply(r, "ok"),
        };
        (200, body, Duration::ZERO)
    });
    let h = attach(&env, OA, &inbox, None).await;
    let ev = env.sim.follow(OA, &new_openid()).await.expect("follow");
    assert_eq!(ev.attempts.len(), 3);
    assert!(ev.acknowledged, "the third answer is a valid reply");
    assert_eq!(ev.reply.expect("reply").content.as_deref(), Some("ok"));
    env.stop().await;
    h.stop(false).await;
}

/// A secure-mode message server: decrypts the push and answers with an encrypted, signed text reply.
fn secure_server(sign_right: bool) -> Inbox {
    Inbox::answering(move |_, (q, body)| {
        let token = format!("token-{OA}");
        let encrypt = xml_field(body, "Encrypt");
        assert_eq!(
            q["msg_signature"],
            secure::msg_signature(&token, &q["timestamp"], &q["nonce"], encrypt)
        );
        let (plain, appid) = secure::open(AES_KEY, encrypt).expect("push decrypts");
        assert_eq!(appid, OA);
        let reply = text_reply(&(q.clone(), plain), "安全模式回复");
        let enc = secure::seal(AES_KEY, OA, &reply).expect("seal");
        let (ts, nonce) = ("1714112445", "415670741");
        let sig = if sign_right {
            secure::msg_signature(&token, ts, nonce, &enc)
        } else {
            "0".repeat(40)
        };
        let body = format!(
            "<xml><Encrypt><![CDATA[{enc}]]></Encrypt><MsgSignature><![CDATA[{sig}]]></MsgSignature>\
             <TimeStamp>{ts}</TimeStamp><Nonce><![CDATA[{nonce}]]></Nonce></xml>"
        );
        (200, body, Duration::ZERO)
    })
}

#[tokio::test]
async fn secure_mode_pushes_and_replies() {
    let env = Env::start(fast()).await;
    create_menu(&env).await;
    let inbox = secure_server(true);
    let h = attach(&env, OA, &inbox, Some(AES_KEY)).await;
    let user = new_openid();
    let ev = env.sim.click_menu(OA, &user, "MY_RECEIPTS").await.expect("click");
    assert!(ev.secure);
    let reply = ev.reply.expect("reply");
    assert!(reply.valid, "{reply:?}");
    assert!(reply.secure);
    assert_eq!(reply.signature_valid, Some(true));
    assert_eq!(reply.content.as_deref(), Some("安全模式回复"));
    assert!(
        reply
            .xml
            .expect("plaintext")
            .contains("<MsgType><![CDATA[text]]></MsgType>")
    );
    let (q, envelope) = inbox.received().remove(0);
    assert_eq!(q["encrypt_type"], "aes");
    assert_eq!(xml_field(&envelope, "ToUserName"), OA_GH);

    // A wrongly signed reply is refused (and retried).
    let bad = secure_server(false);
    let h2 = attach(&env, OA, &bad, Some(AES_KEY)).await;
    let ev = env.sim.click_menu(OA, &user, "MY_RECEIPTS").await.expect("click");
    assert_eq!(ev.attempts.len(), 3);
    let reply = ev.reply.expect("reply");
    assert_eq!((reply.valid, reply.signature_valid), (false, Some(false)));

    // In secure mode a plaintext reply is refused too; `success` is always fine.
    let plain = Inbox::answering(|n, (q, body)| {
        let (xml, _) = secure::open(AES_KEY, xml_field(body, "Encrypt")).expect("decrypts");
        let answer = if n == 0 {
            text_reply(&(q.clone(), xml), "明文")
        } else {
            "success".into()
        };
        (200, answer, Duration::ZERO)
    });
    let h3 = attach(&env, OA, &plain, Some(AES_KEY)).await;
    let ev = env.sim.click_menu(OA, &user, "MY_RECEIPTS").await.expect("click");
    assert_eq!(ev.attempts.len(), 2);
    assert!(ev.acknowledged && ev.reply.is_none());
    env.stop().await;
    for h in [h, h2, h3] {
        h.stop(false).await;
    }
}

#[tokio::test]
async fn follower_admin_api() {
    let env = Env::start(fast()).await;
    let inbox = Inbox::success();
    let h = attach(&env, OA, &inbox, None).await;
    create_menu(&env).await;
    let (status, ev) = env
        .admin(Method::POST, "/sim/users/follow", Some(&json!({ "appid": OA })))
        .await;
    assert_eq!(status, 200);
    assert_eq!(ev["event"], "subscribe");
    let user = ev["openid"].as_str().expect("a new user").to_owned();
    let (status, _) = env
        .admin(
            Method::POST,
            "/sim/users/follow",
            Some(&json!({ "appid": OA, "openid": user })),
        )
        .await;
    assert_eq!(status, 409);
    let ticket = qrcode(&env, "adm", Some(60)).await;
    let (status, ev) = env
        .admin(
            Method::POST,
            "/sim/users/scan",
            Some(&json!({ "ticket": ticket, "openid": user })),
        )
        .await;
    assert_eq!((status, ev["event"].as_str()), (200, Some("SCAN")));
    let (status, ev) = env
        .admin(
            Method::POST,
            "/sim/users/click",
            Some(&json!({ "appid": OA, "openid": user, "key": "MY_RECEIPTS" })),
        )
        .await;
    assert_eq!((status, ev["event"].as_str()), (200, Some("CLICK")));
    let (status, _) = env
        .admin(
            Method::POST,
            "/sim/users/click",
            Some(&json!({ "appid": OA, "openid": user, "key": "NOPE" })),
        )
        .await;
    assert_eq!(status, 404);
    let (status, ev) = env
        .admin(
            Method::POST,
            "/sim/users/unfollow",
            Some(&json!({ "appid": OA, "openid": user })),
        )
        .await;
    assert_eq!((status, ev["event"].as_str()), (200, Some("unsubscribe")));
    let (status, _) = env
        .admin(
            Method::POST,
            "/sim/users/unfollow",
            Some(&json!({ "appid": OA, "openid": user })),
        )
        .await;
    assert_eq!(status, 409);
    let (status, _) = env
        .admin(
            Method::POST,
            "/sim/users/scan",
            Some(&json!({ "ticket": "gQx", "openid": user })),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(inbox.received().len(), 4);
    env.stop().await;
    h.stop(false).await;
}
