//! The receipt-wallet mini-program, driven through HTTP against the WeChat
//! simulator: the payer's whole journey, tokens, and that nobody reaches what is
//! not theirs.

use base64::Engine as _;
use piaojia_tests::both_modes;
use piaojia_tests::harness::{Issuer, Mode, TestApp, TestConfig, eventually, problem};
use piaojia_tests::samples::{self, BATCH};
use serde_json::{Value, json};

const AGENCY: &str = "12110000400000001A";
const OTHER_AGENCY: &str = "12110000400000002B";
const WALLET: &str = "wx1111aaaa2222bbbb";
const WALLET_TMPL: &str = "TMPL-WALLET-RECEIPT";
const AGENCY_MP: &str = "wx3333cccc4444dddd";
const AGENCY_TMPL: &str = "TMPL-HOSPITAL-RECEIPT";
const NAME: &str = "张三丰";
const ID: &str = "11010519491231002X";
const PDF: &[u8] = b"%PDF-1.7\n% piaojia test receipt file, long enough to take ranges of\n%%EOF\n";

/// A person's receipt: the sample's payer, or someone else.
fn receipt(n: u64, name: &str, id: &str) -> Value {
    let mut r = samples::outpatient(n);
    r["payer"] = name.into();
    r["idCardNo"] = id.into();
    r["tel"] = "13900139000".into();
    r
}

fn with_file(mut r: Value) -> Value {
    r["file"] = json!({"format": "pdf", "base64": base64::engine::general_purpose::STANDARD.encode(PDF)});
    r
}

fn random_of(n: u64) -> String {
    samples::outpatient(n)["random"].as_str().expect("random").to_owned()
}

async fn json_of(resp: reqwest::Response, status: u16) -> Value {
    let code = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert_eq!(code, status, "{body}");
    body
}

async fn setup(mode: Mode) -> (TestApp, Issuer) {
    let app = TestConfig::new(mode).await.spawn().await;
    app.create_agency(AGENCY, &[]).await;
    let issuer = app.create_issuer(AGENCY, "hosp01-his", None).await;
    app.platform_wallet(WALLET, WALLET_TMPL, false).await;
    (app, issuer)
}

fn register_body(app: &TestApp, phone: &str) -> Value {
    let code = app.sim.as_ref().expect("sim").issue_phone_code(WALLET, phone);
    json!({
        "name": NAME, "idType": "resident", "idNumber": ID,
        "phoneCode": code,
        "consent": {"version": "2026-11", "accepted": true}
    })
}

async fn ids_of(app: &TestApp, token: &str, query: &str) -> Vec<String> {
    let page = json_of(
        app.mp("GET", &format!("/v1/mp/receipts{query}"), token, None).await,
        200,
    )
    .await;
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["billNo"].as_str().expect("billNo").to_owned())
        .collect()
}

both_modes!(payer_journey_from_login_to_account_deletion, |mode: Mode| async move {
    let (app, issuer) = setup(mode).await;
    let sim = app.sim.clone().expect("sandbox simulator");

    // Receipts held before the payer ever signs in: theirs, an organisation's
    // (same name), and somebody else's.
    assert_eq!(app.push(&issuer, &with_file(receipt(1, NAME, ID))).await.status(), 201);
    let mut org = receipt(2, NAME, "91110000MA01ABCD2X");
    org["payerType"] = "2".into();
    json_of(app.push(&issuer, &org).await, 201).await;
    assert_eq!(
        app.push(&issuer, &receipt(3, "李四", "110101199003077774"))
            .await
            .status(),
        201
    );

    // Login with wx.login's code; the code is single-use.
    let openid = piaojia_wechat_sim::new_openid();
    let code = sim.issue_login_code(WALLET, &openid, None);
    let login = |code: String| {
        let app = &app;
        async move {
            app.client
                .post(format!("{}/v1/mp/session", app.address))
                .json(&json!({"appId": WALLET, "code": code}))
                .send()
                .await
                .expect("sent")
        }
    };
    let session = json_of(login(code.clone()).await, 200).await;
    assert_eq!(session["tokenType"], "Bearer");
    assert_eq!(session["registered"], false);
    assert!(session.get("sessionKey").is_none() && !session.to_string().contains("session_key"));
    let reused = problem(login(code).await, 401).await;
    assert_eq!(reused["code"], "wechat_code_invalid");
    let token = session["accessToken"].as_str().expect("token").to_owned();

    let profile = json_of(app.mp("GET", "/v1/mp/profile", &token, None).await, 200).await;
    assert_eq!(profile["registered"], false);
    assert_eq!(profile["miniProgram"]["platform"], true);
    // Nothing is in the wallet before registration.
    assert!(ids_of(&app, &token, "").await.is_empty());

    // Registration: validation first, then old receipts are collected.
    let mut bad = register_body(&app, "13900139000");
    bad["idNumber"] = "110105194912310021".into();
    bad["consent"]["version"] = "2020-01".into();
    let refused = problem(app.mp("PUT", "/v1/mp/profile", &token, Some(&bad)).await, 422).await;
    let pointers: Vec<&str> = refused["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["pointer"].as_str())
        .collect();
    assert_eq!(pointers, ["/idNumber", "/consent"], "{refused}");
    let registered = json_of(
        app.mp(
            "PUT",
            "/v1/mp/profile",
            &token,
            Some(&register_body(&app, "13900139000")),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(
        registered["collected"], 1,
        "only the person's own receipt: {registered}"
    );
    assert_eq!(registered["profile"]["name"], "张*丰");
    assert_eq!(registered["profile"]["idNumber"], "110***********002X");
    assert_eq!(registered["profile"]["phone"], "139****9000");
    assert_eq!(registered["profile"]["phoneVerified"], true);
    assert_eq!(ids_of(&app, &token, "").await, ["0000000001"]);

    // Subscribe consent reported by the mini-program, then a new receipt arrives:
    // collected at once and announced with one subscribe message.
    sim.grant_subscription(WALLET, &openid, WALLET_TMPL, 1);
    let subs = json_of(
        app.mp(
            "POST",
            "/v1/mp/subscriptions",
            &token,
            Some(
                &json!({"results": {"errMsg": "requestSubscribeMessage:ok", WALLET_TMPL: "accept", "OTHER": "accept"}}),
            ),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(subs["credits"][0]["remaining"], 1, "{subs}");
    assert_eq!(subs["ignored"], json!(["OTHER"]));
    let mut later = with_file(receipt(4, NAME, ID));
    later["busType"] = "01".into();
    later["issuedAt"] = "2026-11-25T10:00:00+08:00".into();
    assert_eq!(app.push(&issuer, &later).await.status(), 201);
    let sent = eventually(15, || {
        let sim = sim.clone();
        async move { sim.sent_subscribe_messages().into_iter().next() }
    })
    .await;
    assert_eq!(sent.touser, openid);
    assert_eq!(sent.template_id, WALLET_TMPL);
    let data = serde_json::to_value(&sent.data).expect("data");
    assert_eq!(data["amount2"]["value"], "128.50元");
    assert_eq!(data["character_string3"]["value"], "0000000004");
    // The credit is spent: the next receipt waits in the wallet without a message.
    let mut third = receipt(5, NAME, ID);
    third["issuedAt"] = "2026-11-20T08:00:00+08:00".into();
    third["chargeDetail"][1]["chargeName"] = "核磁共振检查费".into();
    assert_eq!(app.push(&issuer, &third).await.status(), 201);
    let credits = json_of(app.mp("GET", "/v1/mp/subscriptions", &token, None).await, 200).await;
    assert_eq!(credits["credits"][0]["remaining"], 0);
    eventually(10, || {
        let app = &app;
        let token = token.clone();
        async move { (ids_of(app, &token, "").await.len() == 3).then_some(()) }
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(sim.sent_subscribe_messages().len(), 1, "no credit, no message");

    // Retrieval: newest issue first, filters, stable cursor pages.
    assert_eq!(
        ids_of(&app, &token, "").await,
        ["0000000004", "0000000001", "0000000005"]
    );
    assert_eq!(ids_of(&app, &token, "?busType=01").await, ["0000000004"]);
    assert_eq!(
        ids_of(&app, &token, "?from=2026-11-23&to=2026-11-23").await,
        ["0000000001"]
    );
    assert_eq!(
        ids_of(&app, &token, "?q=%E6%A0%B8%E7%A3%81").await,
        ["0000000005"],
        "核磁"
    );
    assert_eq!(
        ids_of(&app, &token, "?q=%E7%A4%BA%E4%BE%8B%E5%B8%82").await.len(),
        3,
        "示例市 (agency)"
    );
    assert_eq!(
        ids_of(&app, &token, "?minAmount=128.50&maxAmount=128.50").await.len(),
        3
    );
    assert!(ids_of(&app, &token, "?minAmount=200").await.is_empty());
    assert_eq!(
        ids_of(
            &app,
            &token,
            &format!("?agency={AGENCY}&reversed=false&reimbursementState=INIT")
        )
        .await
        .len(),
        3
    );
    let first = json_of(app.mp("GET", "/v1/mp/receipts?limit=2", &token, None).await, 200).await;
    assert_eq!(first["items"].as_array().map(Vec::len), Some(2));
    let cursor = first["nextCursor"].as_str().expect("a next page");
    let second = json_of(
        app.mp("GET", &format!("/v1/mp/receipts?limit=2&cursor={cursor}"), &token, None)
            .await,
        200,
    )
    .await;
    assert_eq!(second["items"][0]["billNo"], "0000000005");
    assert!(second["nextCursor"].is_null());
    let bad = problem(
        app.mp("GET", "/v1/mp/receipts?from=23.11.2026&limit=0", &token, None)
            .await,
        422,
    )
    .await;
    assert_eq!(bad["errors"].as_array().map(Vec::len), Some(2), "{bad}");

    // Display: the detail with items, settlement and masked payer.
    let id1 = first["items"][1]["id"].as_str().expect("id").to_owned();
    let detail = json_of(
        app.mp("GET", &format!("/v1/mp/receipts/{id1}"), &token, None).await,
        200,
    )
    .await;
    assert_eq!(detail["billNo"], "0000000001");
    assert_eq!(detail["payer"], "张*丰");
    assert_eq!(detail["chargeDetail"][0]["amt"], "88.50");
    assert_eq!(detail["settlement"]["ownPay"], "48.50");
    assert_eq!(detail["listDetail"][1]["name"], "血常规");
    assert_eq!(detail["file"]["format"], "pdf");
    assert!(!detail.to_string().contains(ID), "no ID number in responses");

    // Storage: tags and a note of the payer's own.
    let annotated = json_of(
        app.mp(
            "PATCH",
            &format!("/v1/mp/receipts/{id1}"),
            &token,
            Some(&json!({"tags": ["医保", "医保", "2026"], "note": "待报销"})),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(annotated["tags"], json!(["医保", "2026"]));
    assert_eq!(annotated["note"], "待报销");
    let cleared = json_of(
        app.mp(
            "PATCH",
            &format!("/v1/mp/receipts/{id1}"),
            &token,
            Some(&json!({"note": null})),
        )
        .await,
        200,
    )
    .await;
    assert!(cleared["note"].is_null());
    assert_eq!(cleared["tags"], json!(["医保", "2026"]), "absent fields stay");

    // Download: a short-lived link streams the PDF, with ranges.
    let link = json_of(
        app.mp("POST", &format!("/v1/mp/receipts/{id1}/download"), &token, None)
            .await,
        200,
    )
    .await;
    assert_eq!(link["fileName"], "11060124-0000000001.pdf");
    let url = format!("{}{}", app.address, link["url"].as_str().expect("url"));
    let file = app.client.get(&url).send().await.expect("sent");
    assert_eq!(file.status().as_u16(), 200);
    assert_eq!(file.headers()["content-type"], "application/pdf");
    assert!(
        file.headers()["content-disposition"]
            .to_str()
            .unwrap_or_default()
            .contains("11060124-0000000001.pdf")
    );
    assert_eq!(file.bytes().await.expect("body").as_ref(), PDF);
    let part = app
        .client
        .get(&url)
        .header("range", "bytes=5-11")
        .send()
        .await
        .expect("sent");
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 5-11/{}", PDF.len()).as_str()
    );
    assert_eq!(part.bytes().await.expect("body").as_ref(), &PDF[5..12]);
    let beyond = app
        .client
        .get(&url)
        .header("range", format!("bytes={}-", PDF.len()))
        .send()
        .await
        .expect("sent");
    problem(beyond, 416).await;
    let keys = piaojia_miniprogram_api::tokens::TokenKeys::new(&app.keyring);
    let grant = keys
        .verify_download(url.split("token=").nth(1).expect("token"))
        .expect("our own link verifies");
    let stale = keys.issue_download(&grant, chrono::Utc::now() - chrono::Duration::minutes(10), 300);
    let stale_url = format!("{}/v1/mp/files/{id1}?token={stale}", app.address);
    assert_eq!(
        problem(app.client.get(&stale_url).send().await.expect("sent"), 403).await["code"],
        "download_link_expired"
    );
    let altered = url.replace("token=ey", "token=eX");
    assert_eq!(
        problem(app.client.get(&altered).send().await.expect("sent"), 403).await["code"],
        "download_link_invalid"
    );

    // Add by possession: a family member's receipt with the right check code;
    // wrong details and an organisation's receipt get one uniform answer.
    let wrong = app
        .mp(
            "POST",
            "/v1/mp/receipts",
            &token,
            Some(&json!({"billBatchCode": BATCH, "billNo": "0000000003", "random": "zzzzzz"})),
        )
        .await;
    let wrong = problem(wrong, 404).await;
    let org_try = app
        .mp(
            "POST",
            "/v1/mp/receipts",
            &token,
            Some(&json!({"billBatchCode": BATCH, "billNo": "0000000002", "random": random_of(2)})),
        )
        .await;
    let org_try = problem(org_try, 404).await;
    assert_eq!(wrong["detail"], org_try["detail"]);
    assert_eq!(wrong["code"], "receipt_not_found");
    let qr = format!("{BATCH},0000000003,{},128.50,20261123", random_of(3));
    let added = json_of(
        app.mp("POST", "/v1/mp/receipts", &token, Some(&json!({"qr": qr})))
            .await,
        201,
    )
    .await;
    assert_eq!(added["receipt"]["source"], "possession");
    let again = json_of(
        app.mp("POST", "/v1/mp/receipts", &token, Some(&json!({"qr": qr})))
            .await,
        200,
    )
    .await;
    assert_eq!(again["added"], false);
    assert_eq!(ids_of(&app, &token, "").await.len(), 4);

    // Remove one: gone from the list, and not collected back by a profile change.
    let id3 = added["receipt"]["id"].as_str().expect("id").to_owned();
    assert_eq!(
        app.mp("DELETE", &format!("/v1/mp/receipts/{id1}"), &token, None)
            .await
            .status(),
        204
    );
    assert_eq!(
        app.mp("DELETE", &format!("/v1/mp/receipts/{id1}"), &token, None)
            .await
            .status(),
        404
    );
    json_of(
        app.mp(
            "PUT",
            "/v1/mp/profile",
            &token,
            Some(&register_body(&app, "13900139000")),
        )
        .await,
        200,
    )
    .await;
    assert!(!ids_of(&app, &token, "").await.contains(&"0000000001".to_owned()));
    assert!(ids_of(&app, &token, "").await.contains(&"0000000003".to_owned()));
    assert_eq!(
        json_of(
            app.mp("GET", &format!("/v1/mp/receipts/{id3}"), &token, None).await,
            200
        )
        .await["source"],
        "possession"
    );

    // Reminders.
    let off = json_of(
        app.mp(
            "PUT",
            "/v1/mp/profile/reminders",
            &token,
            Some(&json!({"enabled": false})),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(off["reminders"], false);

    // Delete the account: erased, the old token refused, an audit kept; signing
    // in again starts clean.
    let payer_id = {
        let audit_before = app.store.payer_audit(uuid::Uuid::nil()).await.expect("audit");
        assert!(audit_before.is_empty());
        let me = app
            .store
            .login_payer(WALLET, &openid, None)
            .await
            .expect("the identity resolves");
        me.payer.id
    };
    assert_eq!(app.mp("DELETE", "/v1/mp/profile", &token, None).await.status(), 204);
    assert_eq!(
        problem(app.mp("GET", "/v1/mp/profile", &token, None).await, 401).await["code"],
        "token_invalid"
    );
    assert!(app.store.payer(payer_id).await.expect("read").is_none());
    let audit = app.store.payer_audit(payer_id).await.expect("audit");
    let events: Vec<&str> = audit.iter().map(|a| a.event.as_str()).collect();
    assert_eq!(events, ["registered", "profile_changed", "deleted"]);
    assert!(!serde_json::to_string(&audit).expect("json").contains(NAME));
    let fresh = app.mp_login(WALLET, &openid, None).await;
    assert_eq!(fresh["registered"], false);
    let token = fresh["accessToken"].as_str().expect("token");
    assert!(ids_of(&app, token, "").await.is_empty());
    // The download link died with the account.
    problem(app.client.get(&url).send().await.expect("sent"), 403).await;
});

both_modes!(
    refresh_tokens_rotate_and_reuse_revokes_the_family,
    |mode: Mode| async move {
        let (app, _issuer) = setup(mode).await;
        let openid = piaojia_wechat_sim::new_openid();
        let session = app.mp_login(WALLET, &openid, None).await;
        let refresh = |t: &str| {
            let app = &app;
            let body = json!({"refreshToken": t});
            async move {
                app.client
                    .post(format!("{}/v1/mp/session/refresh", app.address))
                    .json(&body)
                    .send()
                    .await
                    .expect("sent")
            }
        };
        let first = session["refreshToken"].as_str().expect("refresh").to_owned();
        let second = json_of(refresh(&first).await, 200).await;
        let second_rt = second["refreshToken"].as_str().expect("refresh").to_owned();
        assert_ne!(second_rt, first);
        let access = second["accessToken"].as_str().expect("access").to_owned();
        assert_eq!(app.mp("GET", "/v1/mp/profile", &access, None).await.status(), 200);

        // The first token again: reuse. The whole family is revoked, the newer one too.
        assert_eq!(
            problem(refresh(&first).await, 401).await["code"],
            "refresh_token_reused"
        );
        assert_eq!(
            problem(refresh(&second_rt).await, 401).await["code"],
            "refresh_token_revoked"
        );
        assert_eq!(
            problem(refresh("nonsense").await, 401).await["code"],
            "refresh_token_invalid"
        );

        // Logout revokes the sign-in's refresh tokens.
        let other = app.mp_login(WALLET, &openid, None).await;
        let rt = other["refreshToken"].as_str().expect("refresh");
        let at = other["accessToken"].as_str().expect("access");
        assert_eq!(
            app.mp("POST", "/v1/mp/session/logout", at, Some(&json!({"refreshToken": rt})))
                .await
                .status(),
            204
        );
        assert_eq!(problem(refresh(rt).await, 401).await["code"], "refresh_token_revoked");

        // A unionid makes one payer of two mini-programs.
        app.wechat_channel(AGENCY, "wechat_subscribe", AGENCY_MP, AGENCY_TMPL)
            .await;
        let union = "oUnion_0123456789abcdefghij";
        let a = app
            .mp_login(WALLET, &piaojia_wechat_sim::new_openid(), Some(union))
            .await;
        let b = app
            .mp_login(AGENCY_MP, &piaojia_wechat_sim::new_openid(), Some(union))
            .await;
        let sub = |s: &Value| {
            let token = s["accessToken"].as_str().expect("access");
            let claims = token.split('.').nth(1).expect("payload");
            let claims: Value = serde_json::from_slice(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(claims)
                    .expect("base64url"),
            )
            .expect("json");
            claims["sub"].as_str().expect("sub").to_owned()
        };
        assert_eq!(sub(&a), sub(&b));
        let header: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(
                    a["accessToken"]
                        .as_str()
                        .expect("access")
                        .split('.')
                        .next()
                        .expect("header"),
                )
                .expect("base64url"),
        )
        .expect("json");
        assert_eq!(header["alg"], "HS256");
        assert!(header["kid"].is_string(), "tokens name their key");
    }
);

both_modes!(
    nobody_reaches_another_payers_or_agencys_receipts,
    |mode: Mode| async move {
        let (app, issuer) = setup(mode).await;
        app.create_agency(OTHER_AGENCY, &[]).await;
        let other_issuer = app.create_issuer(OTHER_AGENCY, "hosp02-his", None).await;
        app.wechat_channel(AGENCY, "wechat_subscribe", AGENCY_MP, AGENCY_TMPL)
            .await;

        // Alice's receipts at both agencies; Bob is another payer.
        app.push(&issuer, &with_file(receipt(1, NAME, ID))).await;
        let mut elsewhere = with_file(receipt(2, NAME, ID));
        elsewhere["billBatchCode"] = "11060125".into();
        assert_eq!(app.push(&other_issuer, &elsewhere).await.status(), 201);
        app.push(&issuer, &with_file(receipt(3, "李四", "110101199003077774")))
            .await;

        let alice_openid = piaojia_wechat_sim::new_openid();
        let alice = app.mp_login(WALLET, &alice_openid, None).await;
        let alice_token = alice["accessToken"].as_str().expect("token").to_owned();
        let reg = json_of(
            app.mp(
                "PUT",
                "/v1/mp/profile",
                &alice_token,
                Some(&register_body(&app, "13900139000")),
            )
            .await,
            200,
        )
        .await;
        assert_eq!(reg["collected"], 2, "both agencies through the platform wallet");
        let alice_ids: Vec<String> =
            json_of(app.mp("GET", "/v1/mp/receipts", &alice_token, None).await, 200).await["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|i| i["id"].as_str().expect("id").to_owned())
                .collect();

        let bob = app.mp_login(WALLET, &piaojia_wechat_sim::new_openid(), None).await;
        let bob_token = bob["accessToken"].as_str().expect("token").to_owned();
        for id in &alice_ids {
            for (method, path, body) in [
                ("GET", format!("/v1/mp/receipts/{id}"), None),
                ("PATCH", format!("/v1/mp/receipts/{id}"), Some(json!({"note": "mine"}))),
                ("POST", format!("/v1/mp/receipts/{id}/download"), None),
                ("DELETE", format!("/v1/mp/receipts/{id}"), None),
            ] {
                let resp = app.mp(method, &path, &bob_token, body.as_ref()).await;
                assert_eq!(problem(resp, 404).await["code"], "receipt_not_found", "{method} {path}");
            }
        }
        assert!(ids_of(&app, &bob_token, "").await.is_empty());
        // Alice's download link is Alice's: Bob's token cannot mint one, and a link for
        // one receipt does not open another.
        let link = json_of(
            app.mp(
                "POST",
                &format!("/v1/mp/receipts/{}/download", alice_ids[0]),
                &alice_token,
                None,
            )
            .await,
            200,
        )
        .await;
        let url = link["url"].as_str().expect("url");
        let swapped = url.replace(&alice_ids[0], &alice_ids[1]);
        problem(
            app.client
                .get(format!("{}{swapped}", app.address))
                .send()
                .await
                .expect("sent"),
            403,
        )
        .await;

        // Alice through the hospital's own mini-program (same person by unionid is
        // not needed: she registers there too) sees only that hospital's receipts.
        let in_hospital = app.mp_login(AGENCY_MP, &piaojia_wechat_sim::new_openid(), None).await;
        let h_token = in_hospital["accessToken"].as_str().expect("token").to_owned();
        let code = app
            .sim
            .as_ref()
            .expect("sim")
            .issue_phone_code(AGENCY_MP, "13900139000");
        let body = json!({"name": NAME, "idType": "resident", "idNumber": ID, "phoneCode": code,
                      "consent": {"version": "2026-11", "accepted": true}});
        json_of(app.mp("PUT", "/v1/mp/profile", &h_token, Some(&body)).await, 200).await;
        assert_eq!(ids_of(&app, &h_token, "").await, ["0000000001"]);
        let other_agency_receipt: Vec<String> =
            json_of(app.mp("GET", "/v1/mp/receipts", &alice_token, None).await, 200).await["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter(|i| i["billBatchCode"] == "11060125")
                .map(|i| i["id"].as_str().expect("id").to_owned())
                .collect();
        let foreign = &other_agency_receipt[0];
        problem(
            app.mp("GET", &format!("/v1/mp/receipts/{foreign}"), &h_token, None)
                .await,
            404,
        )
        .await;
        // Possession of another agency's receipt proves nothing in a hospital's mini-program.
        let resp = app
            .mp(
                "POST",
                "/v1/mp/receipts",
                &h_token,
                Some(&json!({"billBatchCode": "11060125", "billNo": "0000000002", "random": random_of(2)})),
            )
            .await;
        assert_eq!(problem(resp, 404).await["code"], "receipt_not_found");

        // Tokens: missing, altered, alg none, expired-looking garbage.
        problem(app.mp("GET", "/v1/mp/receipts", "", None).await, 401).await;
        let mut parts: Vec<&str> = alice_token.split('.').collect();
        let forged_claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(
                &json!({"iss": "piaojia", "aud": "piaojia-miniprogram", "sub": uuid::Uuid::now_v7(),
            "app": WALLET, "iat": 0, "exp": 4_000_000_000_i64, "jti": uuid::Uuid::now_v7()}),
            )
            .expect("json"),
        );
        parts[1] = &forged_claims;
        let altered = parts.join(".");
        let resp = app.mp("GET", "/v1/mp/receipts", &altered, None).await;
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        assert_eq!(problem(resp, 401).await["code"], "token_invalid");
        let none = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            forged_claims
        );
        assert_eq!(
            problem(app.mp("GET", "/v1/mp/receipts", &none, None).await, 401).await["code"],
            "token_invalid"
        );

        // Possession attempts are rate-limited.
        let mut limited = false;
        for _ in 0..15 {
            let resp = app
                .mp(
                    "POST",
                    "/v1/mp/receipts",
                    &bob_token,
                    Some(&json!({"billBatchCode": BATCH, "billNo": "0000000001", "random": "aaaaaa"})),
                )
                .await;
            if resp.status().as_u16() == 429 {
                assert!(resp.headers().contains_key("retry-after"));
                assert_eq!(problem(resp, 429).await["code"], "too_many_attempts");
                limited = true;
                break;
            }
            problem(resp, 404).await;
        }
        assert!(limited, "guessing check codes is rate-limited");
    }
);

both_modes!(
    long_term_templates_and_the_hospitals_own_mini_program,
    |mode: Mode| async move {
        let app = TestConfig::new(mode).await.spawn().await;
        let sim = app.sim.clone().expect("sim");
        app.create_agency(AGENCY, &[]).await;
        let issuer = app.create_issuer(AGENCY, "hosp01-his", None).await;
        app.wechat_channel(AGENCY, "wechat_subscribe", AGENCY_MP, AGENCY_TMPL)
            .await;
        app.platform_wallet(WALLET, WALLET_TMPL, true).await;

        // Registered in both; consent only in the platform wallet, whose template is long-term.
        let openid_wallet = piaojia_wechat_sim::new_openid();
        let w = app.mp_login(WALLET, &openid_wallet, Some("oUnion_longterm_0001")).await;
        let wt = w["accessToken"].as_str().expect("token").to_owned();
        json_of(
            app.mp("PUT", "/v1/mp/profile", &wt, Some(&register_body(&app, "13900139000")))
                .await,
            200,
        )
        .await;
        let h = app
            .mp_login(
                AGENCY_MP,
                &piaojia_wechat_sim::new_openid(),
                Some("oUnion_longterm_0001"),
            )
            .await;
        let ht = h["accessToken"].as_str().expect("token").to_owned();
        json_of(
            app.mp(
                "POST",
                "/v1/mp/subscriptions",
                &wt,
                Some(&json!({"results": {WALLET_TMPL: "accept"}})),
            )
            .await,
            200,
        )
        .await;
        // The hospital's mini-program has no consent: the platform wallet announces.
        for n in 1..=3 {
            assert_eq!(app.push(&issuer, &receipt(n, NAME, ID)).await.status(), 201);
        }
        let sent = eventually(15, || {
            let sim = sim.clone();
            async move {
                let s = sim.sent_subscribe_messages();
                (s.len() == 3).then_some(s)
            }
        })
        .await;
        assert!(
            sent.iter()
                .all(|m| m.touser == openid_wallet && m.template_id == WALLET_TMPL)
        );
        // The same payer sees them from the hospital's mini-program too.
        assert_eq!(ids_of(&app, &ht, "").await.len(), 3);

        // A refusal ends the long-term consent.
        json_of(
            app.mp(
                "POST",
                "/v1/mp/subscriptions",
                &wt,
                Some(&json!({"results": {WALLET_TMPL: "reject"}})),
            )
            .await,
            200,
        )
        .await;
        assert_eq!(app.push(&issuer, &receipt(4, NAME, ID)).await.status(), 201);
        eventually(10, || {
            let app = &app;
            let ht = ht.clone();
            async move { (ids_of(app, &ht, "").await.len() == 4).then_some(()) }
        })
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(sim.sent_subscribe_messages().len(), 3);
    }
);

/// One guess at a check code (someone else's receipt), optionally through a proxy
/// that says whom it forwards: 404 while attempts are allowed, then 429.
async fn guess(app: &TestApp, token: &str, forwarded_for: Option<&str>) -> u16 {
    let mut req = app
        .client
        .post(format!("{}/v1/mp/receipts", app.address))
        .bearer_auth(token)
        .json(&json!({"billBatchCode": BATCH, "billNo": "0000000001", "random": "aaaaaa"}));
    if let Some(client) = forwarded_for {
        req = req.header("x-forwarded-for", client);
    }
    let status = req.send().await.expect("request sent").status().as_u16();
    assert!(status == 404 || status == 429, "{status}");
    status
}

both_modes!(
    possession_limits_count_clients_behind_trusted_proxies,
    |mode: Mode| async move {
        let mut config = TestConfig::new(mode).await;
        config
            .set("PIAOJIA_SERVER__TRUSTED_PROXIES", "127.0.0.1")
            .set("PIAOJIA_MINIPROGRAM__POSSESSION_PER_PAYER_PER_MIN", "100")
            .set("PIAOJIA_MINIPROGRAM__POSSESSION_PER_IP_PER_MIN", "3");
        let app = config.spawn().await;
        app.platform_wallet(WALLET, WALLET_TMPL, false).await;
        let mut tokens = Vec::new();
        for _ in 0..3 {
            let session = app.mp_login(WALLET, &piaojia_wechat_sim::new_openid(), None).await;
            tokens.push(session["accessToken"].as_str().expect("token").to_owned());
        }
        // Three guesses from one client address, by two payers, through the proxy:
        // the address is spent, whoever asks next.
        for token in [&tokens[0], &tokens[1], &tokens[0]] {
            assert_eq!(guess(&app, token, Some("203.0.113.7")).await, 404);
        }
        assert_eq!(guess(&app, &tokens[1], Some("203.0.113.7")).await, 429);
        // A forged left-most entry does not make a new client: the proxy appended
        // the address it saw.
        assert_eq!(guess(&app, &tokens[2], Some("198.51.100.1, 203.0.113.7")).await, 429);
        // Another client behind the same proxy is not held back.
        assert_eq!(guess(&app, &tokens[2], Some("203.0.113.8")).await, 404);
    }
);

/// In scale-out a guesser cannot multiply the limit by spreading attempts over
/// gateway processes: the count lives in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn possession_limits_hold_across_gateway_processes() {
    let mut config = TestConfig::new(Mode::ScaleOut).await;
    config
        .set("PIAOJIA_MINIPROGRAM__POSSESSION_PER_PAYER_PER_MIN", "4")
        .set("PIAOJIA_MINIPROGRAM__POSSESSION_PER_IP_PER_MIN", "100");
    let first = config.spawn().await;
    let second = config.spawn().await;
    first.platform_wallet(WALLET, WALLET_TMPL, false).await;
    let session = first.mp_login(WALLET, &piaojia_wechat_sim::new_openid(), None).await;
    let token = session["accessToken"].as_str().expect("token");
    for gateway in [&first, &second, &first, &second] {
        assert_eq!(guess(gateway, token, None).await, 404);
    }
    assert_eq!(guess(&first, token, None).await, 429);
    assert_eq!(guess(&second, token, None).await, 429);
}

// Typing a name and an ID number (which leak widely) proves nothing: it collects
// no receipts. WeChat's real-name check of both does; a mismatch or a spent code
// is refused; possession works either way.
both_modes!(
    collection_by_identity_needs_a_verified_identity,
    |mode: Mode| async move {
        let (app, issuer) = setup(mode).await;
        let sim = app.sim.clone().expect("sandbox simulator");
        // Receipts of the person, without a phone number.
        for n in 1..=2 {
            let mut r = receipt(n, NAME, ID);
            r.as_object_mut().expect("object").remove("tel");
            json_of(app.push(&issuer, &r).await, 201).await;
        }
        let openid = piaojia_wechat_sim::new_openid();
        let session = app.mp_login(WALLET, &openid, None).await;
        let token = session["accessToken"].as_str().expect("token").to_owned();

        // Name, ID number and a typed phone: registered, nothing collected.
        let typed = json!({
            "name": NAME, "idType": "resident", "idNumber": ID, "phone": "13900139000",
            "consent": {"version": "2026-11", "accepted": true}
        });
        let registered = json_of(app.mp("PUT", "/v1/mp/profile", &token, Some(&typed)).await, 200).await;
        assert_eq!(registered["collected"], 0, "{registered}");
        assert!(registered["profile"]["verifiedVia"].is_null());
        assert!(ids_of(&app, &token, "").await.is_empty());
        // A later receipt is not collected for an unverified identity either.
        let mut later = receipt(3, NAME, ID);
        later.as_object_mut().expect("object").remove("tel");
        json_of(app.push(&issuer, &later).await, 201).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(ids_of(&app, &token, "").await.is_empty());
        // Possession still adds a receipt.
        let added = app
            .mp(
                "POST",
                "/v1/mp/receipts",
                &token,
                Some(&json!({"billBatchCode": BATCH, "billNo": "0000000002", "random": random_of(2)})),
            )
            .await;
        assert_eq!(added.status().as_u16(), 201);

        // WeChat's real-name record says otherwise: refused, nothing changes.
        sim.set_real_name(&openid, "李四", ID);
        let with_code = |code: String| {
            let mut body = typed.clone();
            body["realNameCode"] = code.into();
            body
        };
        let code = sim.issue_real_name_code(WALLET, &openid);
        let refused = problem(
            app.mp("PUT", "/v1/mp/profile", &token, Some(&with_code(code.clone())))
                .await,
            422,
        )
        .await;
        assert_eq!(refused["errors"][0]["pointer"], "/realNameCode", "{refused}");
        assert_eq!(refused["errors"][0]["code"], "not_verified");
        // A spent code is refused as such.
        let spent = problem(
            app.mp("PUT", "/v1/mp/profile", &token, Some(&with_code(code))).await,
            422,
        )
        .await;
        assert_eq!(spent["errors"][0]["code"], "invalid_value", "{spent}");
        // Someone else's code (another WeChat user) does not verify this payer.
        let foreign = sim.issue_real_name_code(WALLET, &piaojia_wechat_sim::new_openid());
        let foreign = problem(
            app.mp("PUT", "/v1/mp/profile", &token, Some(&with_code(foreign))).await,
            422,
        )
        .await;
        assert_eq!(foreign["errors"][0]["pointer"], "/realNameCode");

        // The record matches: verified, and every receipt of the person is collected.
        sim.set_real_name(&openid, NAME, ID);
        let code = sim.issue_real_name_code(WALLET, &openid);
        let verified = json_of(
            app.mp("PUT", "/v1/mp/profile", &token, Some(&with_code(code))).await,
            200,
        )
        .await;
        assert_eq!(verified["profile"]["verifiedVia"], "wechat_realname", "{verified}");
        assert!(verified["profile"]["verifiedAt"].is_string());
        assert_eq!(verified["collected"], 2, "receipts 1 and 3 (2 was there by possession)");
        let mut all = ids_of(&app, &token, "").await;
        all.sort();
        assert_eq!(all, ["0000000001", "0000000002", "0000000003"]);
        let profile = json_of(app.mp("GET", "/v1/mp/profile", &token, None).await, 200).await;
        assert_eq!(profile["verifiedVia"], "wechat_realname");
    }
);

// Deleting the account cancels every delivery to the payer not yet made: it is
// recorded as cancelled and never sent, even once WeChat answers again.
both_modes!(erasure_cancels_pending_messages, |mode: Mode| async move {
    let (app, issuer) = setup(mode).await;
    let sim = app.sim.clone().expect("sandbox simulator");
    let openid = piaojia_wechat_sim::new_openid();
    let session = app.mp_login(WALLET, &openid, None).await;
    let token = session["accessToken"].as_str().expect("token").to_owned();
    json_of(
        app.mp(
            "PUT",
            "/v1/mp/profile",
            &token,
            Some(&register_body(&app, "13900139000")),
        )
        .await,
        200,
    )
    .await;
    sim.grant_subscription(WALLET, &openid, WALLET_TMPL, 1);
    json_of(
        app.mp(
            "POST",
            "/v1/mp/subscriptions",
            &token,
            Some(&json!({"results": {"errMsg": "requestSubscribeMessage:ok", WALLET_TMPL: "accept"}})),
        )
        .await,
        200,
    )
    .await;
    // WeChat fails every send for now: the announcement waits for a retry.
    sim.set_faults(
        piaojia_wechat_sim::FaultScope::All,
        piaojia_wechat_sim::Faults {
            error_rate: 1.0,
            errcode: -1,
            ..Default::default()
        },
    );
    json_of(app.push(&issuer, &receipt(1, NAME, ID)).await, 201).await;
    let pending = eventually(15, || {
        let app = &app;
        async move {
            let list: Value = app
                .ops("GET", "/v1/ops/deliveries?channel=wallet_subscribe", None)
                .await
                .json()
                .await
                .ok()?;
            let d = list.as_array()?.first()?.clone();
            (d["attempts"].as_i64()? >= 1).then_some(d)
        }
    })
    .await;
    assert_eq!(pending["status"], "pending", "{pending}");
    // The issuer's read-back shows what its push called for, not the wallet's own
    // announcement: that would tell it which payers have a verified wallet.
    let held: Value = app
        .signed(&issuer, "GET", &format!("/v1/receipts/{BATCH}/0000000001"), None)
        .await
        .json()
        .await
        .expect("json");
    assert!(
        held["deliveries"]
            .as_array()
            .expect("deliveries")
            .iter()
            .all(|d| d["channel"] != "wallet_subscribe"),
        "{held}"
    );

    assert_eq!(app.mp("DELETE", "/v1/mp/profile", &token, None).await.status(), 204);
    sim.clear_faults();
    // Past every retry of the test schedule (200 ms, 200 ms): nothing was sent.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(
        sim.sent_subscribe_messages().iter().all(|m| m.touser != openid),
        "nothing reaches an erased payer"
    );
    let cancelled: Value = app
        .ops("GET", "/v1/ops/deliveries?status=cancelled", None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(cancelled.as_array().map(Vec::len), Some(1), "{cancelled}");
    assert_eq!(cancelled[0]["id"], pending["id"]);
    assert_eq!(cancelled[0]["lastError"], "the payer erased their account");
});
