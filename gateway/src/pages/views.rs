//! The pages' HTML (maud: every value escaped). Chinese, mobile-first (one column,
//! readable at 360 px), one stylesheet of our own (`/h5/static/h5.css`), no script,
//! no outside resource: the strict HTML policy of `web::security_headers` holds.

use maud::{DOCTYPE, Markup, html};

/// The stylesheet every page links (served by `routes::stylesheet`).
pub const STYLESHEET_PATH: &str = "/h5/static/h5.css";

pub const STYLESHEET: &str = "\
*{box-sizing:border-box}\
html{-webkit-text-size-adjust:100%}\
body{margin:0;background:#f2f3f5;color:#1a1a1a;font:16px/1.5 -apple-system,'PingFang SC','Microsoft YaHei','WenQuanYi Zen Hei',sans-serif}\
header{background:#07c160;color:#fff;padding:.8rem 1rem}\
header h1{margin:0;font-size:1.15rem;font-weight:600}\
header p{margin:.1rem 0 0;font-size:.85rem;opacity:.9}\
main{max-width:40rem;margin:0 auto;padding:.75rem}\
.card{background:#fff;border-radius:10px;padding:.9rem 1rem;margin:0 0 .75rem}\
.card h2{font-size:1rem;margin:0 0 .5rem}\
.card>p:only-child{margin:0}\
.muted{color:#6b6b6b;font-size:.85rem}\
.amount{font-size:1.7rem;font-weight:700;margin:.2rem 0}\
.row{display:flex;justify-content:space-between;gap:.75rem;padding:.3rem 0;border-bottom:1px solid #f0f0f0}\
.row:last-child{border-bottom:0}\
.row span:first-child{color:#6b6b6b;flex:0 0 auto}\
.row span:last-child{text-align:right;word-break:break-all}\
.badge{display:inline-block;padding:.05rem .5rem;border-radius:999px;font-size:.8rem;background:#e8f8ef;color:#06ad56}\
.badge.red{background:#fdecec;color:#e64340}\
.badge.grey{background:#eee;color:#555}\
.item{display:block;color:inherit;text-decoration:none}\
.item .top{display:flex;justify-content:space-between;gap:.5rem;font-weight:600}\
.btn{display:block;width:100%;text-align:center;padding:.75rem;border:0;border-radius:8px;background:#07c160;color:#fff;font-size:1rem;text-decoration:none;margin:.5rem 0}\
.btn.secondary{background:#fff;color:#07c160;border:1px solid #07c160}\
.error{color:#e64340}\
form.filters{display:grid;grid-template-columns:1fr 1fr;gap:.5rem}\
form.filters label{font-size:.85rem;color:#6b6b6b;display:flex;flex-direction:column}\
form.filters .wide{grid-column:1/-1}\
input,select{font:inherit;padding:.45rem;border:1px solid #ddd;border-radius:6px;background:#fff;width:100%}\
table{width:100%;border-collapse:collapse;font-size:.9rem}\
th,td{text-align:left;padding:.35rem .2rem;border-bottom:1px solid #f0f0f0;vertical-align:top}\
td.num,th.num{text-align:right;white-space:nowrap}\
.pager{display:flex;justify-content:space-between}\
img.qr{display:block;width:100%;max-width:280px;margin:0 auto;image-rendering:pixelated}\
fieldset.choice{border:0;display:block;min-width:0}\
label.pick{display:flex;gap:.5rem;align-items:center;margin:0 0 .3rem}\
label.pick input,label.consent input{width:auto;flex:0 0 auto}\
label.consent{display:flex;gap:.5rem;align-items:flex-start;margin:.5rem 0 0;font-size:.9rem}\
label.field{display:flex;flex-direction:column;font-size:.85rem;color:#6b6b6b;margin:.4rem 0}\
h2.section{font-size:1rem;margin:.5rem .2rem}\
.bubble{background:#fff;border-radius:10px;padding:.9rem 1rem;border-left:4px solid #07c160}\
";

/// The page frame: title bar, optional subtitle, body.
pub fn layout(title: &str, subtitle: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="zh-CN" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width,initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) }
                link rel="stylesheet" href=(STYLESHEET_PATH);
            }
            body {
                header {
                    h1 { (title) }
                    @if let Some(s) = subtitle { p { (s) } }
                }
                main { (body) }
            }
        }
    }
}

/// An error page: what went wrong in words a payer understands, nothing more.
pub fn error_page(title: &str, message: &str, back: Option<&str>) -> Markup {
    layout(
        "出错了",
        None,
        html! {
            div.card role="alert" {
                h2.error { (title) }
                p { (message) }
            }
            @if let Some(href) = back { a.btn.secondary href=(href) { "返回我的票据" } }
        },
    )
}

/// One line of the receipt list.
pub struct ListLine {
    pub href: String,
    pub agency_name: String,
    pub bus_type: &'static str,
    pub bill: String,
    pub issued_at: String,
    pub amount: String,
    pub state: State,
}

/// A receipt's state as the payer reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Valid,
    Reversed,
}

impl State {
    pub fn label(self) -> &'static str {
        match self {
            State::Valid => "已开具",
            State::Reversed => "已冲红",
        }
    }

    fn badge(self) -> Markup {
        match self {
            State::Valid => html! { span.badge { (self.label()) } },
            State::Reversed => html! { span.badge.red { (self.label()) } },
        }
    }
}

/// The filters as the form shows them (what the payer asked for).
#[derive(Debug, Default, Clone)]
pub struct FilterForm {
    pub from: String,
    pub to: String,
    pub bus_type: String,
    pub state: String,
    pub q: String,
}

pub fn receipt_list(
    account: &str,
    action: &str,
    claims: &str,
    filters: &FilterForm,
    problem: Option<&str>,
    lines: &[ListLine],
    next: Option<&str>,
) -> Markup {
    let bus_types = piaojia_core::receipt::BusType::ALL;
    layout(
        "我的票据",
        Some(account),
        html! {
            form.filters.card method="get" action=(action) {
                label { "开具日期起" input type="date" name="from" value=(filters.from); }
                label { "开具日期止" input type="date" name="to" value=(filters.to); }
                label { "业务类型"
                    select name="busType" {
                        option value="" { "全部" }
                        @for b in bus_types {
                            option value=(b.as_code()) selected[filters.bus_type == b.as_code()] { (b.label_zh()) }
                        }
                    }
                }
                label { "状态"
                    select name="state" {
                        option value="" { "全部" }
                        option value="valid" selected[filters.state == "valid"] { "已开具" }
                        option value="reversed" selected[filters.state == "reversed"] { "已冲红" }
                    }
                }
                label.wide { "医院或项目名称" input type="search" name="q" maxlength="50" value=(filters.q); }
                button.btn.wide type="submit" { "筛选" }
            }
            @if let Some(p) = problem { p.card.error role="alert" { (p) } }
            @if lines.is_empty() {
                div.card { p.muted { "暂无票据。缴费后开具的电子票据会出现在这里。" } }
            }
            @for l in lines {
                a.card.item href=(l.href) {
                    div.top { span { (l.agency_name) } span { (l.amount) } }
                    div.muted { (l.bus_type) " · " (l.issued_at) }
                    div.muted { "票据 " (l.bill) " " (l.state.badge()) }
                }
            }
            @if let Some(n) = next { div.pager { span {} a.btn.secondary href=(n) { "下一页" } } }
            a.btn.secondary href=(claims) { "我的报销" }
        },
    )
}

/// One receipt as the payer sees it.
pub struct Detail {
    pub agency_name: String,
    pub title: String,
    pub amount: String,
    pub state: State,
    pub reimbursement: &'static str,
    pub facts: Vec<(&'static str, String)>,
    /// 收费项目: name, amount.
    pub charges: Vec<(String, String)>,
    /// 明细: name, quantity, amount.
    pub items: Vec<(String, String, String)>,
    /// 医保结算: label, amount.
    pub settlement: Vec<(&'static str, String)>,
    /// The red receipt, when reversed: (代码 号码, 时间, 原因).
    pub reversal: Option<(String, String, String)>,
    pub download: Option<String>,
    pub card_link: Option<String>,
    /// "申请报销": the claim form, for a receipt still to be claimed.
    pub claim: Option<String>,
    /// 我的报销, when an open claim of the payer holds the receipt.
    pub claim_pending: Option<String>,
    pub back: Option<String>,
}

/// What the page offers besides reading: adding to the wallet (a CSRF-protected form).
pub struct AddForm {
    pub action: String,
    pub csrf: String,
    pub fields: Vec<(&'static str, String)>,
}

pub fn receipt_detail(d: &Detail, add: Option<&AddForm>, notice: Option<&str>) -> Markup {
    layout(
        &d.title,
        Some(&d.agency_name),
        html! {
            @if let Some(n) = notice { div.card role="status" { p { (n) } } }
            div.card {
                div.muted { "票据金额" }
                div.amount { (d.amount) }
                div { (d.state.badge()) " " span.badge.grey { (d.reimbursement) } }
            }
            @if let Some((bill, at, reason)) = &d.reversal {
                div.card {
                    h2.error { "本票据已冲红" }
                    div.row { span { "红字票据" } span { (bill) } }
                    div.row { span { "冲红时间" } span { (at) } }
                    div.row { span { "原因" } span { (reason) } }
                }
            }
            div.card {
                h2 { "票据信息" }
                @for (k, v) in &d.facts { div.row { span { (k) } span { (v) } } }
            }
            @if !d.charges.is_empty() {
                div.card {
                    h2 { "收费项目" }
                    @for (name, amt) in &d.charges { div.row { span { (name) } span { (amt) } } }
                }
            }
            @if !d.items.is_empty() {
                div.card {
                    h2 { "费用明细" }
                    table {
                        thead { tr { th { "项目" } th.num { "数量" } th.num { "金额" } } }
                        tbody { @for (n, q, a) in &d.items { tr { td { (n) } td.num { (q) } td.num { (a) } } } }
                    }
                }
            }
            @if !d.settlement.is_empty() {
                div.card {
                    h2 { "医保结算" }
                    @for (k, v) in &d.settlement { div.row { span { (k) } span { (v) } } }
                }
            }
            @if let Some(form) = add {
                form method="post" action=(form.action) {
                    input type="hidden" name="csrf" value=(form.csrf);
                    @for (k, v) in &form.fields { input type="hidden" name=(k) value=(v); }
                    button.btn type="submit" { "加入我的票夹" }
                }
            }
            @if let Some(href) = &d.claim { a.btn href=(href) { "申请报销" } }
            @if let Some(href) = &d.claim_pending {
                div.card role="status" { p { "这张票据正在报销中。" } a.btn.secondary href=(href) { "查看我的报销" } }
            }
            @if let Some(href) = &d.download { a.btn.secondary href=(href) { "下载电子票据" } }
            @if let Some(href) = &d.card_link { a.btn.secondary href=(href) { "收入微信卡包" } }
            @if let Some(href) = &d.back { a.btn.secondary href=(href) { "返回我的票据" } }
        },
    )
}

/// A reimburser the claim form offers.
pub struct ReimburserOption {
    pub app_id: String,
    pub name: String,
    pub kind: &'static str,
    /// The personal fields it receives, in Chinese.
    pub fields: Vec<&'static str>,
    /// Consented fields the payer types in: input name, label, value.
    pub typed: Vec<(String, &'static str, String)>,
    /// What its consent box sends: `<appId>:<fields>`.
    pub consent_value: String,
    pub within_days: Option<u32>,
    /// The last day this receipt may be claimed with it.
    pub deadline: Option<String>,
    /// It receives real-name fields the payer has not registered.
    pub profile_missing: bool,
    /// The claim's own fields it asks for.
    pub claim_fields: Vec<OwnField>,
    pub checked: bool,
}

/// A field of the claim's own on the form.
pub struct OwnField {
    /// The input's name: `field.<appId>.<name>`.
    pub input: String,
    pub label: String,
    pub required: bool,
    pub value: String,
}

/// Another receipt of the wallet the claim may include.
pub struct OtherReceipt {
    pub id: String,
    pub text: String,
    pub checked: bool,
}

/// The claim form of one receipt.
pub struct ClaimForm {
    pub action: String,
    pub csrf: String,
    pub bill: String,
    pub agency_name: String,
    pub amount: String,
    pub issued_at: String,
    pub options: Vec<ReimburserOption>,
    /// The wallet's other receipts still to be claimed (this agency's, newest first).
    pub others: Vec<OtherReceipt>,
    /// Most receipts in one claim.
    pub receipts_max: usize,
    pub problem: Option<String>,
    pub back: String,
}

pub fn claim_form(f: &ClaimForm) -> Markup {
    layout(
        "申请报销",
        Some(&f.agency_name),
        html! {
            @if let Some(p) = &f.problem { div.card.error role="alert" { p { (p) } } }
            div.card {
                h2 { "报销的票据" }
                div.row { span { "票据" } span { (f.bill) } }
                div.row { span { "开票日期" } span { (f.issued_at) } }
                div.row { span { "金额" } span { (f.amount) } }
            }
            @if f.options.is_empty() {
                div.card { p { "暂无接受本院票据的报销方。" } }
                a.btn.secondary href=(f.back) { "返回票据" }
            } @else {
                form method="post" action=(f.action) {
                    input type="hidden" name="csrf" value=(f.csrf);
                    @if !f.others.is_empty() {
                        fieldset.card.choice {
                            h2 { "同时报销其他票据" }
                            p.muted { "可多选，一次最多" (f.receipts_max) "张（含上面这张）。" }
                            @for o in &f.others {
                                label.pick {
                                    input type="checkbox" name="receipt" value=(o.id) checked[o.checked];
                                    span { (o.text) }
                                }
                            }
                        }
                    }
                    h2.section { "选择报销方" }
                    @for o in &f.options {
                        fieldset.card.choice {
                            label.pick {
                                input type="radio" name="reimburser" value=(o.app_id) checked[o.checked] required;
                                span { strong { (o.name) } " " span.badge.grey { (o.kind) } }
                            }
                            div.row { span { "将获取的个人信息" } span { (o.fields.join("、")) } }
                            @if let (Some(days), Some(by)) = (o.within_days, &o.deadline) {
                                div.row { span { "报销期限" } span { "开票后" (days) "天内（" (by) "前）" } }
                            }
                            @if o.profile_missing {
                                p.error { "需要您的实名信息：请先在票夹小程序完成实名登记。" }
                            }
                            @for (name, label, value) in &o.typed {
                                label.field { (label) input type="text" name=(name) maxlength="200" value=(value); }
                            }
                            @for c in &o.claim_fields {
                                label.field {
                                    (c.label) @if c.required { "（必填）" } @else { "（选填）" }
                                    input type="text" name=(c.input) maxlength="200" value=(c.value);
                                }
                            }
                            label.consent {
                                input type="checkbox" name="consent" value=(o.consent_value);
                                span { "我同意向" (o.name) "提供以下个人信息，仅用于本次报销：" (o.fields.join("、")) }
                            }
                        }
                    }
                    p.muted { "报销信息加密保存，仅所选报销方可见。" }
                    button.btn type="submit" { "提交报销申请" }
                }
                a.btn.secondary href=(f.back) { "返回票据" }
            }
        },
    )
}

/// One claim on 我的报销.
pub struct ClaimLine {
    pub reimburser: String,
    pub status: String,
    pub submitted_at: String,
    /// Each receipt: its page, what names it.
    pub receipts: Vec<(String, String)>,
    pub fields: Vec<&'static str>,
    /// The withdrawal form's action while the payer may withdraw.
    pub withdraw: Option<String>,
    /// Final (reimbursed, rejected, withdrawn, cancelled).
    pub closed: bool,
}

pub fn claim_list(
    account: &str,
    csrf: &str,
    lines: &[ClaimLine],
    notice: Option<&str>,
    older: Option<&str>,
    back: &str,
) -> Markup {
    layout(
        "我的报销",
        Some(account),
        html! {
            @if let Some(n) = notice { div.card role="status" { p { (n) } } }
            @if lines.is_empty() {
                div.card { p.muted { "暂无报销申请。在票据页点击“申请报销”即可在线报销。" } }
            }
            @for l in lines {
                div.card {
                    h2 {
                        (l.reimburser) " "
                        @if l.closed { span.badge.grey { (l.status) } } @else { span.badge { (l.status) } }
                    }
                    div.muted { "提交于 " (l.submitted_at) }
                    @for (href, text) in &l.receipts { div.row { span { "票据" } span { a href=(href) { (text) } } } }
                    @if !l.fields.is_empty() { div.row { span { "已提供" } span { (l.fields.join("、")) } } }
                    @if let Some(action) = &l.withdraw {
                        form method="post" action=(action) {
                            input type="hidden" name="csrf" value=(csrf);
                            button.btn.secondary type="submit" { "撤回申请" }
                        }
                    }
                }
            }
            @if let Some(href) = older { a.btn.secondary href=(href) { "更早的申请" } }
            a.btn.secondary href=(back) { "返回我的票据" }
        },
    )
}

/// The sandbox's "what the payer sees" page: the template message as WeChat shows
/// it, with its link, and the QR of a kiosk when there is one.
pub struct DemoMessage {
    pub account: String,
    pub openid: String,
    pub sent_at: String,
    pub lines: Vec<(String, String)>,
    pub url: Option<String>,
}

pub fn demo_page(messages: &[DemoMessage], intro: &str) -> Markup {
    layout(
        "沙箱：付款人看到的",
        Some("模拟微信 · 不是真实用户"),
        html! {
            div.card { p.muted { (intro) } }
            @if messages.is_empty() { div.card { p { "还没有发出模板消息。" } } }
            @for m in messages {
                div.card.bubble {
                    h2 { (m.account) }
                    div.muted { "发给 " (m.openid) " · " (m.sent_at) }
                    @for (k, v) in &m.lines { div.row { span { (k) } span { (v) } } }
                    @if let Some(u) = &m.url { a.btn href=(u) { "详情（打开票据页）" } }
                }
            }
        },
    )
}

/// A QR image page (issuers' kiosks may show it as it is).
pub fn qr_image(data_uri: &str) -> Markup {
    html! { img.qr alt="扫码领取票据" src=(data_uri); }
}
