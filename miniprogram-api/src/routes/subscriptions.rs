//! The payer's subscribe-message choices. The mini-program calls
//! `wx.requestSubscribeMessage` and forwards its result object here; each
//! accepted one-time template lets piaojia send one receipt notification, a
//! long-term template (medical accounts) any number until refused. Without a
//! credit nothing is sent: the receipt waits in the wallet.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, get, post, web};
use piaojia_store::wallets::{SubscriptionChoice, SubscriptionReport};
use piaojia_web::error::{ApiError, Problem};
use serde::Deserialize;
use utoipa::ToSchema;

use super::Problems;
use crate::views::{CreditView, SubscriptionsView};
use crate::{Payer, WalletState};

#[derive(Debug, Deserialize, ToSchema)]
pub struct SubscriptionResults {
    /// `wx.requestSubscribeMessage`'s result: template id → `accept`, `reject`,
    /// `ban` or `filter` (its `errMsg` key may be left in; it is ignored).
    #[schema(value_type = Object, example = json!({"errMsg": "requestSubscribeMessage:ok", "SUB-TMPL-RECEIPT": "accept"}))]
    pub results: BTreeMap<String, String>,
}

async fn credits(state: &WalletState, payer: &Payer) -> Result<Vec<CreditView>, ApiError> {
    let held = state.store.subscription_credits(payer.id).await?;
    Ok(payer
        .app
        .templates
        .iter()
        .map(|(template, long_term)| {
            let mut view = held
                .iter()
                .find(|c| c.app_id == payer.app.app_id && &c.template_id == template)
                .cloned()
                .map(CreditView::from)
                .unwrap_or_else(|| CreditView {
                    template_id: template.clone(),
                    remaining: 0,
                    long_term: false,
                    updated_at: payer.record.created_at.into(),
                });
            // A long-term acceptance only counts while the template is long-term.
            view.long_term &= *long_term;
            view
        })
        .collect())
}

/// What the payer may be sent through this mini-program.
#[utoipa::path(
    get,
    path = "/v1/mp/subscriptions",
    tag = "mini-program",
    security(("payer_jwt" = [])),
    responses(
        (status = 200, description = "Credits per template", body = SubscriptionsView),
        (status = 401, description = "`auth_missing`, `token_invalid`, `token_expired`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/mp/subscriptions")]
pub async fn get_subscriptions(state: web::Data<WalletState>, payer: Payer) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(SubscriptionsView {
        credits: credits(&state, &payer).await?,
        ignored: Vec::new(),
    }))
}

/// Report the payer's answers to a subscribe-message request.
#[utoipa::path(
    post,
    path = "/v1/mp/subscriptions",
    tag = "mini-program",
    security(("payer_jwt" = [])),
    request_body(content = SubscriptionResults),
    responses(
        (status = 200, description = "Credits per template after the report", body = SubscriptionsView),
        (status = 401, description = "`auth_missing`, `token_invalid`, `token_expired`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[post("/v1/mp/subscriptions")]
pub async fn report(
    state: web::Data<WalletState>,
    payer: Payer,
    body: web::Json<SubscriptionResults>,
) -> Result<HttpResponse, ApiError> {
    let results = body.into_inner().results;
    let mut p = Problems::default();
    if results.len() > 20 {
        p.push("/results", "too_many_items", "at most 20 templates");
    }
    let mut reports = Vec::new();
    let mut ignored = Vec::new();
    for (template, choice) in &results {
        if template == "errMsg" {
            continue;
        }
        let pointer = format!("/results/{}", template.replace('~', "~0").replace('/', "~1"));
        if template.is_empty() || template.len() > 128 {
            p.push(&pointer, "invalid_format", "a template id has 1 to 128 characters");
            continue;
        }
        let choice = match choice.as_str() {
            "accept" => SubscriptionChoice::Accept,
            "reject" => SubscriptionChoice::Reject,
            "ban" => SubscriptionChoice::Ban,
            // WeChat filtered the template out: the payer was not asked.
            "filter" => continue,
            _ => {
                p.push(&pointer, "invalid_value", "accept, reject, ban or filter");
                continue;
            }
        };
        match payer.app.templates.iter().find(|(t, _)| t == template) {
            Some((_, long_term)) => reports.push(SubscriptionReport {
                template_id: template.clone(),
                choice,
                long_term: *long_term,
            }),
            None => ignored.push(template.clone()),
        }
    }
    p.into_result()?;
    state
        .store
        .record_subscriptions(payer.id, &payer.app.app_id, &reports)
        .await?;
    Ok(HttpResponse::Ok().json(SubscriptionsView {
        credits: credits(&state, &payer).await?,
        ignored,
    }))
}
