//! Liveness and readiness on the public port; Prometheus metrics on their own
//! listener (`server.metrics_address`, loopback by default), never the public one.

use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ErrorCode, Problem};
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(healthz).service(readyz);
}

/// The metrics listener's one route (its app data is the Prometheus handle).
pub fn configure_metrics(cfg: &mut web::ServiceConfig) {
    cfg.service(metrics);
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Alive: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    #[schema(example = "ready")]
    pub status: &'static str,
    /// `postgres` or `sqlite`.
    pub database: &'static str,
    /// Whether Redis is used (scale-out).
    pub redis: bool,
}

/// Ready: the database answers with every migration applied, and Redis (when
/// configured) answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, body = Readiness),
        (status = 503, description = "`database_unavailable`, `migrations_pending` or `redis_unavailable`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state
        .store
        .ping()
        .await
        .map_err(|e| ApiError::unavailable(ErrorCode::DatabaseUnavailable, e))?;
    let current = state
        .store
        .migrations_current()
        .await
        .map_err(|e| ApiError::unavailable(ErrorCode::DatabaseUnavailable, e))?;
    if !current {
        return Err(
            ApiError::unavailable(ErrorCode::MigrationsPending, anyhow::anyhow!("migrations are pending"))
                .detail("run `piaojia migrate`"),
        );
    }
    if let Some(redis) = &state.redis {
        let mut conn = redis.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| ApiError::unavailable(ErrorCode::RedisUnavailable, e))?;
    }
    Ok(HttpResponse::Ok().json(Readiness {
        status: "ready",
        database: state.store.backend().as_str(),
        redis: state.redis.is_some(),
    }))
}

/// Prometheus text exposition (on `server.metrics_address` only).
#[get("/metrics")]
pub async fn metrics(handle: web::Data<metrics_exporter_prometheus::PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}
