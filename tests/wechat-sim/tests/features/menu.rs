use piaojia_wechat_sim::paths;
use reqwest::Method;
use serde_json::{Value, json};

use crate::common::*;

fn click(name: &str, key: &str) -> Value {
    json!({ "type": "click", "name": name, "key": key })
}

fn menu() -> Value {
    json!({ "button": [
        click("我的票据", "MY_RECEIPTS"),
        { "name": "服务", "sub_button": [
            { "type": "view", "name": "票据查验", "url": "https://piaojia.example/verify" },
            { "type": "miniprogram", "name": "票夹", "url": "https://piaojia.example", "appid": MP, "pagepath": "pages/index" },
            click("联系客服", "SUPPORT"),
        ] },
    ] })
}

#[tokio::test]
async fn menu_is_validated_stored_and_readable() {
    let env = Env::start(config()).await;
    let r = env.call(OA, paths::MENU_CREATE, &menu()).await;
    assert_eq!((errcode(&r), r["errmsg"].as_str()), (0, Some("ok")), "{r}");
    assert_eq!(env.sim.menu(OA), Some(menu()));
    let got = env.call_get(OA, paths::MENU_GET).await;
    assert_eq!(got["menu"], menu());
    let (status, admin) = env.admin(Method::GET, &format!("/sim/apps/{OA}/menu"), None).await;
    assert_eq!((status, admin), (200, menu()));

    // Each rule, with WeChat's errcode; a refused menu leaves the stored one alone.
    let sub = |subs: Vec<Value>| json!({ "button": [{ "name": "服务", "sub_button": subs }] });
    let cases: Vec<(Value, i64)> = vec![
        (json!({ "button": [] }), 40016),
        (
            json!({ "button": [click("a", "1"), click("b", "2"), click("c", "3"), click("d", "4")] }),
            40016,
        ),
        (
            json!({ "button": [{ "type": "scan", "name": "a", "key": "k" }] }),
            40017,
        ),
        (json!({ "button": [click("我的全部电子票据", "K")] }), 40018),
        (json!({ "button": [click("a", &"k".repeat(129))] }), 40019),
        (
            json!({ "button": [{ "type": "view", "name": "a", "url": "piaojia.example" }] }),
            40020,
        ),
        (
            sub(vec![json!({ "name": "a", "sub_button": [click("b", "K")] })]),
            40022,
        ),
        (sub((0..6).map(|i| click("a", &format!("K{i}"))).collect()), 40023),
        (sub(vec![json!({ "type": "", "name": "a" })]), 40024),
        (sub(vec![click(&"票".repeat(21), "K")]), 40025),
        (sub(vec![click("a", "")]), 40026),
        (sub(vec![json!({ "type": "view", "name": "a", "url": "" })]), 40027),
    ];
    for (bad, expected) in cases {
        let r = env.call(OA, paths::MENU_CREATE, &bad).await;
        assert_eq!(errcode(&r), expected, "{bad} → {r}");
    }
    assert_eq!(env.sim.menu(OA), Some(menu()));

    // Mini-programs have no menu; deleting leaves none.
    assert_eq!(errcode(&env.call(MP, paths::MENU_CREATE, &menu()).await), 48001);
    assert_eq!(errcode(&env.call_get(OA, paths::MENU_DELETE).await), 0);
    assert_eq!(errcode(&env.call_get(OA, paths::MENU_GET).await), 46003);
    assert_eq!(env.sim.menu(OA), None);
    let (status, _) = env.admin(Method::GET, &format!("/sim/apps/{OA}/menu"), None).await;
    assert_eq!(status, 404);
    env.stop().await;
}
