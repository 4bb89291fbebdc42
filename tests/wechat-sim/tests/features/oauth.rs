use std::time::Duration;

use actix_web::{App, HttpServer, web};
use piaojia_wechat_sim::{SimApp, Simulator, new_openid, paths};
use reqwest::Method;

use crate::common::*;

fn authorize_path(appid: &str, redirect_uri: &str, scope: &str, state: &str) -> String {
    let q = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("appid", appid)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("response_type", "code")
        .append_pair("scope", scope)
        .append_pair("state", state)
        .finish();
    format!("{}?{q}", paths::OAUTH_AUTHORIZE)
}

fn exchange_path(appid: &str, secret: &str, code: &str) -> String {
    format!(
        "{}?appid={appid}&secret={secret}&code={code}&grant_type=authorization_code",
        paths::OAUTH_ACCESS_TOKEN
    )
}

fn query_of(location: &str) -> std::collections::BTreeMap<String, String> {
    url::Url::parse(location)
        .expect("absolute location")
        .query_pairs()
        .into_owned()
        .collect()
}

/// Logs the browser in as `openid` of `appid`; returns the cookie.
async fn login(env: &Env, appid: &str, openid: &str) -> String {
    let resp = env
        .browse(&format!("/sim/browser/login?appid={appid}&openid={openid}"), None)
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    cookie_of(&resp).expect("cookie")
}

#[tokio::test]
async fn authorize_redirects_with_a_single_use_code() {
    let env = Env::start(config()).await;
    let openid = new_openid();
    let cookie = login(&env, OA, &openid).await;
    assert!(cookie.starts_with(&format!("wxsim_user_{OA}=")));

    let resp = env
        .browse(
            &authorize_path(OA, "https://piaojia.example/h5/cb?from=menu", "snsapi_base", "s123"),
            Some(&cookie),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 302);
    let to = location(&resp);
    assert!(to.starts_with("https://piaojia.example/h5/cb?"), "{to}");
    let q = query_of(&to);
    assert_eq!(q["from"], "menu", "the redirect_uri's own query is kept");
    assert_eq!(q["state"], "s123");
    let code = q["code"].clone();

    let r = env.get(&exchange_path(OA, OA_SECRET, &code)).await;
    assert_eq!(r["openid"], openid.as_str());
    assert_eq!(r["scope"], "snsapi_base");
    assert_eq!(errcode(&env.get(&exchange_path(OA, OA_SECRET, &code)).await), 40163);
    assert_eq!(errcode(&env.get(&exchange_path(OA, OA_SECRET, "forged")).await), 40029);

    // Bound to the app: another official account cannot exchange it.
    let resp = env
        .browse(
            &authorize_path(OA, "https://piaojia.example/cb", "snsapi_userinfo", ""),
            Some(&cookie),
        )
        .await;
    let q = query_of(&location(&resp));
    assert_eq!(q["state"], "");
    let unit_secret = secret(UNIT);
    assert_eq!(
        errcode(&env.get(&exchange_path(UNIT, &unit_secret, &q["code"])).await),
        40029
    );
    let r = env.get(&exchange_path(OA, OA_SECRET, &q["code"])).await;
    assert_eq!(r["scope"], "snsapi_userinfo");

    // The documented link ends in `#wechat_redirect`: a fragment, which browsers keep to themselves.
    let documented = format!(
        "{}#wechat_redirect",
        authorize_path(OA, "https://piaojia.example/cb", "snsapi_base", "frag")
    );
    let resp = env.browse(&documented, Some(&cookie)).await;
    assert_eq!(resp.status().as_u16(), 302);
    assert_eq!(query_of(&location(&resp))["state"], "frag");

    // About five minutes to use it.
    let resp = env
        .browse(
            &authorize_path(OA, "https://piaojia.example/cb", "snsapi_base", "x"),
            Some(&cookie),
        )
        .await;
    let q = query_of(&location(&resp));
    env.sim.advance_clock(Duration::from_secs(301));
    assert_eq!(
        errcode(&env.get(&exchange_path(OA, OA_SECRET, &q["code"])).await),
        40029
    );
    env.stop().await;
}

#[tokio::test]
async fn without_a_user_the_page_asks_who_you_are() {
    let env = Env::start(config()).await;
    let known = new_openid();
    env.sim.issue_oauth_code(OA, &known);
    let path = authorize_path(OA, "https://piaojia.example/cb", "snsapi_base", "st");
    let resp = env.browse(&path, None).await;
    assert_eq!(resp.status().as_u16(), 200);
    let page = resp.text().await.expect("html");
    assert!(page.contains("模拟微信授权"), "{page}");
    assert!(page.contains(&known), "known users are offered");
    assert!(page.contains("票夹平台"));
    assert!(
        !page.contains("<script") && !page.contains("src=\"http"),
        "no scripts or outside resources"
    );

    let url = env.url(&path);
    let resp = env.submit(&url, &[("typed", "not-an-openid")], None).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.text().await.expect("html").contains("openid 须为 28 位"));

    let chosen = new_openid();
    let resp = env.submit(&url, &[("openid", &known), ("typed", &chosen)], None).await;
    assert_eq!(resp.status().as_u16(), 302);
    let cookie = cookie_of(&resp).expect("the choice is remembered");
    let q = query_of(&location(&resp));
    assert_eq!(q["state"], "st");
    assert_eq!(
        env.get(&exchange_path(OA, OA_SECRET, &q["code"])).await["openid"],
        chosen.as_str()
    );

    // The radio choice alone, then the cookie alone.
    let resp = env.submit(&url, &[("openid", &known)], None).await;
    let q = query_of(&location(&resp));
    assert_eq!(
        env.get(&exchange_path(OA, OA_SECRET, &q["code"])).await["openid"],
        known.as_str()
    );
    let resp = env.browse(&path, Some(&cookie)).await;
    assert_eq!(resp.status().as_u16(), 302);
    let q = query_of(&location(&resp));
    assert_eq!(
        env.get(&exchange_path(OA, OA_SECRET, &q["code"])).await["openid"],
        chosen.as_str()
    );
    env.stop().await;
}

#[tokio::test]
async fn redirect_uri_must_be_on_a_web_authorisation_domain() {
    let cfg =
        config().with_app(SimApp::official_account("wxa1b2c3d4e5f600aa", "s").with_oauth_domain("piaojia.example"));
    let env = Env::start(cfg).await;
    let app = "wxa1b2c3d4e5f600aa";
    let cookie = login(&env, app, &new_openid()).await;
    let resp = env
        .browse(
            &authorize_path(app, "https://evil.example/cb", "snsapi_base", "x"),
            Some(&cookie),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    assert!(resp.headers().get("location").is_none());
    let page = resp.text().await.expect("html");
    assert!(
        page.contains("redirect_uri 参数错误") && page.contains("10003"),
        "{page}"
    );
    let resp = env
        .browse(
            &authorize_path(app, "https://piaojia.example/cb", "snsapi_base", "x"),
            Some(&cookie),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 302);

    // Through the admin API: the other app now only allows its own domain and port.
    let (status, _) = env
        .admin(
            Method::PUT,
            &format!("/sim/apps/{OA}/oauth_domains"),
            Some(&serde_json::json!(["h5.piaojia.example:8443"])),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        env.sim.app(OA).expect("app").oauth_domains,
        vec!["h5.piaojia.example:8443"]
    );
    let cookie = login(&env, OA, &new_openid()).await;
    let resp = env
        .browse(
            &authorize_path(OA, "https://h5.piaojia.example/cb", "snsapi_base", "x"),
            Some(&cookie),
        )
        .await;
    assert!(resp.text().await.expect("html").contains("10003"));
    let resp = env
        .browse(
            &authorize_path(OA, "https://h5.piaojia.example:8443/cb", "snsapi_base", "x"),
            Some(&cookie),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 302);
    env.stop().await;
}

#[tokio::test]
async fn authorize_parameter_errors() {
    let env = Env::start(config()).await;
    let cookie = login(&env, OA, &new_openid()).await;
    let page = |path: String| {
        let (env, cookie) = (&env, cookie.clone());
        async move {
            let resp = env.browse(&path, Some(&cookie)).await;
            assert_eq!(resp.status().as_u16(), 200, "{path}");
            resp.text().await.expect("html")
        }
    };
    assert!(
        page(format!(
            "{}?redirect_uri=https%3A%2F%2Fx.example&response_type=code&scope=snsapi_base",
            paths::OAUTH_AUTHORIZE
        ))
        .await
        .contains("10012")
    );
    assert!(
        page(authorize_path(
            "wx0000000000000000",
            "https://x.example",
            "snsapi_base",
            ""
        ))
        .await
        .contains("appid 参数错误")
    );
    assert!(
        page(authorize_path(MP, "https://x.example", "snsapi_base", ""))
            .await
            .contains("appid 参数错误"),
        "mini-programs have no web OAuth"
    );
    assert!(
        page(authorize_path(OA, "https://x.example", "snsapi_login", ""))
            .await
            .contains("10005")
    );
    assert!(
        page(authorize_path(OA, "https://x.example", "", ""))
            .await
            .contains("10010")
    );
    assert!(page(authorize_path(OA, "", "snsapi_base", "")).await.contains("10011"));
    assert!(
        page(authorize_path(OA, "javascript:alert(1)", "snsapi_base", ""))
            .await
            .contains("10003")
    );
    let wrong_type =
        authorize_path(OA, "https://x.example", "snsapi_base", "").replace("response_type=code", "response_type=token");
    assert!(page(wrong_type).await.contains("response_type"));
    // The login endpoint refuses what is not an openid, and never redirects off-site.
    let resp = env
        .browse(&format!("/sim/browser/login?appid={OA}&openid=bad"), None)
        .await;
    assert_eq!(resp.status().as_u16(), 400);
    let resp = env
        .browse(
            &format!("/sim/browser/login?appid={OA}&return=%2F%2Fevil.example%2F"),
            None,
        )
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let resp = env
        .browse(
            &format!("/sim/browser/login?appid={OA}&return=%2Fsim%2Fcardpackage%2Fpage%3Fappid%3D{OA}"),
            None,
        )
        .await;
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(location(&resp), format!("/sim/cardpackage/page?appid={OA}"));
    env.stop().await;
}

#[tokio::test]
async fn under_a_scope_the_cookie_is_scoped_too() {
    let sim = Simulator::new(config());
    let s = sim.clone();
    let server = HttpServer::new(move || {
        let s = s.clone();
        App::new().service(web::scope("/sandbox/wechat").configure(move |c| s.configure(c)))
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .expect("bind");
    let addr = server.addrs()[0];
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    let http = client();
    let base = format!("http://{addr}/sandbox/wechat");
    let openid = new_openid();
    let resp = http
        .get(format!("{base}/sim/browser/login?appid={OA}&openid={openid}"))
        .send()
        .await
        .expect("login");
    let set = resp.headers()["set-cookie"].to_str().expect("ascii").to_owned();
    assert!(set.contains("Path=/sandbox/wechat;"), "{set}");
    let cookie = set.split(';').next().expect("pair").to_owned();
    let resp = http
        .get(format!(
            "{base}{}",
            authorize_path(OA, "https://x.example/cb", "snsapi_base", "1")
        ))
        .header("cookie", cookie)
        .send()
        .await
        .expect("authorize");
    assert_eq!(resp.status().as_u16(), 302);
    handle.stop(false).await;
}
