use std::time::Duration;

use piaojia_wechat_sim::{new_openid, paths};
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::*;

const NAME: &str = "张三";
const ID: &str = "11010119900307451X";

fn check(openid: &str, name: &str, id: &str, code: &str) -> Value {
    json!({ "openid": openid, "real_name": name, "cred_type": 1, "cred_id": id, "code": code })
}

#[tokio::test]
async fn real_name_results() {
    let env = Env::start(config()).await;
    let payer = new_openid();
    env.sim.set_real_name(&payer, NAME, ID);
    let run = |name: &'static str, id: &'static str| {
        let (env, payer) = (&env, payer.clone());
        async move {
            let code = env.sim.issue_real_name_code(MP, &payer);
            env.call(MP, paths::CHECK_REAL_NAME, &check(&payer, name, id, &code))
                .await
        }
    };
    let r = run(NAME, ID).await;
    assert_eq!(errcode(&r), 0, "{r}");
    assert_eq!(r["errmsg"], "ok");
    assert_eq!(r["verify_openid"], "V_OP_NM_MA");
    assert_eq!(r["verify_real_name"], "V_NM_ID_MA");
    // A lower-case final x is the same ID number.
    assert_eq!(run(NAME, "11010119900307451x").await["verify_real_name"], "V_NM_ID_MA");
    let r = run(NAME, "110101199003074528").await;
    assert_eq!(
        (r["verify_openid"].as_str(), r["verify_real_name"].as_str()),
        (Some("V_OP_NM_MA"), Some("V_NM_ID_UM"))
    );
    let r = run("李四", ID).await;
    assert_eq!(
        (r["verify_openid"].as_str(), r["verify_real_name"].as_str()),
        (Some("V_OP_NM_UM"), Some(""))
    );

    // Without a WeChat Pay real name.
    let stranger = new_openid();
    let code = env.sim.issue_real_name_code(MP, &stranger);
    let r = env
        .call(MP, paths::CHECK_REAL_NAME, &check(&stranger, NAME, ID, &code))
        .await;
    assert_eq!(r["verify_openid"], "V_OP_NA");
    env.sim.clear_real_name(&payer);
    assert_eq!(run(NAME, ID).await["verify_openid"], "V_OP_NA");
    env.stop().await;
}

#[tokio::test]
async fn real_name_codes_are_single_use_expiring_and_bound() {
    let env = Env::start(config()).await;
    let payer = new_openid();
    env.sim.set_real_name(&payer, NAME, ID);
    let code = env.sim.issue_real_name_code(MP, &payer);
    assert_eq!(
        errcode(
            &env.call(MP, paths::CHECK_REAL_NAME, &check(&payer, NAME, ID, &code))
                .await
        ),
        0
    );
    let reused = env
        .call(MP, paths::CHECK_REAL_NAME, &check(&payer, NAME, ID, &code))
        .await;
    assert_eq!(errcode(&reused), 80113, "{reused}");
    assert!(reused["errmsg"].as_str().expect("errmsg").starts_with("无效code"));
    assert_eq!(
        errcode(
            &env.call(MP, paths::CHECK_REAL_NAME, &check(&payer, NAME, ID, "no-such-code"))
                .await
        ),
        80113
    );

    // Bound to the user who authorised: another openid cannot use it (nor spend it).
    let code = env.sim.issue_real_name_code(MP, &payer);
    let other = new_openid();
    assert_eq!(
        errcode(
            &env.call(MP, paths::CHECK_REAL_NAME, &check(&other, NAME, ID, &code))
                .await
        ),
        80113
    );
    // Bound to the app.
    assert_eq!(
        errcode(
            &env.call(MP2, paths::CHECK_REAL_NAME, &check(&payer, NAME, ID, &code))
                .await
        ),
        80113
    );
    assert_eq!(
        errcode(
            &env.call(MP, paths::CHECK_REAL_NAME, &check(&payer, NAME, ID, &code))
                .await
        ),
        0
    );

    // Expires with the other codes (5 minutes).
    let late = env.sim.issue_real_name_code(MP, &payer);
    env.sim.advance_clock(Duration::from_secs(301));
    assert_eq!(
        errcode(
            &env.call(MP, paths::CHECK_REAL_NAME, &check(&payer, NAME, ID, &late))
                .await
        ),
        80113
    );

    // Shape errors and the account type.
    let code = env.sim.issue_real_name_code(MP, &payer);
    assert_eq!(
        errcode(
            &env.call(MP, paths::CHECK_REAL_NAME, &json!({ "openid": payer, "code": code }))
                .await
        ),
        47001
    );
    let mut passport = check(&payer, NAME, ID, &code);
    passport["cred_type"] = json!("2");
    assert_eq!(errcode(&env.call(MP, paths::CHECK_REAL_NAME, &passport).await), 40097);
    assert_eq!(
        errcode(
            &env.call(OA, paths::CHECK_REAL_NAME, &check(&payer, NAME, ID, &code))
                .await
        ),
        48001
    );
    // None of those spent the code.
    assert_eq!(
        errcode(
            &env.call(MP, paths::CHECK_REAL_NAME, &check(&payer, NAME, ID, &code))
                .await
        ),
        0
    );
    env.stop().await;
}

#[tokio::test]
async fn real_name_admin_api() {
    let env = Env::start(config()).await;
    let payer = new_openid();
    let (status, _) = env
        .admin(
            Method::PUT,
            "/sim/realname",
            Some(&json!({ "openid": payer, "real_name": NAME, "cred_id": ID })),
        )
        .await;
    assert_eq!(status, 200);
    let (status, r) = env
        .admin(
            Method::POST,
            "/sim/codes/realname",
            Some(&json!({ "appid": MP, "openid": payer })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(r["openid"], payer.as_str());
    let code = r["code"].as_str().expect("code").to_owned();
    let r = env
        .call(MP, paths::CHECK_REAL_NAME, &check(&payer, NAME, ID, &code))
        .await;
    assert_eq!(r["verify_real_name"], "V_NM_ID_MA");
    // Records keep no names or ID numbers.
    let recorded = env.sim.calls_to(paths::CHECK_REAL_NAME).remove(0).body;
    assert_eq!(
        (recorded["real_name"].as_str(), recorded["cred_id"].as_str()),
        (Some("<redacted>"), Some("<redacted>"))
    );
    assert_eq!(recorded["openid"], payer.as_str());

    let (status, _) = env
        .admin(Method::PUT, "/sim/realname", Some(&json!({ "openid": payer })))
        .await;
    assert_eq!(status, 400);
    env.admin(Method::DELETE, "/sim/realname", Some(&json!({ "openid": payer })))
        .await;
    let (_, r) = env
        .admin(
            Method::POST,
            "/sim/codes/realname",
            Some(&json!({ "appid": MP, "openid": payer })),
        )
        .await;
    let r = env
        .call(
            MP,
            paths::CHECK_REAL_NAME,
            &check(&payer, NAME, ID, r["code"].as_str().expect("code")),
        )
        .await;
    assert_eq!(r["verify_openid"], "V_OP_NA");
    env.stop().await;
}
