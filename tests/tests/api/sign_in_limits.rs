//! `POST /v1/mp/session` is limited per client address (IPv6: per /64) and per
//! mini-program, before WeChat is asked: bogus codes neither spend the app's
//! jscode2session quota nor, from a few addresses, lock everyone out.

use piaojia_tests::both_modes;
use piaojia_tests::harness::{Mode, TestApp, TestConfig, problem};
use serde_json::json;

const WALLET: &str = "wx1111aaaa2222bbbb";
const OTHER_WALLET: &str = "wx5555eeee6666ffff";
const TMPL: &str = "TMPL-WALLET-RECEIPT";

/// One sign-in with `code` from `client` (behind the trusted proxy): its status.
async fn sign_in(app: &TestApp, appid: &str, code: &str, client: &str) -> reqwest::Response {
    app.client
        .post(format!("{}/v1/mp/session", app.address))
        .header("x-forwarded-for", client)
        .json(&json!({"appId": appid, "code": code}))
        .send()
        .await
        .expect("sent")
}

fn jscode2session_calls(app: &TestApp) -> usize {
    app.sim
        .as_ref()
        .expect("sandbox simulator")
        .calls_to("/sns/jscode2session")
        .len()
}

async fn app_with(mode: Mode, per_ip: u32, per_app: u32) -> TestApp {
    let mut config = TestConfig::new(mode).await;
    config
        .set("PIAOJIA_SERVER__TRUSTED_PROXIES", "127.0.0.1")
        .set("PIAOJIA_MINIPROGRAM__SESSION_PER_IP_PER_MIN", per_ip.to_string())
        .set("PIAOJIA_MINIPROGRAM__SESSION_PER_APP_PER_MIN", per_app.to_string());
    let app = config.spawn().await;
    app.platform_wallet(WALLET, TMPL, false).await;
    app
}

both_modes!(sign_ins_are_limited_per_client_address, |mode: Mode| async move {
    let app = app_with(mode, 3, 1000).await;
    for i in 0..3 {
        let resp = sign_in(&app, WALLET, &format!("bogus-code-{i}"), "203.0.113.9").await;
        assert_eq!(problem(resp, 401).await["code"], "wechat_code_invalid");
    }
    assert_eq!(jscode2session_calls(&app), 3);
    let resp = sign_in(&app, WALLET, "bogus-code-3", "203.0.113.9").await;
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(problem(resp, 429).await["code"], "too_many_attempts");
    // Refused before WeChat was asked.
    assert_eq!(jscode2session_calls(&app), 3);

    // A real payer elsewhere signs in.
    let sim = app.sim.as_ref().expect("sim");
    let code = sim.issue_login_code(WALLET, &piaojia_wechat_sim::new_openid(), None);
    assert_eq!(
        sign_in(&app, WALLET, &code, "203.0.113.10").await.status().as_u16(),
        200
    );

    // IPv6: every address of one /64 is one client.
    for i in 1..=3 {
        let resp = sign_in(&app, WALLET, "bogus", &format!("2001:db8:42:1::{i}")).await;
        assert_eq!(resp.status().as_u16(), 401);
    }
    let resp = sign_in(&app, WALLET, "bogus", "2001:db8:42:1:dead:beef:0:1").await;
    assert_eq!(problem(resp, 429).await["code"], "too_many_attempts");
    let code = sim.issue_login_code(WALLET, &piaojia_wechat_sim::new_openid(), None);
    assert_eq!(
        sign_in(&app, WALLET, &code, "2001:db8:42:2::1").await.status().as_u16(),
        200,
        "the next /64 is another client"
    );
});

both_modes!(sign_ins_are_limited_per_mini_program, |mode: Mode| async move {
    let app = app_with(mode, 1000, 3).await;
    // A hospital's own mini-program beside the platform's wallet.
    app.create_agency("12110000400000001A", &[]).await;
    app.wechat_channel("12110000400000001A", "wechat_subscribe", OTHER_WALLET, TMPL)
        .await;
    for i in 0..3 {
        let resp = sign_in(&app, WALLET, "bogus", &format!("198.51.100.{}", i + 1)).await;
        assert_eq!(resp.status().as_u16(), 401);
    }
    let resp = sign_in(&app, WALLET, "bogus", "198.51.100.99").await;
    assert_eq!(problem(resp, 429).await["code"], "too_many_attempts");
    assert_eq!(
        jscode2session_calls(&app),
        3,
        "the app's WeChat quota is not spent past the limit"
    );
    // Another mini-program's sign-ins are its own.
    let sim = app.sim.as_ref().expect("sim");
    let code = sim.issue_login_code(OTHER_WALLET, &piaojia_wechat_sim::new_openid(), None);
    assert_eq!(
        sign_in(&app, OTHER_WALLET, &code, "198.51.100.99")
            .await
            .status()
            .as_u16(),
        200
    );
    // An unknown appid costs WeChat nothing and counts against no app.
    let resp = sign_in(&app, "wx0000000000000000", "bogus", "198.51.100.98").await;
    assert_eq!(problem(resp, 404).await["code"], "miniprogram_not_found");
});

// A refused address spends nothing of the app's limit: one address cannot turn
// the per-app limit on everyone.
both_modes!(one_address_cannot_spend_the_apps_limit, |mode: Mode| async move {
    let app = app_with(mode, 2, 4).await;
    for _ in 0..10 {
        let _ = sign_in(&app, WALLET, "bogus", "192.0.2.200").await;
    }
    assert_eq!(jscode2session_calls(&app), 2);
    let sim = app.sim.as_ref().expect("sim");
    for i in 0..2 {
        let code = sim.issue_login_code(WALLET, &piaojia_wechat_sim::new_openid(), None);
        let resp = sign_in(&app, WALLET, &code, &format!("192.0.2.{}", i + 1)).await;
        assert_eq!(resp.status().as_u16(), 200, "payer {i}");
    }
});

/// In scale-out the counts live in Redis: spreading sign-ins over gateway processes
/// gains nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_limits_hold_across_gateway_processes() {
    let mut config = TestConfig::new(Mode::ScaleOut).await;
    config
        .set("PIAOJIA_SERVER__TRUSTED_PROXIES", "127.0.0.1")
        .set("PIAOJIA_MINIPROGRAM__SESSION_PER_IP_PER_MIN", "1000")
        .set("PIAOJIA_MINIPROGRAM__SESSION_PER_APP_PER_MIN", "2");
    let first = config.spawn().await;
    let second = config.spawn().await;
    first.platform_wallet(WALLET, TMPL, false).await;
    second
        .sim
        .as_ref()
        .expect("sim")
        .add_app(piaojia_wechat_sim::SimApp::new(
            WALLET,
            &format!("secret-of-{WALLET}"),
            piaojia_wechat_sim::AppKind::MiniProgram,
        ));
    assert_eq!(
        sign_in(&first, WALLET, "bogus", "203.0.113.1").await.status().as_u16(),
        401
    );
    assert_eq!(
        sign_in(&second, WALLET, "bogus", "203.0.113.2").await.status().as_u16(),
        401
    );
    let resp = sign_in(&first, WALLET, "bogus", "203.0.113.3").await;
    assert_eq!(problem(resp, 429).await["code"], "too_many_attempts");
    let resp = sign_in(&second, WALLET, "bogus", "203.0.113.4").await;
    assert_eq!(problem(resp, 429).await["code"], "too_many_attempts");
}
