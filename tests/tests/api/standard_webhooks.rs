//! Our webhooks verify with the reference Standard Webhooks library (PyPI
//! `standardwebhooks`), given the `webhookSecret` exactly as printed at creation
//! and rotation; both secrets verify during a rotation, only the new one after it.

use piaojia_gateway::provisioning;
use piaojia_store::AppKind;
use piaojia_tests::both_modes;
use piaojia_tests::harness::{Captured, Issuer, Mode, TestApp, TestConfig, eventually, receiver};
use piaojia_tests::samples;
use serde_json::Value;

const AGENCY: &str = "12110000400000001A";
const OA: &str = "wx0a1b2c3d4e5f6a7b";

/// The Python that has `standardwebhooks` (scripts/services.sh installs it).
fn python() -> String {
    for py in ["python3", "/opt/piaojia-moto/bin/python"] {
        let ok = std::process::Command::new(py)
            .args(["-c", "import standardwebhooks"])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return py.to_owned();
        }
    }
    panic!("the PyPI package standardwebhooks is missing: run scripts/services.sh");
}

/// True when the reference library verifies this webhook with this secret.
fn verifies(secret: &str, headers: &[(String, String)], body: &[u8]) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let body_path = dir.path().join("body");
    let headers_path = dir.path().join("headers.json");
    std::fs::write(&body_path, body).expect("write body");
    let map: serde_json::Map<String, Value> = headers
        .iter()
        .filter(|(k, _)| k.starts_with("webhook-"))
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    std::fs::write(&headers_path, serde_json::to_vec(&map).expect("json")).expect("write headers");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/verify_standard_webhook.py");
    let out = std::process::Command::new(python())
        .arg(script)
        .arg(secret)
        .arg(&body_path)
        .arg(&headers_path)
        .output()
        .expect("python runs");
    out.status.success()
}

async fn next_webhook(app: &TestApp, issuer: &Issuer, captured: &Captured, n: u64) -> (Vec<(String, String)>, Vec<u8>) {
    let before = captured.lock().expect("lock").len();
    let mut r = samples::outpatient(n);
    r["openID"] = piaojia_wechat_sim::new_openid().into();
    assert_eq!(app.push(issuer, &r).await.status().as_u16(), 201);
    eventually(15, || {
        let c = captured.clone();
        async move { c.lock().expect("lock").get(before).cloned() }
    })
    .await
}

both_modes!(webhooks_verify_with_the_reference_library, |mode: Mode| async move {
    let (hook, captured, _h) = receiver();
    let app = TestConfig::new(mode).await.spawn().await;
    app.create_agency(AGENCY, &[]).await;
    app.wechat_channel(AGENCY, "wechat_template", OA, "TMPL-RECEIPT-ISSUED")
        .await;
    let created = provisioning::create_app(
        app.store.as_ref(),
        &app.keyring,
        AGENCY,
        AppKind::Issuer,
        "hosp01-his",
        "HIS",
        Some(hook),
    )
    .await
    .expect("app created");
    let first = created.webhook_secret.clone().expect("a webhook secret, shown once");
    assert!(first.starts_with("whsec_"), "{first}");
    let issuer = Issuer {
        agency_code: AGENCY.to_owned(),
        app_id: created.app_id.clone(),
        secret: created.secret.clone().expect("secret"),
    };

    let (headers, body) = next_webhook(&app, &issuer, &captured, 1).await;
    assert!(verifies(&first, &headers, &body), "verifies with the secret as printed");
    let mut tampered = body.clone();
    tampered.push(b' ');
    assert!(!verifies(&first, &headers, &tampered), "a changed body does not verify");

    // Rotation: both secrets sign until the old one is retired.
    let rotated = provisioning::rotate_secret(app.store.as_ref(), &app.keyring, "hosp01-his", true)
        .await
        .expect("rotated");
    let second = rotated
        .webhook_secret
        .clone()
        .expect("the new webhook secret, shown once");
    assert_ne!(first, second);
    let listed = provisioning::list_apps(app.store.as_ref(), Some(AGENCY))
        .await
        .expect("list");
    assert!(listed.iter().all(|a| a.webhook_secret.is_none()), "never shown again");
    let issuer = Issuer {
        secret: rotated.secret.clone().expect("secret"),
        ..issuer
    };
    let (headers, body) = next_webhook(&app, &issuer, &captured, 2).await;
    assert!(
        verifies(&first, &headers, &body),
        "the old secret still verifies during the rotation"
    );
    assert!(verifies(&second, &headers, &body), "the new one too");

    provisioning::retire_old_secrets(app.store.as_ref(), "hosp01-his")
        .await
        .expect("retired");
    let (headers, body) = next_webhook(&app, &issuer, &captured, 3).await;
    assert!(
        !verifies(&first, &headers, &body),
        "the retired secret no longer verifies"
    );
    assert!(verifies(&second, &headers, &body));
});
