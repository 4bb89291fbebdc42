//! Claiming reimbursement from the official account's pages (在线报销), end to
//! end against the simulator: the receipt page offers "申请报销", the form lists
//! the reimbursers of the receipt's agency with the personal fields each receives,
//! refusals (no real-name registration, consent unchecked, missing CSRF) say why,
//! a claim submitted reaches the reimburser, 我的报销 shows its status and
//! withdraws it; another payer reaches nothing of it.

use piaojia_core::identity::IdType;
use piaojia_core::parties::ClaimField;
use piaojia_core::pii::purpose;
use piaojia_miniprogram_api::routes::profile::SealedProfile;
use piaojia_store::Timestamp;
use piaojia_store::wallets::{IdentityVerification, Registration};
use piaojia_tests::both_modes;
use piaojia_tests::browser::Browser;
use piaojia_tests::harness::{Mode, TestApp, spawn_app};
use piaojia_tests::samples;
use serde_json::Value;

use super::pages::{OA, hospital, push, receipt_url};

const NAME: &str = "张三丰";
const ID: &str = "11010519491231002X";

/// Registers the payer of this openid as the mini-program would (name and ID sealed).
pub async fn register(app: &TestApp, openid: &str) {
    let payer = app.store.login_payer(OA, openid, None).await.expect("login").payer;
    let k = &app.keyring;
    let profile = SealedProfile {
        name: NAME.to_owned(),
        id_type: IdType::Resident,
        id_number: ID.to_owned(),
        phone: None,
    };
    app.store
        .register_payer(
            payer.id,
            Registration {
                profile_sealed: k.seal_json(&profile, purpose::PAYER_PROFILE),
                id_index: k.blind_index(purpose::index::ID_CARD, ID),
                name_index: k.blind_index(purpose::index::NAME, NAME),
                phone_index: None,
                phone_verified: false,
                verified_via: Some(IdentityVerification::WechatRealname),
                consent_version: "2026-11".to_owned(),
                consent_at: Timestamp::now(),
            },
        )
        .await
        .expect("registered");
}

pub fn claim_url(app: &TestApp, receipt_id: &str) -> String {
    format!("{}/h5/{OA}/receipts/{receipt_id}/claim", app.address)
}

pub fn claims_url(app: &TestApp) -> String {
    format!("{}/h5/{OA}/claims", app.address)
}

both_modes!(payer_claims_from_the_pages, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = hospital(&app).await;
    let insurer = app
        .create_reimburser_until(
            "insurer-h5",
            &[&issuer.agency_code],
            None,
            &["name", "id_card_no"],
            Some(3650),
        )
        .await;
    let payer = piaojia_wechat_sim::new_openid();
    let mut r = samples::outpatient(21);
    r["openID"] = payer.clone().into();
    r["payer"] = NAME.into();
    r["idCardNo"] = ID.into();
    let created = push(&app, &issuer, &r).await;
    let id = created["id"].as_str().expect("id").to_owned();

    let mut phone = Browser::of_wechat_user(OA, &payer);
    let receipt = phone.get(&receipt_url(&app, &id)).await;
    assert_eq!(receipt.status, 200, "{}", receipt.body);
    assert!(receipt.body.contains("申请报销"), "{}", receipt.body);
    assert!(receipt.body.contains(&format!("/h5/{OA}/receipts/{id}/claim")));

    // The form: the reimburser, its kind, the fields it receives, its deadline;
    // the payer has no real-name registration yet, and is told so.
    let form = phone.get(&claim_url(&app, &id)).await;
    assert_eq!(form.status, 200, "{}", form.body);
    for seen in [
        "insurer-h5 保险",
        "商业保险公司",
        "姓名、身份证号",
        "报销期限",
        "开票后3650天内",
        "请先在票夹小程序完成实名登记",
        "收款银行账号",
        "备注",
        "¥128.50",
    ] {
        assert!(form.body.contains(seen), "{seen} missing: {}", form.body);
    }
    assert!(!form.body.contains("<script"));
    let csrf = form.hidden("csrf").expect("a CSRF token in the form");
    let consent = "insurer-h5:name,id_card_no";
    let refused = phone
        .post_form(
            &claim_url(&app, &id),
            &[("csrf", &csrf), ("reimburser", "insurer-h5"), ("consent", consent)],
        )
        .await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body.contains("请先在票夹小程序完成实名登记"),
        "{}",
        refused.body
    );

    register(&app, &payer).await;
    // Without the token (a cross-site form), nothing is claimed.
    let forged = phone
        .post_form(
            &claim_url(&app, &id),
            &[("reimburser", "insurer-h5"), ("consent", consent)],
        )
        .await;
    assert_eq!(forged.status, 403);
    assert!(forged.body.contains("页面已过期"));
    // Without the consent, nothing is claimed either; the form says why.
    let unconsented = phone
        .post_form(
            &claim_url(&app, &id),
            &[
                ("csrf", &csrf),
                ("reimburser", "insurer-h5"),
                ("field.insurer-h5.bankAccount", "6222020200112233445"),
            ],
        )
        .await;
    assert_eq!(unconsented.status, 422, "{}", unconsented.body);
    assert!(unconsented.body.contains("请勾选同意"), "{}", unconsented.body);
    assert!(unconsented.body.contains("6222020200112233445"), "what was typed stays");
    let feed: Value = app
        .signed(&insurer, "GET", "/v1/reimburser/claims", None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(feed["items"].as_array().map(Vec::len), Some(0), "{feed}");

    // Submitted: on to 我的报销, and the reimburser has it.
    let submitted = phone
        .post_form(
            &claim_url(&app, &id),
            &[
                ("csrf", &csrf),
                ("reimburser", "insurer-h5"),
                ("consent", consent),
                ("field.insurer-h5.bankAccount", "6222020200112233445"),
                ("field.insurer-h5.note", "门诊报销"),
            ],
        )
        .await;
    assert_eq!(submitted.status, 200, "{}", submitted.body);
    assert!(submitted.url.starts_with(&claims_url(&app)), "{}", submitted.url);
    for seen in [
        "报销申请已提交",
        "insurer-h5 保险",
        "已提交",
        "撤回申请",
        "0000000021",
        "姓名、身份证号",
    ] {
        assert!(submitted.body.contains(seen), "{seen} missing: {}", submitted.body);
    }
    let feed: Value = app
        .signed(&insurer, "GET", "/v1/reimburser/claims", None)
        .await
        .json()
        .await
        .expect("json");
    let claim = &feed["items"][0];
    assert_eq!(claim["status"], "submitted", "{feed}");
    assert_eq!(claim["receipts"][0]["billNo"], "0000000021", "{feed}");
    let claim_id = claim["id"].as_str().expect("claim id").to_owned();

    // The receipt is in a claim now: no second one.
    let receipt = phone.get(&receipt_url(&app, &id)).await;
    assert!(
        !receipt.body.contains("申请报销") && receipt.body.contains("正在报销中"),
        "{}",
        receipt.body
    );
    let again = phone.get(&claim_url(&app, &id)).await;
    assert_eq!(again.status, 409);
    assert!(again.body.contains("已在报销申请中"));
    let twice = phone
        .post_form(
            &claim_url(&app, &id),
            &[("csrf", &csrf), ("reimburser", "insurer-h5"), ("consent", consent)],
        )
        .await;
    assert_eq!(twice.status, 422);
    assert!(twice.body.contains("不能重复申请"), "{}", twice.body);

    // Another payer reaches nothing of it: not the form, not the claim, not a withdrawal.
    let stranger = piaojia_wechat_sim::new_openid();
    let mut other = Browser::of_wechat_user(OA, &stranger);
    let denied = other.get(&claim_url(&app, &id)).await;
    assert_eq!(denied.status, 404);
    assert!(denied.body.contains("未找到票据"));
    assert!(!denied.body.contains("128.50") && !denied.body.contains("insurer-h5"));
    let their_claims = other.get(&claims_url(&app)).await;
    assert_eq!(their_claims.status, 200);
    assert!(their_claims.body.contains("暂无报销申请") && !their_claims.body.contains("insurer-h5"));
    let their_csrf = their_claims.hidden("csrf");
    let their_form = other.get(&format!("{}/h5/{OA}/receipts", app.address)).await;
    assert!(!their_form.body.contains("0000000021"));
    let token = their_csrf.unwrap_or_default();
    let withdraw_url = format!("{}/h5/{OA}/claims/{claim_id}/withdrawal", app.address);
    let theirs = other.post_form(&withdraw_url, &[("csrf", &token)]).await;
    assert!(theirs.status == 403 || theirs.status == 404, "{}", theirs.status);
    let theirs = other
        .post_form(
            &claim_url(&app, &id),
            &[("csrf", &token), ("reimburser", "insurer-h5"), ("consent", consent)],
        )
        .await;
    assert!(theirs.status == 403 || theirs.status == 404, "{}", theirs.status);
    assert!(!theirs.body.contains("128.50"));

    // The payer withdraws it (with the token only); the receipt is free again.
    let list = phone.get(&claims_url(&app)).await;
    let list_csrf = list.hidden("csrf").expect("the withdrawal form's token");
    let forged = phone.post_form(&withdraw_url, &[]).await;
    assert_eq!(forged.status, 403);
    let withdrawn = phone.post_form(&withdraw_url, &[("csrf", &list_csrf)]).await;
    assert_eq!(withdrawn.status, 200, "{}", withdrawn.body);
    assert!(withdrawn.body.contains("报销申请已撤回") && withdrawn.body.contains("已撤回"));
    assert!(!withdrawn.body.contains("撤回申请</button>"), "{}", withdrawn.body);
    let detail: Value = app
        .signed(&insurer, "GET", &format!("/v1/reimburser/claims/{claim_id}"), None)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(detail["status"], "withdrawn", "{detail}");
    let receipt = phone.get(&receipt_url(&app, &id)).await;
    assert!(receipt.body.contains("申请报销"), "{}", receipt.body);
});

both_modes!(
    a_claim_of_several_receipts_with_the_reimbursers_fields,
    |mode: Mode| async move {
        let app = spawn_app(mode).await;
        let issuer = hospital(&app).await;
        let mut spec = TestApp::reimburser_spec("insurer-f", &[&issuer.agency_code], None, &["name"]);
        spec.claim_fields = vec![
            ClaimField::parse_spec("policyNo:保单号:required").expect("spec"),
            ClaimField::parse_spec("iban:收款账号").expect("spec"),
        ];
        let insurer = app.create_reimburser_from(spec).await;
        let payer = piaojia_wechat_sim::new_openid();
        let mut ids = Vec::new();
        for n in [31, 32, 33] {
            let mut r = samples::outpatient(n);
            r["openID"] = payer.clone().into();
            ids.push(push(&app, &issuer, &r).await["id"].as_str().expect("id").to_owned());
        }
        register(&app, &payer).await;

        let mut phone = Browser::of_wechat_user(OA, &payer);
        let form = phone.get(&claim_url(&app, &ids[0])).await;
        assert_eq!(form.status, 200, "{}", form.body);
        // The reimburser's own fields instead of the usual pair, and the wallet's
        // other receipts to tick.
        for seen in [
            "保单号（必填）",
            "收款账号（选填）",
            "同时报销其他票据",
            "0000000032",
            "0000000033",
        ] {
            assert!(form.body.contains(seen), "{seen} missing: {}", form.body);
        }
        assert!(!form.body.contains("收款银行账号"), "{}", form.body);
        let csrf = form.hidden("csrf").expect("csrf");
        let base = [
            ("csrf", csrf.as_str()),
            ("reimburser", "insurer-f"),
            ("consent", "insurer-f:name"),
            ("receipt", ids[1].as_str()),
        ];
        // The required field missing: the form again, with the ticked receipt still ticked.
        let missing = phone.post_form(&claim_url(&app, &ids[0]), &base).await;
        assert_eq!(missing.status, 422, "{}", missing.body);
        assert!(missing.body.contains("必填报销信息"), "{}", missing.body);
        assert!(
            missing.body.contains(&format!("value=\"{}\" checked", ids[1])),
            "{}",
            missing.body
        );
        // A receipt that is not the payer's: refused, and named nothing of it.
        let stranger_receipt = {
            // Another person's (another name and ID number, another openid).
            let mut r = samples::outpatient_of_own_payer(34);
            r["openID"] = piaojia_wechat_sim::new_openid().into();
            push(&app, &issuer, &r).await["id"].as_str().expect("id").to_owned()
        };
        let mut with_foreign = base.to_vec();
        with_foreign.push(("field.insurer-f.policyNo", "P-1"));
        with_foreign.push(("receipt", &stranger_receipt));
        let foreign = phone.post_form(&claim_url(&app, &ids[0]), &with_foreign).await;
        assert_eq!(foreign.status, 422, "{}", foreign.body);
        assert!(foreign.body.contains("已不在您的票夹中"), "{}", foreign.body);
        assert!(!foreign.body.contains("0000000034"), "{}", foreign.body);

        let mut fields = base.to_vec();
        fields.push(("field.insurer-f.policyNo", "P2026-0042"));
        // What another reimburser's inputs would carry is not passed on.
        fields.push(("field.other.secret", "x"));
        let submitted = phone.post_form(&claim_url(&app, &ids[0]), &fields).await;
        assert_eq!(submitted.status, 200, "{}", submitted.body);
        assert!(submitted.body.contains("0000000031") && submitted.body.contains("0000000032"));
        let feed: Value = app
            .signed(&insurer, "GET", "/v1/reimburser/claims", None)
            .await
            .json()
            .await
            .expect("json");
        let claim = &feed["items"][0];
        let bills: Vec<&str> = claim["receipts"]
            .as_array()
            .expect("receipts")
            .iter()
            .filter_map(|r| r["billNo"].as_str())
            .collect();
        assert_eq!(bills, ["0000000031", "0000000032"], "{feed}");
        let detail: Value = app
            .signed(
                &insurer,
                "GET",
                &format!("/v1/reimburser/claims/{}", claim["id"].as_str().expect("id")),
                None,
            )
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(
            detail["fields"],
            serde_json::json!({"policyNo": "P2026-0042"}),
            "{detail}"
        );

        // The third receipt's form no longer offers the two in the claim.
        let third = phone.get(&claim_url(&app, &ids[2])).await;
        assert_eq!(third.status, 200, "{}", third.body);
        assert!(!third.body.contains("同时报销其他票据"), "{}", third.body);
        // One already claimed, sent anyway with it: refused, naming that one.
        let csrf = third.hidden("csrf").expect("csrf");
        let again = phone
            .post_form(
                &claim_url(&app, &ids[2]),
                &[
                    ("csrf", csrf.as_str()),
                    ("reimburser", "insurer-f"),
                    ("consent", "insurer-f:name"),
                    ("field.insurer-f.policyNo", "P-2"),
                    ("receipt", ids[1].as_str()),
                ],
            )
            .await;
        assert_eq!(again.status, 422, "{}", again.body);
        assert!(
            again.body.contains("票据 11060124 0000000032：") && again.body.contains("不能重复申请"),
            "{}",
            again.body
        );
    }
);

both_modes!(my_claims_come_in_pages, |mode: Mode| async move {
    let app = spawn_app(mode).await;
    let issuer = hospital(&app).await;
    app.create_reimburser_until("insurer-p", &[&issuer.agency_code], None, &[], None)
        .await;
    let payer = piaojia_wechat_sim::new_openid();
    let mut phone = Browser::of_wechat_user(OA, &payer);
    // 21 claims of one receipt each, oldest first (each withdrawn to free the next).
    let mut r = samples::outpatient(41);
    r["openID"] = payer.clone().into();
    let id = push(&app, &issuer, &r).await["id"].as_str().expect("id").to_owned();
    for i in 0..21 {
        let form = phone.get(&claim_url(&app, &id)).await;
        assert_eq!(form.status, 200, "{}", form.body);
        let csrf = form.hidden("csrf").expect("csrf");
        let note = format!("第{i}次");
        let done = phone
            .post_form(
                &claim_url(&app, &id),
                &[
                    ("csrf", &csrf),
                    ("reimburser", "insurer-p"),
                    ("consent", "insurer-p:"),
                    ("field.insurer-p.note", &note),
                ],
            )
            .await;
        assert_eq!(done.status, 200, "{}", done.body);
        let action = done
            .body
            .split("action=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("the withdrawal form")
            .to_owned();
        let withdrawn = phone
            .post_form(&format!("{}{action}", app.address), &[("csrf", &csrf)])
            .await;
        assert_eq!(withdrawn.status, 200, "{}", withdrawn.body);
    }
    let first = phone.get(&claims_url(&app)).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body.matches("已撤回</span>").count(), 20, "{}", first.body);
    let older = first
        .body
        .split("href=\"")
        .filter_map(|s| s.split('"').next())
        .find(|h| h.contains("/claims?cursor="))
        .expect("更早的申请")
        .replace("&amp;", "&");
    assert!(first.body.contains("更早的申请"));
    let second = phone.get(&format!("{}{older}", app.address)).await;
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.body.matches("已撤回</span>").count(), 1, "{}", second.body);
    assert!(!second.body.contains("更早的申请"));
    // A forged cursor is an error page, not a 500.
    let bad = phone.get(&format!("{}?cursor=%%%", claims_url(&app))).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
});
