//! The operator API's routes: channel and interface health, alerts, and re-driving
//! deliveries after an outage. Bearer-token authenticated (`ops.token`).

use actix_web::{HttpResponse, get, post, web};
use chrono::{TimeDelta, Utc};
use piaojia_notifier::tracker::{self, KeySummary, Scope};
use piaojia_store::{BacklogRow, ChannelKind, DeliveryFilter, DeliveryStatus, ParkReason, StatsRow};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Operator;
use crate::error::{ApiError, ErrorCode, Problem};
use crate::state::AppState;
use crate::views::DeliveryView;

use super::views::{
    AlertView, InboxEventView, InboxRetryResult, InterfacesView, OpsClaimListView, OpsClaimView, RedriveResult,
    TrackedView,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(channels)
        .service(interfaces)
        .service(alerts)
        .service(deliveries)
        .service(redrive)
        .service(reimbursement_history)
        .service(receipt_claims)
        .service(claim)
        .service(wechat_inbox)
        .service(retry_inbox_event)
        .service(retry_failed_inbox_events);
}

fn views(summaries: Vec<KeySummary>, backlog: impl Fn(&str) -> Option<(i64, i64)>) -> Vec<TrackedView> {
    summaries
        .into_iter()
        .map(|s| {
            let b = backlog(&s.key);
            TrackedView {
                key: s.key,
                last_5m: s.last_5m,
                last_1h: s.last_1h,
                last_24h: s.last_24h,
                backlog: b.map(|b| b.0),
                oldest_pending_secs: b.map(|b| b.1),
            }
        })
        .collect()
}

/// The last day's figures of every process, and the backlog.
async fn tracked(state: &AppState) -> Result<(Vec<StatsRow>, Vec<BacklogRow>), ApiError> {
    // This process's latest figures first, so the answer is current.
    state.tracker.flush(state.store.as_ref()).await?;
    let rows = state
        .store
        .stats_since((Utc::now() - TimeDelta::hours(24)).into())
        .await?;
    Ok((rows, state.store.backlog().await?))
}

fn backlog_for(rows: &[BacklogRow], matches: impl Fn(&BacklogRow) -> bool) -> Option<(i64, i64)> {
    let now = Utc::now();
    let hits: Vec<&BacklogRow> = rows.iter().filter(|r| matches(r)).collect();
    if hits.is_empty() {
        return None;
    }
    let pending = hits.iter().map(|r| r.pending).sum();
    let oldest = hits
        .iter()
        .filter_map(|r| r.oldest_created_at)
        .min()
        .map(|t| (now - t.as_datetime()).num_seconds())
        .unwrap_or(0);
    Some((pending, oldest))
}

/// Per delivery channel (kind + app + template): attempts, success rate and
/// latency p50/p95/p99 over the last 5 minutes, hour and day, with backlog.
#[utoipa::path(get, path = "/v1/ops/channels", tag = "operations", security(("operator_token" = [])),
    responses((status = 200, body = Vec<TrackedView>), (status = 401, description = "`auth_missing`, `auth_bad_token`", body = Problem, content_type = "application/problem+json"), (status = 403, description = "`ops_disabled`", body = Problem, content_type = "application/problem+json"), (status = 429, description = "`too_many_attempts` (failed tokens from this address)", body = Problem, content_type = "application/problem+json")))]
#[get("/v1/ops/channels")]
pub async fn channels(_op: Operator, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (rows, backlog) = tracked(&state).await?;
    let out = views(tracker::summaries(&rows, Scope::Channel, Utc::now().into()), |key| {
        backlog_for(&backlog, |r| key.starts_with(&format!("{}:", r.channel)))
    });
    Ok(HttpResponse::Ok().json(out))
}

/// Per outside interface and for the inbound issuer API: success rate and latency.
#[utoipa::path(get, path = "/v1/ops/interfaces", tag = "operations", security(("operator_token" = [])),
    responses((status = 200, body = InterfacesView), (status = 401, description = "`auth_missing`, `auth_bad_token`", body = Problem, content_type = "application/problem+json"), (status = 403, description = "`ops_disabled`", body = Problem, content_type = "application/problem+json"), (status = 429, description = "`too_many_attempts` (failed tokens from this address)", body = Problem, content_type = "application/problem+json")))]
#[get("/v1/ops/interfaces")]
pub async fn interfaces(_op: Operator, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (rows, backlog) = tracked(&state).await?;
    let now = Utc::now();
    Ok(HttpResponse::Ok().json(InterfacesView {
        outbound: views(tracker::summaries(&rows, Scope::Interface, now.into()), |key| {
            backlog_for(&backlog, |r| r.interface == key)
        }),
        inbound: views(tracker::summaries(&rows, Scope::Inbound, now.into()), |_| None),
    }))
}

/// Alerts, newest first: one per incident.
#[utoipa::path(get, path = "/v1/ops/alerts", tag = "operations", security(("operator_token" = [])),
    responses((status = 200, body = Vec<AlertView>), (status = 401, description = "`auth_missing`, `auth_bad_token`", body = Problem, content_type = "application/problem+json"), (status = 403, description = "`ops_disabled`", body = Problem, content_type = "application/problem+json"), (status = 429, description = "`too_many_attempts` (failed tokens from this address)", body = Problem, content_type = "application/problem+json")))]
#[get("/v1/ops/alerts")]
pub async fn alerts(_op: Operator, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let alerts = state.store.list_alerts(200).await?;
    Ok(HttpResponse::Ok().json(
        alerts
            .into_iter()
            .map(|a| AlertView {
                id: a.id,
                rule: a.rule,
                key: a.key,
                state: a.state.as_str().to_owned(),
                message: a.message,
                started_at: a.started_at.into(),
                last_notified_at: a.last_notified_at.into(),
                resolved_at: a.resolved_at.map(Into::into),
            })
            .collect::<Vec<_>>(),
    ))
}

#[derive(Debug, Default, Deserialize, ToSchema, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// `pending`, `delivered`, `failed`, `parked` or `cancelled`.
    pub status: Option<String>,
    pub channel: Option<String>,
    pub interface: Option<String>,
    /// `exhausted`, `outage` or `quota`.
    pub park_reason: Option<String>,
    /// At most 1000; default 100.
    pub limit: Option<i64>,
}

fn filter(q: &DeliveryQuery, ids: Option<Vec<Uuid>>) -> Result<DeliveryFilter, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(DeliveryStatus::parse(s).ok_or_else(|| {
            ApiError::with(ErrorCode::ValidationFailed, "unknown status").field(
                "/status",
                "invalid_value",
                "pending, delivered, failed, parked or cancelled",
            )
        })?),
    };
    let channel = match q.channel.as_deref() {
        None => None,
        Some(c) => Some(ChannelKind::parse(c).ok_or_else(|| {
            ApiError::with(ErrorCode::ValidationFailed, "unknown channel").field(
                "/channel",
                "invalid_value",
                "issuer_webhook, wechat_template, wechat_subscribe or wallet_subscribe",
            )
        })?),
    };
    let park_reason = match q.park_reason.as_deref() {
        None => None,
        Some(r) => Some(ParkReason::parse(r).ok_or_else(|| {
            ApiError::with(ErrorCode::ValidationFailed, "unknown park reason").field(
                "/parkReason",
                "invalid_value",
                "exhausted, outage or quota",
            )
        })?),
    };
    Ok(DeliveryFilter {
        ids,
        status,
        channel,
        interface: q.interface.clone(),
        agency_id: None,
        park_reason,
    })
}

/// Deliveries, newest first, e.g. `?status=parked` to see what waits for an operator.
#[utoipa::path(get, path = "/v1/ops/deliveries", tag = "operations", security(("operator_token" = [])), params(DeliveryQuery),
    responses((status = 200, body = Vec<DeliveryView>), (status = 401, description = "`auth_missing`, `auth_bad_token`", body = Problem, content_type = "application/problem+json"), (status = 403, description = "`ops_disabled`", body = Problem, content_type = "application/problem+json"), (status = 429, description = "`too_many_attempts` (failed tokens from this address)", body = Problem, content_type = "application/problem+json")))]
#[get("/v1/ops/deliveries")]
pub async fn deliveries(
    _op: Operator,
    state: web::Data<AppState>,
    q: web::Query<DeliveryQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = state.store.list_deliveries(&filter(&q, None)?, limit).await?;
    Ok(HttpResponse::Ok().json(rows.iter().map(DeliveryView::from).collect::<Vec<_>>()))
}

/// Which parked or failed deliveries to send again: by ids, by filter, or all.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedriveRequest {
    pub ids: Option<Vec<Uuid>>,
    /// `parked` or `failed`; absent: both.
    pub status: Option<String>,
    pub channel: Option<String>,
    pub interface: Option<String>,
    pub park_reason: Option<String>,
    /// Must be true to re-drive without ids or another filter.
    #[serde(default)]
    pub all: bool,
}

/// Re-drive parked or failed deliveries (after an outage): they get a fresh retry
/// schedule and are released oldest first, spaced out, not as one burst.
#[utoipa::path(post, path = "/v1/ops/deliveries/redrive", tag = "operations", security(("operator_token" = [])),
    request_body = RedriveRequest,
    responses((status = 200, body = RedriveResult), (status = 401, description = "`auth_missing`, `auth_bad_token`", body = Problem, content_type = "application/problem+json"), (status = 403, description = "`ops_disabled`", body = Problem, content_type = "application/problem+json"), (status = 429, description = "`too_many_attempts` (failed tokens from this address)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: nothing selected", body = Problem, content_type = "application/problem+json")))]
#[post("/v1/ops/deliveries/redrive")]
pub async fn redrive(
    _op: Operator,
    state: web::Data<AppState>,
    body: web::Json<RedriveRequest>,
) -> Result<HttpResponse, ApiError> {
    let req = body.into_inner();
    let query = DeliveryQuery {
        status: req.status.clone(),
        channel: req.channel.clone(),
        interface: req.interface.clone(),
        park_reason: req.park_reason.clone(),
        limit: None,
    };
    let f = filter(&query, req.ids.clone())?;
    if let Some(s) = f.status
        && !matches!(s, DeliveryStatus::Parked | DeliveryStatus::Failed)
    {
        return Err(ApiError::with(
            ErrorCode::ValidationFailed,
            "only parked or failed deliveries can be re-driven",
        )
        .field("/status", "invalid_value", "parked or failed"));
    }
    let selective = f.ids.is_some()
        || f.status.is_some()
        || f.channel.is_some()
        || f.interface.is_some()
        || f.park_reason.is_some();
    if !selective && !req.all {
        return Err(
            ApiError::with(ErrorCode::ValidationFailed, "name ids or a filter, or set all: true").field(
                "/all",
                "required",
                "set all: true to re-drive every parked and failed delivery",
            ),
        );
    }
    let spacing = TimeDelta::from_std(state.settings.notifier.release_spacing).unwrap_or(TimeDelta::zero());
    let n = state.store.redrive(&f, Utc::now().into(), spacing).await?;
    state.wake.notify().await;
    tracing::info!(redriven = n, "operator re-drive");
    Ok(HttpResponse::Ok().json(RedriveResult { redriven: n }))
}

/// A receipt's reimbursement history by its id: who locked, closed, unlocked,
/// rejected or reversed it, when, from where and why (append-only).
#[utoipa::path(
    get,
    path = "/v1/ops/receipts/{id}/reimbursement-history",
    tag = "operations",
    security(("operator_token" = [])),
    params(("id" = Uuid, Path, description = "The receipt's id")),
    responses(
        (status = 200, body = crate::reimburser::views::HistoryView),
        (status = 401, description = "`auth_missing`, `auth_bad_token`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`receipt_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/ops/receipts/{id}/reimbursement-history")]
pub async fn reimbursement_history(
    state: web::Data<AppState>,
    _op: Operator,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let now = state
        .store
        .reimbursement_of(id)
        .await?
        .ok_or_else(|| ApiError::with(ErrorCode::ReceiptNotFound, "no receipt with this id"))?;
    let events = state.store.reimbursement_history(id).await?;
    Ok(HttpResponse::Ok().json(crate::reimburser::views::HistoryView::build(&now, events)))
}

/// Every claim a payer made with a receipt, oldest first, each with its history:
/// who submitted, acknowledged, locked, closed, rejected, withdrew or cancelled
/// it, when, from where and why (append-only). No personal data.
#[utoipa::path(
    get,
    path = "/v1/ops/receipts/{id}/claims",
    tag = "operations",
    security(("operator_token" = [])),
    params(("id" = Uuid, Path, description = "The receipt's id")),
    responses(
        (status = 200, body = OpsClaimListView),
        (status = 401, description = "`auth_missing`, `auth_bad_token`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`receipt_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/ops/receipts/{id}/claims")]
pub async fn receipt_claims(
    state: web::Data<AppState>,
    _op: Operator,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    if state.store.reimbursement_of(id).await?.is_none() {
        return Err(ApiError::with(ErrorCode::ReceiptNotFound, "no receipt with this id"));
    }
    let mut items = Vec::new();
    for c in state.store.receipt_claims(id).await? {
        let history = state.store.claim_history(c.id).await?;
        items.push(OpsClaimView::build(c, history));
    }
    Ok(HttpResponse::Ok().json(OpsClaimListView { items }))
}

/// One claim by id with its history (as in `/v1/ops/receipts/{id}/claims`).
#[utoipa::path(
    get,
    path = "/v1/ops/claims/{id}",
    tag = "operations",
    security(("operator_token" = [])),
    params(("id" = Uuid, Path, description = "The claim's id")),
    responses(
        (status = 200, body = OpsClaimView),
        (status = 401, description = "`auth_missing`, `auth_bad_token`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`claim_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/v1/ops/claims/{id}")]
pub async fn claim(state: web::Data<AppState>, _op: Operator, path: web::Path<Uuid>) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let c = state
        .store
        .claim(id)
        .await?
        .ok_or_else(|| ApiError::with(ErrorCode::ClaimNotFound, "no claim with this id"))?;
    let history = state.store.claim_history(id).await?;
    Ok(HttpResponse::Ok().json(OpsClaimView::build(c, history)))
}

#[derive(Debug, Default, Deserialize, ToSchema, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InboxQuery {
    /// `pending`, `done` or `failed`; absent: all.
    pub status: Option<String>,
    /// At most 1000; default 100.
    pub limit: Option<i64>,
    /// The last id of the previous page.
    pub after: Option<Uuid>,
}

fn inbox_view(state: &AppState, e: piaojia_store::InboxEvent) -> InboxEventView {
    // The openid is inside the sealed body: opened here, shown masked only.
    let open_id = state
        .keyring
        .open(
            &e.payload_sealed,
            &piaojia_core::pii::purpose::wechat_inbox(&e.wechat_app_id),
        )
        .ok()
        .and_then(|plain| piaojia_wechat::event::parse_event(&String::from_utf8_lossy(&plain)).ok())
        .and_then(|ev| ev.from_user_name)
        .map(|o| piaojia_core::mask::openid(&o));
    InboxEventView {
        id: e.id,
        event: e.event,
        app_id: e.wechat_app_id,
        open_id,
        status: e.state,
        attempts: e.attempts,
        last_error: e.last_error,
        received_at: e.received_at.into(),
        next_attempt_at: e.next_attempt_at.into(),
        lease_until: e.lease_until.map(Into::into),
        handled_at: e.handled_at.map(Into::into),
    }
}

/// The message server's inbox in the order received, e.g. `?status=failed` for
/// the events that failed for good; page with `after`.
#[utoipa::path(get, path = "/v1/ops/wechat-inbox", tag = "operations", security(("operator_token" = [])), params(InboxQuery),
    responses((status = 200, body = Vec<InboxEventView>), (status = 401, description = "`auth_missing`, `auth_bad_token`", body = Problem, content_type = "application/problem+json"), (status = 403, description = "`ops_disabled`", body = Problem, content_type = "application/problem+json"), (status = 429, description = "`too_many_attempts` (failed tokens from this address)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: unknown status", body = Problem, content_type = "application/problem+json")))]
#[get("/v1/ops/wechat-inbox")]
pub async fn wechat_inbox(
    _op: Operator,
    state: web::Data<AppState>,
    q: web::Query<InboxQuery>,
) -> Result<HttpResponse, ApiError> {
    if let Some(s) = q.status.as_deref()
        && !matches!(s, "pending" | "done" | "failed")
    {
        return Err(ApiError::with(ErrorCode::ValidationFailed, "unknown status").field(
            "/status",
            "invalid_value",
            "pending, done or failed",
        ));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = state
        .store
        .list_inbox_events(q.status.as_deref(), q.after, limit)
        .await?;
    Ok(HttpResponse::Ok().json(rows.into_iter().map(|e| inbox_view(&state, e)).collect::<Vec<_>>()))
}

/// Puts a failed inbox event back to due: a worker handles it again at once,
/// its attempts starting over.
#[utoipa::path(post, path = "/v1/ops/wechat-inbox/{id}/retry", tag = "operations", security(("operator_token" = [])),
    params(("id" = Uuid, Path, description = "The event's id")),
    responses((status = 200, body = InboxEventView), (status = 401, description = "`auth_missing`, `auth_bad_token`", body = Problem, content_type = "application/problem+json"), (status = 403, description = "`ops_disabled`", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`inbox_event_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`inbox_event_not_failed`", body = Problem, content_type = "application/problem+json")))]
#[post("/v1/ops/wechat-inbox/{id}/retry")]
pub async fn retry_inbox_event(
    _op: Operator,
    state: web::Data<AppState>,
    path: web::Path<Uuid>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    if !state.store.retry_inbox_event(id, Utc::now().into()).await? {
        return Err(match state.store.inbox_event(id).await? {
            None => ApiError::with(ErrorCode::InboxEventNotFound, "no inbox event with this id"),
            Some(e) => ApiError::with(
                ErrorCode::InboxEventNotFailed,
                format!("the event is {}, not failed", e.state),
            ),
        });
    }
    state.inbox.wake();
    tracing::info!(%id, "operator retry of a WeChat event");
    let e = state
        .store
        .inbox_event(id)
        .await?
        .ok_or_else(|| ApiError::with(ErrorCode::InboxEventNotFound, "no inbox event with this id"))?;
    Ok(HttpResponse::Ok().json(inbox_view(&state, e)))
}

/// Which failed inbox events to put back to due.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InboxRetryRequest {
    /// Every event failed at or after this time.
    pub failed_since: chrono::DateTime<Utc>,
}

/// Puts every inbox event failed since a time back to due (after an outage).
#[utoipa::path(post, path = "/v1/ops/wechat-inbox/retry", tag = "operations", security(("operator_token" = [])),
    request_body = InboxRetryRequest,
    responses((status = 200, body = InboxRetryResult), (status = 401, description = "`auth_missing`, `auth_bad_token`", body = Problem, content_type = "application/problem+json"), (status = 403, description = "`ops_disabled`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`", body = Problem, content_type = "application/problem+json")))]
#[post("/v1/ops/wechat-inbox/retry")]
pub async fn retry_failed_inbox_events(
    _op: Operator,
    state: web::Data<AppState>,
    body: web::Json<InboxRetryRequest>,
) -> Result<HttpResponse, ApiError> {
    let n = state
        .store
        .retry_failed_inbox_events(body.failed_since.into(), Utc::now().into())
        .await?;
    state.inbox.wake();
    tracing::info!(retried = n, "operator retry of failed WeChat events");
    Ok(HttpResponse::Ok().json(InboxRetryResult { retried: n }))
}
