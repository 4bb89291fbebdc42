use piaojia_tests::both_modes;
use piaojia_tests::harness::{Mode, TestApp, TestConfig, eventually, receiver};
use piaojia_tests::samples::{self, BATCH};
use serde_json::{Value, json};

const AGENCY: &str = "12110000400000001A";
const OA: &str = "wx0a1b2c3d4e5f6a7b";
const MP: &str = "wx9a8b7c6d5e4f3a2b";

fn with_openid(n: u64, openid: &str) -> Value {
    let mut r = samples::outpatient(n);
    r["openID"] = openid.into();
    r
}

async fn receipt(app: &TestApp, issuer: &piaojia_tests::harness::Issuer, n: u64) -> Value {
    app.signed(issuer, "GET", &format!("/v1/receipts/{BATCH}/{n:010}"), None)
        .await
        .json()
        .await
        .expect("json")
}

/// Waits until the receipt's first delivery reaches `status`; returns the receipt.
async fn first_delivery_reaches(app: &TestApp, issuer: &piaojia_tests::harness::Issuer, n: u64, status: &str) -> Value {
    eventually(10, || async move {
        let r = receipt(app, issuer, n).await;
        (r["deliveries"][0]["status"] == status).then_some(r)
    })
    .await
}

both_modes!(
    receipt_reaches_payer_and_issuer_hears_the_outcome,
    |mode: Mode| async move {
        let (hook, captured, _h) = receiver();
        let app = TestConfig::new(mode).await.spawn().await;
        let sim = app.sim.clone().expect("sandbox simulator");
        app.create_agency(AGENCY, &[]).await;
        let issuer = app.create_issuer(AGENCY, "hosp01-his", Some(&hook)).await;
        app.wechat_channel(AGENCY, "wechat_template", OA, "TMPL-RECEIPT-ISSUED")
            .await;
        let openid = piaojia_wechat_sim::new_openid();

        let created: Value = app
            .push(&issuer, &with_openid(1, &openid))
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(created["deliveries"][0]["channel"], "wechat_template");

        let sent = eventually(10, || {
            let sim = sim.clone();
            async move { sim.sent_template_messages().into_iter().next() }
        })
        .await;
        assert_eq!(sent.touser, openid);
        assert_eq!(sent.template_id, "TMPL-RECEIPT-ISSUED");
        let data = serde_json::to_value(&sent.data).expect("data");
        assert_eq!(data["thing1"]["value"], "示例市第一人民医院");
        assert_eq!(data["amount2"]["value"], "128.50元");
        assert_eq!(data["character_string3"]["value"], "0000000001");
        assert_eq!(data["time4"]["value"], "2026-11-23 09:30", "Beijing time");

        let read = first_delivery_reaches(&app, &issuer, 1, "delivered").await;
        assert_eq!(read["deliveries"][0]["attempts"], 1);

        // The issuer's callback hears the outcome, signed the Standard Webhooks way.
        let (headers, body) = eventually(10, || {
            let c = captured.clone();
            async move { c.lock().expect("lock").first().cloned() }
        })
        .await;
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .expect(name)
        };
        let expected = piaojia_notifier::channels::webhook::signature_header(
            std::slice::from_ref(&issuer.secret),
            &header("webhook-id"),
            header("webhook-timestamp").parse().expect("ts"),
            &body,
        );
        assert_eq!(header("webhook-signature"), expected);
        let event: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(event["type"], "delivery.outcome");
        assert_eq!(event["data"]["status"], "delivered");
        assert_eq!(event["data"]["billNo"], "0000000001");
    }
);

both_modes!(
    permanent_failure_ends_after_one_attempt_and_operators_can_redrive,
    |mode: Mode| async move {
        let app = TestConfig::new(mode).await.spawn().await;
        let sim = app.sim.clone().expect("sandbox simulator");
        let issuer = app.issuer().await;
        app.wechat_channel(&issuer.agency_code, "wechat_subscribe", MP, "SUB-TMPL-1")
            .await;
        let openid = piaojia_wechat_sim::new_openid();
        app.push(&issuer, &with_openid(2, &openid)).await;

        // No subscription credit: 43101 is a business outcome, not retried.
        let read = first_delivery_reaches(&app, &issuer, 2, "failed").await;
        assert_eq!(read["deliveries"][0]["attempts"], 1);
        assert!(
            read["deliveries"][0]["lastError"]
                .as_str()
                .unwrap_or_default()
                .contains("43101"),
            "{read}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        assert_eq!(
            receipt(&app, &issuer, 2).await["deliveries"][0]["attempts"],
            1,
            "not retried"
        );
        assert_eq!(sim.calls_to("/cgi-bin/message/subscribe/send").len(), 1);

        let failed: Value = app
            .ops("GET", "/v1/ops/deliveries?status=failed", None)
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(failed.as_array().map(Vec::len), Some(1));

        // The payer subscribes; the operator re-drives what failed.
        sim.grant_subscription(MP, &openid, "SUB-TMPL-1", 1);
        let resp: Value = app
            .ops(
                "POST",
                "/v1/ops/deliveries/redrive",
                Some(&json!({ "status": "failed" })),
            )
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(resp["redriven"], 1);
        first_delivery_reaches(&app, &issuer, 2, "delivered").await;
        assert_eq!(sim.sent_subscribe_messages().len(), 1);

        // A re-drive must name what it means.
        let resp = app.ops("POST", "/v1/ops/deliveries/redrive", Some(&json!({}))).await;
        assert_eq!(resp.status().as_u16(), 422);
        let resp = app
            .client
            .get(format!("{}/v1/ops/deliveries", app.address))
            .send()
            .await
            .expect("sent");
        assert_eq!(resp.status().as_u16(), 401, "operators only");
    }
);

both_modes!(
    outage_waits_behind_the_breaker_then_everything_is_delivered,
    |mode: Mode| async move {
        let app = TestConfig::new(mode).await.spawn().await;
        let sim = app.sim.clone().expect("sandbox simulator");
        let issuer = app.issuer().await;
        app.wechat_channel(&issuer.agency_code, "wechat_template", OA, "TMPL-1")
            .await;
        sim.set_faults(
            piaojia_wechat_sim::FaultScope::All,
            piaojia_wechat_sim::Faults {
                outage: true,
                ..Default::default()
            },
        );
        for n in 1..=8u64 {
            app.push(&issuer, &with_openid(n, &piaojia_wechat_sim::new_openid()))
                .await;
        }
        // The breaker opens: an alert says so.
        eventually(15, || {
            let app = &app;
            async move {
                let alerts: Value = app.ops("GET", "/v1/ops/alerts", None).await.json().await.ok()?;
                alerts
                    .as_array()?
                    .iter()
                    .any(|a| a["rule"] == "breaker_open")
                    .then_some(())
            }
        })
        .await;
        let calls_during_outage = sim.calls().len();
        sim.clear_faults();
        // Everything waiting or parked for the outage flows again without an operator.
        eventually(30, || {
            let sim = sim.clone();
            async move { (sim.sent_template_messages().len() == 8).then_some(()) }
        })
        .await;
        // The send reaches WeChat a moment before its completion is recorded.
        for n in 1..=8u64 {
            let (app, issuer) = (&app, &issuer);
            eventually(10, || async move {
                let r = receipt(app, issuer, n).await;
                (r["deliveries"][0]["status"] == "delivered").then_some(())
            })
            .await;
        }
        assert!(
            calls_during_outage < 8 * 3 + 10,
            "the breaker kept deliveries from burning their retries ({calls_during_outage} calls)"
        );
    }
);

both_modes!(
    invalidated_token_is_refreshed_once_and_the_send_retried,
    |mode: Mode| async move {
        let app = TestConfig::new(mode).await.spawn().await;
        let sim = app.sim.clone().expect("sandbox simulator");
        let issuer = app.issuer().await;
        app.wechat_channel(&issuer.agency_code, "wechat_template", OA, "TMPL-1")
            .await;
        app.push(&issuer, &with_openid(1, &piaojia_wechat_sim::new_openid()))
            .await;
        eventually(10, || {
            let sim = sim.clone();
            async move { (sim.sent_template_messages().len() == 1).then_some(()) }
        })
        .await;
        assert_eq!(sim.token_issues(OA), 1);

        sim.invalidate_tokens(OA);
        app.push(&issuer, &with_openid(2, &piaojia_wechat_sim::new_openid()))
            .await;
        eventually(10, || {
            let sim = sim.clone();
            async move { (sim.sent_template_messages().len() == 2).then_some(()) }
        })
        .await;
        assert_eq!(sim.token_issues(OA), 2, "exactly one refresh");
        let r = receipt(&app, &issuer, 2).await;
        assert_eq!(
            r["deliveries"][0]["attempts"], 1,
            "the retry happened inside the one attempt"
        );
        assert_eq!(
            sim.calls_to("/cgi-bin/token").len(),
            0,
            "the classic token API is never used"
        );
    }
);

both_modes!(
    ops_reports_channels_interfaces_and_alerts_once,
    |mode: Mode| async move {
        let (robot, captured, _h) = receiver();
        let mut config = TestConfig::new(mode).await;
        config
            .set("PIAOJIA_ALERTS__WEBHOOK_URL", robot)
            .set("PIAOJIA_ALERTS__MIN_ATTEMPTS", "1")
            .set("PIAOJIA_ALERTS__SUCCESS_RATE_BELOW", "0.5");
        let app = config.spawn().await;
        let sim = app.sim.clone().expect("sandbox simulator");
        let notifier = app.notifier.clone().expect("in-process notifier");
        let issuer = app.issuer().await;
        app.wechat_channel(&issuer.agency_code, "wechat_subscribe", MP, "SUB-1")
            .await;
        let openid = piaojia_wechat_sim::new_openid();
        app.push(&issuer, &with_openid(1, &openid)).await;
        first_delivery_reaches(&app, &issuer, 1, "failed").await;

        // 0 of 1 succeeded: one alert, however often the rules run.
        notifier.evaluate_alerts().await.expect("evaluate");
        notifier.evaluate_alerts().await.expect("evaluate");
        let alerts: Value = app.ops("GET", "/v1/ops/alerts", None).await.json().await.expect("json");
        let rate: Vec<&Value> = alerts
            .as_array()
            .expect("list")
            .iter()
            .filter(|a| a["rule"] == "success_rate")
            .collect();
        assert_eq!(rate.len(), 1, "{alerts}");
        assert_eq!(rate[0]["state"], "firing");
        assert_eq!(captured.lock().expect("lock").len(), 1, "notified once");
        let robot_body: Value = serde_json::from_slice(&captured.lock().expect("lock")[0].1).expect("json");
        assert_eq!(robot_body["msgtype"], "markdown", "WeCom group-robot format");

        // Recovery: the payer subscribes and the operator re-drives; 1 of 2 is not below 0.5.
        sim.grant_subscription(MP, &openid, "SUB-1", 1);
        app.ops("POST", "/v1/ops/deliveries/redrive", Some(&json!({ "all": true })))
            .await;
        first_delivery_reaches(&app, &issuer, 1, "delivered").await;
        notifier.evaluate_alerts().await.expect("evaluate");
        notifier.evaluate_alerts().await.expect("evaluate");
        let alerts: Value = app.ops("GET", "/v1/ops/alerts", None).await.json().await.expect("json");
        let rate: Vec<&Value> = alerts
            .as_array()
            .expect("list")
            .iter()
            .filter(|a| a["rule"] == "success_rate")
            .collect();
        assert_eq!(rate.len(), 1);
        assert_eq!(rate[0]["state"], "resolved");
        assert_eq!(captured.lock().expect("lock").len(), 2, "fired once, cleared once");

        let channels: Value = app
            .ops("GET", "/v1/ops/channels", None)
            .await
            .json()
            .await
            .expect("json");
        let ch = channels
            .as_array()
            .expect("list")
            .iter()
            .find(|c| c["key"] == format!("wechat_subscribe:{MP}:SUB-1"))
            .expect("channel tracked");
        assert_eq!(ch["last5m"]["attempts"], 2);
        assert_eq!(ch["last5m"]["successes"], 1);
        assert!(ch["last5m"]["p99Ms"].is_u64());
        let interfaces: Value = app
            .ops("GET", "/v1/ops/interfaces", None)
            .await
            .json()
            .await
            .expect("json");
        assert!(
            interfaces["outbound"]
                .as_array()
                .expect("list")
                .iter()
                .any(|i| i["key"] == format!("wechat:{MP}:subscribe_send")),
            "{interfaces}"
        );
        assert!(
            interfaces["inbound"]
                .as_array()
                .expect("list")
                .iter()
                .any(|i| i["key"] == "issuer:hosp01-his"),
            "{interfaces}"
        );
    }
);

// WeChat reports a template message's final state to our message server later:
// a blocked user turns the delivered message into a failed one.
both_modes!(
    template_send_job_finish_reaches_our_message_server,
    |mode: Mode| async move {
        let app = TestConfig::new(mode).await.spawn().await;
        let sim = app.sim.clone().expect("sandbox simulator");
        let issuer = app.issuer().await;
        let (secret, token, aes_key) = (
            "oa-secret",
            "msgtoken123",
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
        );
        piaojia_gateway::provisioning::set_channel(
            app.store.as_ref(),
            &app.keyring,
            piaojia_gateway::provisioning::ChannelSpec {
                agency_code: Some(issuer.agency_code.clone()),
                kind: "wechat_template".into(),
                wechat_app_id: OA.into(),
                secret: secret.into(),
                template_id: "TMPL-1".into(),
                fields: serde_json::Map::new(),
                page: None,
                message_token: Some(token.into()),
                encoding_aes_key: Some(aes_key.into()),
                enabled: true,
                long_term: false,
            },
        )
        .await
        .expect("channel");
        // Secure mode, as production accounts are configured.
        let server = piaojia_wechat_sim::MessageServer {
            url: format!("{}/v1/wechat/{OA}/events", app.address),
            token: token.into(),
            encoding_aes_key: Some(aes_key.into()),
        };
        sim.add_app(
            piaojia_wechat_sim::SimApp::new(OA, secret, piaojia_wechat_sim::AppKind::OfficialAccount)
                .with_message_server(server),
        );

        // WeChat's URL check: echostr back only with a valid signature.
        let ts = chrono::Utc::now().timestamp().to_string();
        let (ts, nonce) = (ts.as_str(), "1514711492");
        let sig = piaojia_wechat::msgcrypt::signature(token, ts, nonce);
        let ok = app
            .get(&format!(
                "/v1/wechat/{OA}/events?signature={sig}&timestamp={ts}&nonce={nonce}&echostr=42"
            ))
            .await;
        assert_eq!(ok.text().await.expect("text"), "42");
        let bad = app
            .get(&format!(
                "/v1/wechat/{OA}/events?signature=00&timestamp={ts}&nonce={nonce}&echostr=42"
            ))
            .await;
        assert_eq!(piaojia_tests::harness::problem(bad, 403).await["code"], "bad_signature");

        let openid = piaojia_wechat_sim::new_openid();
        sim.set_template_status(OA, &openid, piaojia_wechat_sim::TemplateStatus::UserBlock);
        app.push(&issuer, &with_openid(1, &openid)).await;
        let read = first_delivery_reaches(&app, &issuer, 1, "failed").await;
        assert!(
            read["deliveries"][0]["lastError"]
                .as_str()
                .unwrap_or_default()
                .contains("user block"),
            "{read}"
        );
        let pushed = sim.wait_for_pushes(1, std::time::Duration::from_secs(5)).await;
        assert!(pushed[0].acknowledged, "we answered `success`");
    }
);

/// Two notifier processes share the outbox: every receipt is sent exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_notifiers_send_each_receipt_once() {
    let config = TestConfig::new(Mode::ScaleOut).await;
    let first = config.spawn().await;
    let second = config.spawn().await;
    let issuer = first.issuer().await;
    first
        .wechat_channel(&issuer.agency_code, "wechat_template", OA, "TMPL-1")
        .await;
    // Each process talks to its own sandbox simulator; both know the app.
    let sims = [first.sim.clone().expect("sim"), second.sim.clone().expect("sim")];
    sims[1].add_app(piaojia_wechat_sim::SimApp::new(
        OA,
        &format!("secret-of-{OA}"),
        piaojia_wechat_sim::AppKind::OfficialAccount,
    ));
    const N: usize = 40;
    for n in 1..=N as u64 {
        let gateway = if n % 2 == 0 { &first } else { &second };
        assert_eq!(
            gateway
                .push(&issuer, &with_openid(n, &piaojia_wechat_sim::new_openid()))
                .await
                .status()
                .as_u16(),
            201
        );
    }
    let sent = eventually(20, || {
        let sims = sims.clone();
        async move {
            let all: Vec<_> = sims.iter().flat_map(|s| s.sent_template_messages()).collect();
            (all.len() >= N).then_some(all)
        }
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let all: Vec<_> = sims.iter().flat_map(|s| s.sent_template_messages()).collect();
    assert_eq!(all.len(), N, "no receipt sent twice (first look: {})", sent.len());
    let mut ids: Vec<_> = all.iter().filter_map(|m| m.client_msg_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), N);
    assert!(
        sims.iter().all(|s| !s.sent_template_messages().is_empty()),
        "both processes did work"
    );
}

/// `piaojia_delivery_handoffs_total` as the app's metrics listener shows it.
async fn handoffs(app: &TestApp) -> u64 {
    app.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix("piaojia_delivery_handoffs_total "))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

both_modes!(
    pushes_hand_their_deliveries_to_this_process_workers,
    |mode: Mode| async move {
        // Claimed (handoff off), then handed off from the push's commit: the payer
        // gets every receipt either way, each once.
        for (handoff, first) in [(false, 1u64), (true, 101)] {
            let mut config = TestConfig::new(mode).await;
            config.set("PIAOJIA_NOTIFIER__HANDOFF", handoff.to_string());
            let app = config.spawn().await;
            let sim = app.sim.clone().expect("sandbox simulator");
            app.create_agency(AGENCY, &[]).await;
            let issuer = app.create_issuer(AGENCY, "hosp01-his", None).await;
            app.wechat_channel(AGENCY, "wechat_template", OA, "TMPL-RECEIPT-ISSUED")
                .await;
            let before = handoffs(&app).await;
            let mut openids = Vec::new();
            let pushes = (first..first + 5).map(|n| {
                let openid = piaojia_wechat_sim::new_openid();
                openids.push(openid.clone());
                let (app, issuer) = (&app, &issuer);
                async move {
                    let resp = app.push(issuer, &with_openid(n, &openid)).await;
                    assert_eq!(resp.status().as_u16(), 201);
                }
            });
            futures_util::future::join_all(pushes).await;
            for n in first..first + 5 {
                let read = first_delivery_reaches(&app, &issuer, n, "delivered").await;
                assert_eq!(read["deliveries"][0]["attempts"], 1, "handoff={handoff}");
            }
            let mut sent: Vec<String> = sim.sent_template_messages().into_iter().map(|m| m.touser).collect();
            sent.sort();
            openids.sort();
            assert_eq!(sent, openids, "each payer once (handoff={handoff})");
            let handed = handoffs(&app).await - before;
            if handoff {
                assert!(handed >= 5, "every template message from its push's commit: {handed}");
            } else {
                assert_eq!(handed, 0, "all claimed");
            }
            app.stop().await;
        }
    }
);
