//! The official account's pages in headless Chromium (Debian's `chromium`,
//! through `chromedriver`), in a phone's window (360 × 800): the three journeys
//! as a payer lives them, asserting what a person sees, with a screenshot of each
//! page under `target/test-artifacts/pages/`. The sandbox page of `piaojia demo`
//! stands for WeChat's chat: it shows the template message and makes the
//! browser that payer's WeChat browser in the simulator.
//!
//! And claiming reimbursement: the claim form, the claim submitted, 我的报销 and
//! the withdrawal.
//!
//! Skipped (with a message) where Chromium is not installed; `.ci/run` installs it.

use piaojia_tests::both_modes;
use piaojia_tests::browser::Chromium;
use piaojia_tests::harness::{Mode, TestApp, spawn_app};
use piaojia_tests::samples::{self, BATCH};
use serde_json::Value;

use super::pages::{OA, hospital, push, receipt_url, template_to};
use super::pages_claims;

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Embedded => "sqlite",
        Mode::ScaleOut => "postgres",
    }
}

fn payer_page(app: &TestApp, openid: &str) -> String {
    piaojia_gateway::sandbox_payer_page_url(&app.address, &app.keyring, OA, openid)
}

/// Nothing is wider than the phone: readable at 360 px without sideways scrolling.
async fn fits_the_phone(browser: &Chromium) {
    let width = browser.scroll_width().await;
    assert!(width <= 360, "the page is {width} px wide");
}

// Pay-then-push: the message in WeChat, its link, the receipt, the list, and an
// error page.
both_modes!(chromium_pay_then_push, |mode: Mode| async move {
    let Some(browser) = Chromium::start().await else { return };
    let app = spawn_app(mode).await;
    let issuer = hospital(&app).await;
    let payer = piaojia_wechat_sim::new_openid();
    let mut r = samples::outpatient(21);
    r["openID"] = payer.clone().into();
    let created: Value = push(&app, &issuer, &r).await;
    let id = created["id"].as_str().expect("id").to_owned();
    template_to(&app, &payer, 1).await;
    let m = mode_name(mode);

    browser.goto(&payer_page(&app, &payer)).await;
    let text = browser.text().await;
    assert!(
        text.contains("示例医院服务号") && text.contains("128.50") && text.contains("已开具"),
        "{text}"
    );
    browser
        .screenshot(&format!("pay-then-push-{m}-1-template-message"))
        .await;

    browser.click("a.btn").await;
    let text = browser.wait_for_text("¥128.50").await;
    assert_eq!(browser.current_url().await, receipt_url(&app, &id));
    for seen in [
        "门诊电子票据",
        "¥128.50",
        "已开具",
        "西药费",
        "阿莫西林胶囊",
        "统筹基金支付",
        "收入微信卡包",
    ] {
        assert!(text.contains(seen), "{seen} not shown: {text}");
    }
    fits_the_phone(&browser).await;
    browser.screenshot(&format!("pay-then-push-{m}-2-receipt")).await;

    browser.click("a.btn.secondary[href$='/receipts']").await;
    let text = browser.wait_for_text("我的票据").await;
    assert!(text.contains("我的票据") && text.contains("0000000021"), "{text}");
    fits_the_phone(&browser).await;
    browser.screenshot(&format!("pay-then-push-{m}-3-list")).await;

    browser
        .goto(&receipt_url(&app, "01890000-0000-7000-8000-000000000000"))
        .await;
    let text = browser.text().await;
    assert!(text.contains("未找到票据") && !text.contains("128.50"), "{text}");
    browser.screenshot(&format!("pay-then-push-{m}-4-error")).await;
    browser.close().await;
});

// Kiosk: the issuer's QR code, scanned by a new follower; the announcement and
// the receipt it opens.
both_modes!(chromium_kiosk_scan, |mode: Mode| async move {
    let Some(browser) = Chromium::start().await else { return };
    let app = spawn_app(mode).await;
    let issuer = hospital(&app).await;
    let created = push(&app, &issuer, &samples::outpatient(22)).await;
    let id = created["id"].as_str().expect("id").to_owned();
    let resp = app
        .signed(
            &issuer,
            "POST",
            &format!("/v1/receipts/{BATCH}/0000000022/qrcode"),
            None,
        )
        .await;
    assert_eq!(resp.status().as_u16(), 201);
    let qr: Value = resp.json().await.expect("json");
    let payer = piaojia_wechat_sim::new_openid();
    let sim = app.sim.as_ref().expect("sandbox");
    sim.scan(qr["ticket"].as_str().expect("ticket"), &payer)
        .await
        .expect("scan");
    template_to(&app, &payer, 1).await;
    let m = mode_name(mode);

    browser.goto(&payer_page(&app, &payer)).await;
    assert!(browser.text().await.contains("128.50"));
    browser.screenshot(&format!("kiosk-{m}-1-template-message")).await;
    browser.click("a.btn").await;
    let text = browser.wait_for_text("¥128.50").await;
    assert_eq!(browser.current_url().await, receipt_url(&app, &id));
    assert!(text.contains("0000000022"), "{text}");
    fits_the_phone(&browser).await;
    browser.screenshot(&format!("kiosk-{m}-2-receipt")).await;
    browser.close().await;
});

// Paper QR: the printed code opens the receipt through OAuth; "加入我的票夹".
both_modes!(chromium_paper_qr, |mode: Mode| async move {
    let Some(browser) = Chromium::start().await else { return };
    let app = spawn_app(mode).await;
    let issuer = hospital(&app).await;
    let r = samples::outpatient(23);
    push(&app, &issuer, &r).await;
    let payer = piaojia_wechat_sim::new_openid();
    let m = mode_name(mode);

    // This browser is the payer's WeChat browser (no message yet).
    browser.goto(&payer_page(&app, &payer)).await;
    browser
        .goto(&format!(
            "{}/h5/{OA}/paper?billBatchCode={BATCH}&billNo=0000000023&random={}",
            app.address,
            r["random"].as_str().expect("random")
        ))
        .await;
    let text = browser.text().await;
    assert!(text.contains("¥128.50") && text.contains("加入我的票夹"), "{text}");
    fits_the_phone(&browser).await;
    browser.screenshot(&format!("paper-qr-{m}-1-receipt")).await;
    browser.click("form button[type=submit]").await;
    let text = browser.wait_for_text("已加入您的票夹").await;
    assert!(text.contains("已加入您的票夹") && text.contains("0000000023"), "{text}");
    browser.screenshot(&format!("paper-qr-{m}-2-added")).await;
    browser.close().await;
});

// Online reimbursement: "申请报销" on the receipt, the claim form (the reimburser,
// what it receives, the consent), the claim submitted, 我的报销, the withdrawal.
both_modes!(chromium_claim, |mode: Mode| async move {
    let Some(browser) = Chromium::start().await else { return };
    let app = spawn_app(mode).await;
    let issuer = hospital(&app).await;
    app.create_reimburser_until(
        "insurer-h5",
        &[&issuer.agency_code],
        None,
        &["name", "id_card_no"],
        Some(3650),
    )
    .await;
    let payer = piaojia_wechat_sim::new_openid();
    let mut r = samples::outpatient(24);
    r["openID"] = payer.clone().into();
    let created: Value = push(&app, &issuer, &r).await;
    let id = created["id"].as_str().expect("id").to_owned();
    let mut second = samples::outpatient(25);
    second["openID"] = payer.clone().into();
    push(&app, &issuer, &second).await;
    pages_claims::register(&app, &payer).await;
    let m = mode_name(mode);

    browser.goto(&payer_page(&app, &payer)).await;
    browser.goto(&receipt_url(&app, &id)).await;
    let text = browser.wait_for_text("申请报销").await;
    assert!(text.contains("¥128.50") && text.contains("未报销"), "{text}");
    browser.click("a.btn[href$='/claim']").await;
    let text = browser.wait_for_text("选择报销方").await;
    for seen in [
        "申请报销",
        "0000000024",
        "insurer-h5 保险",
        "商业保险公司",
        "将获取的个人信息",
        "姓名、身份证号",
        "报销期限",
        "我同意向insurer-h5 保险提供以下个人信息，仅用于本次报销：姓名、身份证号",
        "收款银行账号",
        "同时报销其他票据",
        "0000000025",
        "提交报销申请",
    ] {
        assert!(text.contains(seen), "{seen} not shown: {text}");
    }
    assert!(!text.contains("实名登记"), "registered: {text}");
    fits_the_phone(&browser).await;
    browser.screenshot(&format!("claim-{m}-1-form")).await;

    // Submitted without the consent: the form again, saying why.
    browser.click("input[name=reimburser]").await;
    browser.click("form button[type=submit]").await;
    let text = browser.wait_for_text("请勾选同意").await;
    assert!(text.contains("insurer-h5 保险"), "{text}");
    browser.screenshot(&format!("claim-{m}-2-no-consent")).await;

    // The second receipt ticked, a bank account typed, the consent given.
    browser.click("input[name=receipt]").await;
    browser
        .script("document.querySelector(\"input[name='field.insurer-h5.bankAccount']\").value = '6222020200112233445'; return 'ok';")
        .await;
    browser.click("input[name=consent]").await;
    browser.click("form button[type=submit]").await;
    let text = browser.wait_for_text("报销申请已提交").await;
    for seen in [
        "我的报销",
        "insurer-h5 保险",
        "已提交",
        "0000000024",
        "0000000025",
        "撤回申请",
    ] {
        assert!(text.contains(seen), "{seen} not shown: {text}");
    }
    fits_the_phone(&browser).await;
    browser.screenshot(&format!("claim-{m}-3-claims")).await;

    browser.click("form button[type=submit]").await;
    let text = browser.wait_for_text("报销申请已撤回").await;
    assert!(text.contains("已撤回") && !text.contains("撤回申请"), "{text}");
    browser.screenshot(&format!("claim-{m}-4-withdrawn")).await;
    browser.close().await;
});
