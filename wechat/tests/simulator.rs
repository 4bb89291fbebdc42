//! The client against the WeChat simulator: every newer call, the card-ticket cache, and a
//! message server built from this crate's own event parsing, crypto and passive replies.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use piaojia_wechat::client::{
    AuthSource, BillAuthRequest, BillCardTemplate, ButtonAction, InsertBill, InvoiceAuthStatus, InvoiceRef, Menu,
    MenuButton, OpenidVerification, RealNameCheck, RealNameVerification, ReimburseStatus, SubButton,
};
use piaojia_wechat::errcode::ErrorClass;
use piaojia_wechat::event::{EventKind, PassiveReply, parse_event, parse_typed_event};
use piaojia_wechat::{AppCredentials, CallError, MsgCrypt, TokenCache, WechatClient};
use piaojia_wechat_sim::{CardStatus, MessageServer, SimApp, SimConfig, Simulator, new_openid};
use secrecy::SecretString;

const MP: &str = "wxc1d2e3f4a5b60001";
const OA: &str = "wxc1d2e3f4a5b60002";
const REIMB: &str = "wxc1d2e3f4a5b60003";
const REIMB2: &str = "wxc1d2e3f4a5b60004";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const PDF: &[u8] = b"%PDF-1.4\n%%EOF\n";

fn creds(appid: &str) -> AppCredentials {
    AppCredentials::new(appid, format!("secret-{appid}"))
}

async fn start() -> (Simulator, String, ServerHandle) {
    let cfg = SimConfig {
        push_timeout: Duration::from_millis(500),
        ..SimConfig::default()
    }
    .with_app(SimApp::mini_program(MP, &format!("secret-{MP}")))
    .with_app(SimApp::official_account(OA, &format!("secret-{OA}")))
    .with_app(SimApp::official_account(REIMB, &format!("secret-{REIMB}")))
    .with_app(SimApp::official_account(REIMB2, &format!("secret-{REIMB2}")));
    let sim = Simulator::new(cfg);
    let (addr, handle) = sim.start().await.expect("simulator");
    (sim, format!("http://{addr}"), handle)
}

fn client(base: &str) -> WechatClient {
    WechatClient::new(base, TokenCache::Memory).expect("client")
}

fn wechat_code(e: &CallError) -> i64 {
    match e {
        CallError::Wechat(w) => w.errcode,
        other => panic!("not a WeChat error: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_name_check() {
    let (sim, base, handle) = start().await;
    let c = client(&base);
    let payer = new_openid();
    sim.set_real_name(&payer, "张三", "11010119900307451X");
    let check = |name: &str, id: &str| RealNameCheck {
        openid: payer.clone(),
        real_name: SecretString::from(name.to_owned()),
        cred_id: SecretString::from(id.to_owned()),
        code: sim.issue_real_name_code(MP, &payer),
    };
    let ok = c
        .check_real_name_info(&creds(MP), &check("张三", "11010119900307451X"))
        .await
        .expect("check");
    assert!(ok.is_verified());
    let wrong_id = c
        .check_real_name_info(&creds(MP), &check("张三", "110101199003074528"))
        .await
        .expect("check");
    assert_eq!(wrong_id.verify_real_name, Some(RealNameVerification::IdMismatch));
    assert!(!wrong_id.is_verified());
    let wrong_name = c
        .check_real_name_info(&creds(MP), &check("李四", "11010119900307451X"))
        .await
        .expect("check");
    assert_eq!(
        (wrong_name.verify_openid, wrong_name.verify_real_name),
        (OpenidVerification::NameMismatch, None)
    );
    sim.clear_real_name(&payer);
    let none = c
        .check_real_name_info(&creds(MP), &check("张三", "11010119900307451X"))
        .await
        .expect("check");
    assert_eq!(none.verify_openid, OpenidVerification::NoRealName);

    let used = check("张三", "11010119900307451X");
    c.check_real_name_info(&creds(MP), &used).await.expect("first use");
    let e = c.check_real_name_info(&creds(MP), &used).await.expect_err("second use");
    assert_eq!(wechat_code(&e), 80113);
    assert_eq!(e.class(), Some(ErrorClass::Permanent));
    // The request carried cred_type 1 and the values as given.
    let call = sim
        .calls_to(piaojia_wechat_sim::paths::CHECK_REAL_NAME)
        .pop()
        .expect("recorded");
    assert_eq!(call.body["cred_type"], "1");
    handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_menu() {
    let (sim, base, handle) = start().await;
    let c = client(&base);
    let menu = Menu {
        buttons: vec![
            MenuButton::Action {
                name: "我的票据".into(),
                action: ButtonAction::Click {
                    key: "MY_RECEIPTS".into(),
                },
            },
            MenuButton::Group {
                name: "服务".into(),
                sub_buttons: vec![
                    SubButton {
                        name: "票据查验".into(),
                        action: ButtonAction::View {
                            url: "https://piaojia.example/verify".into(),
                        },
                    },
                    SubButton {
                        name: "票夹".into(),
                        action: ButtonAction::MiniProgram {
                            appid: MP.into(),
                            pagepath: "pages/index".into(),
                            url: "https://piaojia.example".into(),
                        },
                    },
                ],
            },
        ],
    };
    c.create_menu(&creds(OA), &menu).await.expect("menu");
    assert_eq!(sim.menu(OA), Some(menu.to_json()));
    let too_long = Menu {
        buttons: vec![MenuButton::Action {
            name: "我的全部电子票据".into(),
            action: ButtonAction::Click { key: "K".into() },
        }],
    };
    let e = c.create_menu(&creds(OA), &too_long).await.expect_err("name too long");
    assert_eq!(wechat_code(&e), 40018);
    assert!(!e.is_retryable());
    let e = c.create_menu(&creds(OA), &Menu::default()).await.expect_err("empty");
    assert_eq!(wechat_code(&e), 40016);
    handle.stop(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn card_ticket_is_cached_with_one_refresher() {
    let (sim, base, handle) = start().await;
    let c = client(&base);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.card_ticket(&creds(OA)).await })
        })
        .collect();
    let mut tickets = Vec::new();
    for t in tasks {
        tickets.push(t.await.expect("join").expect("ticket"));
    }
    assert!(tickets.iter().all(|t| *t == tickets[0]));
    assert_eq!(sim.ticket_issues(OA), 1);
    assert_eq!(
        sim.calls_to(piaojia_wechat_sim::paths::GET_TICKET).len(),
        1,
        "one getticket call"
    );
    // Dropping a stale ticket keeps the current one; dropping the current one refetches.
    c.invalidate_card_ticket(&creds(OA), "stale").await.expect("invalidate");
    assert_eq!(c.card_ticket(&creds(OA)).await.expect("ticket"), tickets[0]);
    c.invalidate_card_ticket(&creds(OA), &tickets[0])
        .await
        .expect("invalidate");
    c.card_ticket(&creds(OA)).await.expect("ticket");
    assert_eq!(sim.calls_to(piaojia_wechat_sim::paths::GET_TICKET).len(), 2);
    // The access token cache is untouched by all this.
    assert_eq!(sim.token_issues(OA), 1);
    // A token rejected mid-way is refreshed once and the ticket call retried.
    sim.invalidate_tokens(OA);
    c.invalidate_card_ticket(&creds(OA), &c.card_ticket(&creds(OA)).await.expect("ticket"))
        .await
        .expect("invalidate");
    c.card_ticket(&creds(OA)).await.expect("ticket after token refresh");
    assert_eq!(sim.token_issues(OA), 2);
    let e = c.card_ticket(&creds(MP)).await.expect_err("mini-programs have none");
    assert_eq!(wechat_code(&e), 48001);
    handle.stop(false).await;
}

async fn redis_conn() -> redis::aio::ConnectionManager {
    let client = redis::Client::open("redis://127.0.0.1:6379/").expect("redis url");
    redis::aio::ConnectionManager::new(client)
        .await
        .expect("redis at 127.0.0.1:6379 is required for these tests")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn card_ticket_is_shared_through_redis() {
    let (sim, base, handle) = start().await;
    let prefix = format!("pjtest:{}:", uuid::Uuid::new_v4().simple());
    let make = || async {
        WechatClient::new(
            &base,
            TokenCache::Redis {
                conn: redis_conn().await,
                prefix: prefix.clone(),
            },
        )
        .expect("client")
    };
    let (a, b) = (make().await, make().await);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let c = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move { c.card_ticket(&creds(OA)).await })
        })
        .collect();
    let mut tickets = Vec::new();
    for t in tasks {
        tickets.push(t.await.expect("join").expect("ticket"));
    }
    assert!(tickets.iter().all(|t| *t == tickets[0]));
    assert_eq!(sim.calls_to(piaojia_wechat_sim::paths::GET_TICKET).len(), 1);
    let mut conn = redis_conn().await;
    let key = format!("{prefix}wechat:ticket:wx_card:{OA}");
    let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut conn).await.expect("ttl");
    assert!(
        (6800..=6900).contains(&ttl),
        "refreshed 300 s before WeChat's expiry: {ttl}"
    );
    let lock: Option<String> = redis::cmd("GET")
        .arg(format!("{prefix}wechat:ticket-lock:wx_card:{OA}"))
        .query_async(&mut conn)
        .await
        .expect("get");
    assert_eq!(lock, None, "the refresh lock is released");
    b.invalidate_card_ticket(&creds(OA), "not-it")
        .await
        .expect("invalidate");
    let still: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.expect("get");
    assert_eq!(still.as_deref(), Some(tickets[0].as_str()));
    b.invalidate_card_ticket(&creds(OA), &tickets[0])
        .await
        .expect("invalidate");
    let gone: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut conn).await.expect("get");
    assert_eq!(gone, None);
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}wechat:token:{OA}"))
        .query_async(&mut conn)
        .await
        .expect("del");
    handle.stop(false).await;
}

fn bill(order_id: &str, card_id: &str, media: &str, serial: &str) -> InsertBill {
    InsertBill {
        order_id: order_id.into(),
        card_id: card_id.into(),
        appid: OA.into(),
        fee: 1250,
        title: "市第一人民医院".into(),
        billing_time: 1_714_112_445,
        billing_no: "11060124".into(),
        billing_code: serial.into(),
        s_pdf_media_id: media.into(),
    }
}

fn auth_request(s_pappid: &str, order_id: &str) -> BillAuthRequest {
    BillAuthRequest {
        s_pappid: s_pappid.into(),
        order_id: order_id.into(),
        money: 1250,
        timestamp: 1_714_112_445,
        source: AuthSource::Web,
        redirect_url: Some("https://piaojia.example/after".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_package_for_fiscal_receipts() {
    let (sim, base, handle) = start().await;
    let c = client(&base);
    let oa = creds(OA);
    let s_pappid = c.invoice_platform_s_pappid(&oa).await.expect("s_pappid");
    assert_eq!(s_pappid, sim.s_pappid(OA));
    let card_id = c
        .create_bill_card(
            &oa,
            &BillCardTemplate {
                payee: "市第一人民医院".into(),
                logo_url: "http://mmbiz.qpic.cn/logo/0".into(),
            },
        )
        .await
        .expect("card template");

    let url = c
        .get_bill_auth_url(&oa, &auth_request(&s_pappid, "order-1"))
        .await
        .expect("auth url");
    assert_eq!(url.expire_time, 7200);
    assert_eq!(
        sim.ticket_issues(OA),
        1,
        "the ticket came from the cache's single fetch"
    );
    let auth = c.get_auth_data(&oa, &s_pappid, "order-1").await.expect("auth data");
    assert_eq!(
        (auth.invoice_status, auth.auth_time),
        (InvoiceAuthStatus::NeverAuth, None)
    );
    let e = c
        .get_auth_data(&oa, &s_pappid, "never-asked")
        .await
        .expect_err("unknown order");
    assert_eq!(wechat_code(&e), 40078);

    let payer = new_openid();
    sim.authorize_invoice(&url.auth_url, &payer)
        .await
        .expect("payer agrees");
    let auth = c.get_auth_data(&oa, &s_pappid, "order-1").await.expect("auth data");
    assert!(auth.is_authorized() && auth.auth_time.is_some());

    let media = c.set_pdf(&oa, PDF).await.expect("pdf");
    let e = c.set_pdf(&oa, b"<html>").await.expect_err("not a pdf");
    assert_eq!(wechat_code(&e), 72040);
    let inserted = c
        .insert_bill(&oa, &bill("order-1", &card_id, &media, "0000000001"))
        .await
        .expect("insert");
    assert_eq!(inserted.openid, payer);
    assert!(!format!("{inserted:?}").contains(&payer));
    let e = c
        .insert_bill(&oa, &bill("order-1", &card_id, &media, "0000000001"))
        .await
        .expect_err("one card per order");
    assert_eq!(wechat_code(&e), 72024);

    // A second order the platform refuses.
    let url2 = c
        .get_bill_auth_url(&oa, &auth_request(&s_pappid, "order-2"))
        .await
        .expect("auth url");
    sim.authorize_invoice(&url2.auth_url, &payer).await.expect("agree");
    c.reject_insert(
        &oa,
        &s_pappid,
        "order-2",
        "缴费信息有误",
        Some("https://piaojia.example/why"),
    )
    .await
    .expect("reject");
    let media2 = c.set_pdf(&oa, PDF).await.expect("pdf");
    let e = c
        .insert_bill(&oa, &bill("order-2", &card_id, &media2, "0000000002"))
        .await
        .expect_err("rejected");
    assert_eq!(wechat_code(&e), 72035);

    // A third card, then reimbursers.
    let url3 = c
        .get_bill_auth_url(&oa, &auth_request(&s_pappid, "order-3"))
        .await
        .expect("auth url");
    sim.authorize_invoice(&url3.auth_url, &payer).await.expect("agree");
    let third = c
        .insert_bill(&oa, &bill("order-3", &card_id, &media2, "0000000003"))
        .await
        .expect("insert");
    let chosen: Vec<InvoiceRef> = sim
        .choose_invoice(REIMB, OA, &payer, &[])
        .expect("choose")
        .into_iter()
        .map(|c| InvoiceRef {
            card_id: c.card_id,
            encrypt_code: c.encrypt_code,
        })
        .collect();
    assert_eq!(chosen.len(), 2);
    let reimb = creds(REIMB);
    let info = c.get_invoice_info(&reimb, &chosen[0]).await.expect("info");
    assert_eq!(info.card_id, card_id);
    assert_eq!(info.user_info.fee, 1250);
    assert_eq!(info.user_info.billing_no, "11060124");
    assert_eq!(info.user_info.reimburse_status, ReimburseStatus::Init);
    assert_eq!(info.openid, sim.openid_in(OA, &payer, REIMB));
    assert!(info.user_info.pdf_url.as_deref().is_some_and(|u| u.starts_with(&base)));
    let batch = c.get_invoice_batch(&reimb, &chosen).await.expect("batch");
    assert_eq!(batch.len(), 2);
    let e = c
        .get_invoice_info(&creds(REIMB2), &chosen[0])
        .await
        .expect_err("chosen for another reimburser");
    assert_eq!(wechat_code(&e), 40078);

    let e = c
        .update_invoice_status(&reimb, &chosen[0], ReimburseStatus::Closure)
        .await
        .expect_err("lock first");
    assert_eq!(wechat_code(&e), 72039);
    c.update_invoice_status(&reimb, &chosen[0], ReimburseStatus::Lock)
        .await
        .expect("lock");
    // The platform cannot reverse a locked receipt.
    let locked = sim
        .card_package(OA, &payer)
        .into_iter()
        .find(|c| c.status == CardStatus::Lock)
        .expect("locked card");
    let e = c
        .update_card_status(&oa, &card_id, &locked.code, ReimburseStatus::Cancel)
        .await
        .expect_err("locked");
    assert_eq!(wechat_code(&e), 72023);
    c.update_invoice_status(&reimb, &chosen[0], ReimburseStatus::Closure)
        .await
        .expect("close");
    // All or nothing: the closed card makes the batch fail, the other stays INIT.
    let e = c
        .update_status_batch(&reimb, &info.openid, ReimburseStatus::Lock, &chosen)
        .await
        .expect_err("batch");
    assert_eq!(wechat_code(&e), 72024);
    let open: Vec<_> = sim
        .card_package(OA, &payer)
        .into_iter()
        .filter(|c| c.status == CardStatus::Init)
        .collect();
    assert_eq!(open.len(), 1);
    c.update_status_batch(&reimb, &info.openid, ReimburseStatus::Lock, &chosen[1..])
        .await
        .expect("batch");
    c.update_status_batch(&reimb, &info.openid, ReimburseStatus::Init, &chosen[1..])
        .await
        .expect("unlock");
    // Reversal of the free one.
    let free = sim
        .card_package(OA, &payer)
        .into_iter()
        .find(|c| c.status == CardStatus::Init)
        .expect("free card");
    assert!(free.code == third.code || free.code == inserted.code);
    c.update_card_status(&oa, &card_id, &free.code, ReimburseStatus::Cancel)
        .await
        .expect("cancel");
    assert_eq!(sim.card(&card_id, &free.code).expect("card").status, CardStatus::Cancel);
    let e = c
        .update_status_batch(&reimb, &info.openid, ReimburseStatus::Lock, &[])
        .await
        .expect_err("nothing to update");
    assert!(matches!(e, CallError::Invalid(_)));
    handle.stop(false).await;
}

/// What our message server saw, typed by this crate.
type Seen = Arc<Mutex<Vec<EventKind>>>;

/// A secure-mode message server written with this crate: verifies, decrypts, parses typed,
/// and answers a CLICK with an encrypted text reply.
async fn message_server(token: &str, appid: &str) -> (String, ServerHandle, Seen) {
    let crypt = MsgCrypt::new(token, AES_KEY, appid).expect("key");
    let seen: Seen = Arc::default();
    let (c, s) = (crypt.clone(), seen.clone());
    let server = HttpServer::new(move || {
        let (crypt, seen) = (c.clone(), s.clone());
        App::new().route(
            "/events",
            web::post().to(move |req: HttpRequest, body: String| {
                let (crypt, seen) = (crypt.clone(), seen.clone());
                async move {
                    let q: std::collections::BTreeMap<String, String> =
                        url::form_urlencoded::parse(req.query_string().as_bytes())
                            .into_owned()
                            .collect();
                    let envelope = parse_event(&body).expect("envelope");
                    let encrypt = envelope.encrypt.expect("secure mode");
                    if !crypt.verify_msg_signature(&q["timestamp"], &q["nonce"], &encrypt, &q["msg_signature"]) {
                        return HttpResponse::Forbidden().finish();
                    }
                    let plain = crypt.decrypt(&encrypt).expect("decrypts");
                    let event = parse_typed_event(&plain).expect("typed");
                    seen.lock().expect("seen").push(event.kind.clone());
                    match &event.kind {
                        EventKind::Click { key } if key == "MY_RECEIPTS" => {
                            let reply = PassiveReply::text(&event, 1_714_112_446, "您有 1 张新票据");
                            HttpResponse::Ok().body(reply.to_secure_xml(&crypt, &q["timestamp"], &q["nonce"]))
                        }
                        _ => HttpResponse::Ok().body("success"),
                    }
                }
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .expect("bind");
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://{addr}/events"), handle, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_message_server_understands_every_push_and_replies_in_secure_mode() {
    let (sim, base, handle) = start().await;
    let (url, server, seen) = message_server("evt-token", OA).await;
    sim.set_message_server(
        OA,
        Some(MessageServer {
            url,
            token: "evt-token".into(),
            encoding_aes_key: Some(AES_KEY.into()),
        }),
    )
    .expect("app");
    let c = client(&base);
    let oa = creds(OA);
    let menu = Menu {
        buttons: vec![MenuButton::Action {
            name: "我的票据".into(),
            action: ButtonAction::Click {
                key: "MY_RECEIPTS".into(),
            },
        }],
    };
    c.create_menu(&oa, &menu).await.expect("menu");
    let user = new_openid();
    sim.follow(OA, &user).await.expect("follow");
    let qr = c.create_qrcode(&oa, "receipt:9", Some(600)).await.expect("qr");
    sim.scan(&qr.ticket, &user).await.expect("scan");
    let ev = sim.click_menu(OA, &user, "MY_RECEIPTS").await.expect("click");
    let reply = ev.reply.expect("passive reply");
    assert!(reply.valid, "{reply:?}");
    assert_eq!(reply.signature_valid, Some(true));
    assert_eq!(reply.content.as_deref(), Some("您有 1 张新票据"));
    assert_eq!(reply.to_user_name.as_deref(), Some(user.as_str()));

    // The card-package events too.
    let card_id = c
        .create_bill_card(
            &oa,
            &BillCardTemplate {
                payee: "医院".into(),
                logo_url: "http://mmbiz.qpic.cn/x/0".into(),
            },
        )
        .await
        .expect("card");
    let s_pappid = c.invoice_platform_s_pappid(&oa).await.expect("s_pappid");
    let url = c
        .get_bill_auth_url(&oa, &auth_request(&s_pappid, "evt-1"))
        .await
        .expect("url");
    sim.authorize_invoice(&url.auth_url, &user).await.expect("agree");
    let media = c.set_pdf(&oa, PDF).await.expect("pdf");
    c.insert_bill(&oa, &bill("evt-1", &card_id, &media, "0000000009"))
        .await
        .expect("insert");
    let chosen = sim.choose_invoice(REIMB, OA, &user, &[]).expect("choose");
    let card = InvoiceRef {
        card_id: chosen[0].card_id.clone(),
        encrypt_code: chosen[0].encrypt_code.clone(),
    };
    c.update_invoice_status(&creds(REIMB), &card, ReimburseStatus::Lock)
        .await
        .expect("lock");
    sim.unfollow(OA, &user).await.expect("unfollow");
    // The status event is delivered in the background.
    assert_eq!(sim.wait_for_pushes(6, Duration::from_secs(5)).await.len(), 6);

    let kinds = seen.lock().expect("seen").clone();
    assert!(
        matches!(&kinds[0], EventKind::Subscribe { scene: None, .. }),
        "{kinds:?}"
    );
    assert!(
        matches!(&kinds[1], EventKind::Scan { scene, ticket } if scene == "receipt:9" && ticket.as_deref() == Some(qr.ticket.as_str()))
    );
    assert!(matches!(&kinds[2], EventKind::Click { key } if key == "MY_RECEIPTS"));
    assert!(
        matches!(&kinds[3], EventKind::UserAuthorizeInvoice { succ_order_id: Some(o), fail_order_id: None, authorize_app_id, source } if o == "evt-1" && authorize_app_id == OA && source == "web")
    );
    assert!(kinds.iter().any(|k| matches!(k, EventKind::UpdateInvoiceStatus { status: ReimburseStatus::Lock, card_id: id, .. } if *id == card_id)));
    assert!(kinds.iter().any(|k| matches!(k, EventKind::Unsubscribe)));
    assert!(
        sim.pushed_events().iter().all(|p| p.acknowledged),
        "every push answered"
    );
    handle.stop(false).await;
    server.stop(false).await;
}
