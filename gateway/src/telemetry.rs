//! Logs, request ids and metrics in one place.

use std::sync::OnceLock;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use piaojia_core::settings::{LogFormat, LogSettings};
use tracing_actix_web::RequestId;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::auth::CallerAppId;

/// Installs the global subscriber once: JSON lines in production, pretty for people.
/// `RUST_LOG` overrides `log.filter`.
pub fn init_tracing(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let registry = tracing_subscriber::registry().with(filter);
    // try_init: tests start many apps in one process.
    let _ = match settings.format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
    };
}

/// The process-wide Prometheus recorder (one per process, shared by every app
/// started in it, as in tests).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            const BUCKETS: &[f64] = &[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test harness); ours still renders its own.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Per-route request counts and latency (the route template, never the raw path),
/// per-issuer-app success and latency, and the request id echoed to the client.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let request_id = req.extensions().get::<RequestId>().map(|id| id.to_string());
    let mut res = next.call(req).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let status = res.status();

    metrics::counter!("http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status.as_u16().to_string()).increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route.clone()).record(elapsed);

    if route.starts_with("/v1/receipts") {
        let app_id = res.request().extensions().get::<CallerAppId>().map(|c| c.0.clone());
        let outcome = match (&app_id, status.as_u16()) {
            (None, 401 | 403) => "auth_failed",
            (_, 200..=299) => "success",
            (_, 500..) => "server_error",
            _ => "client_error",
        };
        let app_id = app_id.unwrap_or_else(|| "unauthenticated".to_owned());
        if let Some(state) = res.request().app_data::<actix_web::web::Data<crate::state::AppState>>() {
            state.tracker.record(
                piaojia_notifier::tracker::Scope::Inbound,
                &format!("issuer:{app_id}"),
                outcome == "success",
                (elapsed * 1000.0) as u64,
            );
        }
        metrics::counter!("piaojia_issuer_requests_total", "app_id" => app_id.clone(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("piaojia_issuer_request_duration_seconds", "app_id" => app_id).record(elapsed);
    }
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        res.headers_mut().insert(REQUEST_ID.clone(), id);
    }
    Ok(res)
}
