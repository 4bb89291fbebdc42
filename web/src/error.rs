//! The one HTTP error type: RFC 9457 problem+json with a stable machine `code`.
//! Internal causes go to the logs only; clients of a 500 see an opaque message.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use piaojia_core::receipt::FieldError;
use piaojia_store::{Entity, StoreError};
use serde::Serialize;
use utoipa::ToSchema;

pub use crate::codes::ErrorCode;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// One field-level problem, located by an RFC 6901 JSON pointer into the request body.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldProblem {
    #[schema(example = "/chargeDetail/0/amt")]
    pub pointer: String,
    #[schema(example = "too_many_decimals")]
    pub code: String,
    pub detail: String,
}

/// RFC 9457 problem details.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// `urn:piaojia:problem:<code>`.
    #[serde(rename = "type")]
    #[schema(example = "urn:piaojia:problem:validation_failed")]
    pub type_: String,
    #[schema(example = "The receipt is invalid")]
    pub title: String,
    #[schema(example = 422)]
    pub status: u16,
    /// Stable machine-readable code; clients branch on this.
    pub code: ErrorCode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
}

/// How a refused caller should authenticate (`WWW-Authenticate` of a 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// Issuers and reimbursers: the PJ1-HMAC-SHA256 signature.
    Signature,
    /// Payers: an access token.
    Bearer,
}

#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    detail: Option<String>,
    errors: Vec<FieldProblem>,
    retry_after: Option<u64>,
    /// The `WWW-Authenticate` challenge of a 401.
    challenge: Challenge,
    /// The cause, logged at the error boundary and never sent.
    source: Option<anyhow::Error>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code.status().as_u16(), self.code)?;
        if let Some(source) = &self.source {
            write!(f, ": {source:#}")?;
        }
        Ok(())
    }
}

impl ApiError {
    /// A problem with `code`'s status and title; add `.detail(…)` for the why.
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            detail: None,
            errors: Vec::new(),
            retry_after: None,
            challenge: Challenge::Signature,
            source: None,
        }
    }

    /// `new(code).detail(detail)`, the common case.
    pub fn with(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::new(code).detail(detail)
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn field(mut self, pointer: impl Into<String>, code: impl Into<String>, detail: impl Into<String>) -> Self {
        self.errors.push(FieldProblem {
            pointer: pointer.into(),
            code: code.into(),
            detail: detail.into(),
        });
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Sets the `WWW-Authenticate` challenge sent with a 401.
    pub fn challenge(mut self, challenge: Challenge) -> Self {
        self.challenge = challenge;
        self
    }

    /// Keeps `cause` for the logs (never sent to the client).
    pub fn cause(mut self, cause: impl Into<anyhow::Error>) -> Self {
        self.source = Some(cause.into());
        self
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn too_many_requests(code: ErrorCode, retry_after_secs: u64) -> Self {
        Self::with(code, "too many attempts; retry later").retry_after(retry_after_secs.max(1))
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::with(
            ErrorCode::PayloadTooLarge,
            format!("the request body exceeds {limit} bytes"),
        )
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let mut e = Self::with(
            ErrorCode::ValidationFailed,
            format!("{} field(s) are invalid", errors.len()),
        );
        e.errors = errors
            .into_iter()
            .map(|f| FieldProblem {
                pointer: f.pointer,
                code: f.code.to_owned(),
                detail: f.message,
            })
            .collect();
        e
    }

    pub fn invalid_json(pointer: String, message: String) -> Self {
        let e = Self::new(ErrorCode::InvalidJson);
        if pointer.is_empty() {
            e.detail(message)
        } else {
            e.field(pointer, "invalid_type", message.clone()).detail(message)
        }
    }

    pub fn unavailable(code: ErrorCode, cause: impl Into<anyhow::Error>) -> Self {
        Self::with(code, "a dependency is unavailable; retry later")
            .retry_after(5)
            .cause(cause)
    }

    /// An unexpected failure: opaque to the client, cause logged.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        Self::with(
            ErrorCode::InternalError,
            "an unexpected error occurred; it has been logged",
        )
        .cause(cause)
    }

    pub fn problem(&self) -> Problem {
        Problem {
            type_: format!("urn:piaojia:problem:{}", self.code),
            title: self.code.title().to_owned(),
            status: self.code.status().as_u16(),
            code: self.code,
            detail: self.detail.clone(),
            errors: self.errors.clone(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        if let Some(source) = &self.source {
            if self.status().is_server_error() {
                tracing::error!(
                    code = self.code.as_str(),
                    error = format!("{source:#}"),
                    "request failed"
                );
            } else {
                tracing::warn!(
                    code = self.code.as_str(),
                    error = format!("{source:#}"),
                    "request refused"
                );
            }
        }
        let mut resp = HttpResponse::build(self.status());
        resp.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
        if let Some(secs) = self.retry_after {
            resp.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if self.status() == StatusCode::UNAUTHORIZED {
            let scheme = match self.challenge {
                Challenge::Signature => piaojia_core::signing::SCHEME,
                Challenge::Bearer => "Bearer",
            };
            resp.insert_header((header::WWW_AUTHENTICATE, scheme));
        }
        resp.json(self.problem())
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(entity) => {
                let code = match entity {
                    Entity::Agency => ErrorCode::AgencyNotFound,
                    Entity::App => ErrorCode::AppNotFound,
                    Entity::Payer => ErrorCode::PayerNotFound,
                    Entity::Receipt => ErrorCode::ReceiptNotFound,
                    Entity::Delivery => ErrorCode::DeliveryNotFound,
                    Entity::Referenced => ErrorCode::ConcurrentChange,
                };
                ApiError::with(code, "no such resource")
            }
            StoreError::Conflict(rule) => {
                let code = match rule {
                    "agency_code" => ErrorCode::AgencyExists,
                    "app_id" => ErrorCode::AppExists,
                    "receipt_id" => ErrorCode::ReceiptConflict,
                    // Two claims of one receipt raced: the unique open-claim index decided.
                    "claim_receipt" => ErrorCode::ReceiptAlreadyClaimed,
                    // Unique keys we generate ourselves only clash when two requests race.
                    _ => ErrorCode::ConcurrentChange,
                };
                ApiError::with(code, format!("{rule} already exists"))
            }
            // The request may well succeed later: nothing is wrong with it.
            other if other.is_unavailable() => ApiError::unavailable(ErrorCode::DatabaseUnavailable, other),
            other => ApiError::internal(other),
        }
    }
}

/// Turns actix's own extractor and routing errors into problems, so every error
/// a client sees has our shape.
pub mod handlers {
    use actix_web::error::{JsonPayloadError, PathError, PayloadError, QueryPayloadError};
    use actix_web::{HttpRequest, HttpResponse};

    use super::{ApiError, ErrorCode};

    pub fn json(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
        match err {
            JsonPayloadError::OverflowKnownLength { limit, .. } | JsonPayloadError::Overflow { limit } => {
                ApiError::payload_too_large(limit)
            }
            JsonPayloadError::Payload(PayloadError::Overflow) => {
                ApiError::payload_too_large(0).detail("the request body is too large")
            }
            JsonPayloadError::ContentType => {
                ApiError::with(ErrorCode::UnsupportedMediaType, "send Content-Type: application/json")
            }
            JsonPayloadError::Deserialize(e) => ApiError::invalid_json(String::new(), e.to_string()),
            other => ApiError::with(ErrorCode::InvalidBody, other.to_string()),
        }
        .into()
    }

    pub fn path(err: PathError, _req: &HttpRequest) -> actix_web::Error {
        ApiError::with(ErrorCode::InvalidPath, err.to_string()).into()
    }

    pub fn query(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
        ApiError::with(ErrorCode::InvalidQuery, err.to_string()).into()
    }

    pub fn payload(err: PayloadError) -> ApiError {
        match err {
            PayloadError::Overflow => ApiError::payload_too_large(0).detail("the request body is too large"),
            other => ApiError::with(ErrorCode::InvalidBody, other.to_string()),
        }
    }

    /// Unknown routes and methods.
    pub async fn not_found(req: HttpRequest) -> HttpResponse {
        use actix_web::ResponseError;
        ApiError::with(
            ErrorCode::RouteNotFound,
            format!("no route for {} {}", req.method(), req.path()),
        )
        .error_response()
    }
}
