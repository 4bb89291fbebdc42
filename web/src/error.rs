//! The one HTTP error type: RFC 9457 problem+json with a stable machine `code`.
//! Internal causes go to the logs only; clients of a 500 see an opaque message.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use piaojia_core::receipt::FieldError;
use piaojia_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

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
    #[schema(example = "validation_failed")]
    pub code: String,
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
    status: StatusCode,
    code: &'static str,
    title: &'static str,
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
        write!(f, "{} {}", self.status.as_u16(), self.code)?;
        if let Some(source) = &self.source {
            write!(f, ": {source:#}")?;
        }
        Ok(())
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, title: &'static str) -> Self {
        Self {
            status,
            code,
            title,
            detail: None,
            errors: Vec::new(),
            retry_after: None,
            challenge: Challenge::Signature,
            source: None,
        }
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
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, "Bad request").detail(detail)
    }

    pub fn unauthorized(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, "Unauthorized").detail(detail)
    }

    pub fn forbidden(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, "Forbidden").detail(detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, "Not found").detail(detail)
    }

    pub fn conflict(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, "Conflict").detail(detail)
    }

    pub fn unprocessable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, "Unprocessable content").detail(detail)
    }

    pub fn too_many_requests(code: &'static str, retry_after_secs: u64) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, code, "Too many requests")
            .detail("too many attempts; retry later")
            .retry_after(retry_after_secs.max(1))
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "Payload too large")
            .detail(format!("the request body exceeds {limit} bytes"))
    }

    pub fn validation(errors: Vec<FieldError>) -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            "The request is invalid",
        )
        .detail(format!("{} field(s) are invalid", errors.len()));
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
        let e = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "The body is not the expected JSON",
        );
        if pointer.is_empty() {
            e.detail(message)
        } else {
            e.field(pointer, "invalid_type", message.clone()).detail(message)
        }
    }

    pub fn unavailable(code: &'static str, cause: impl Into<anyhow::Error>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, code, "Service unavailable")
            .detail("a dependency is unavailable; retry later")
            .retry_after(5);
        e.source = Some(cause.into());
        e
    }

    /// An unexpected failure: opaque to the client, cause logged.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        let mut e = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Internal server error",
        )
        .detail("an unexpected error occurred; it has been logged");
        e.source = Some(cause.into());
        e
    }

    pub fn problem(&self) -> Problem {
        Problem {
            type_: format!("urn:piaojia:problem:{}", self.code),
            title: self.title.to_owned(),
            status: self.status.as_u16(),
            code: self.code.to_owned(),
            detail: self.detail.clone(),
            errors: self.errors.clone(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        if let Some(source) = &self.source {
            if self.status.is_server_error() {
                tracing::error!(code = self.code, error = format!("{source:#}"), "request failed");
            } else {
                tracing::warn!(code = self.code, error = format!("{source:#}"), "request refused");
            }
        }
        let mut resp = HttpResponse::build(self.status);
        resp.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
        if let Some(secs) = self.retry_after {
            resp.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        if self.status == StatusCode::UNAUTHORIZED {
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
            StoreError::NotFound => ApiError::not_found("not_found", "no such resource"),
            StoreError::Conflict(what) => ApiError::conflict("conflict", format!("{what} already exists")),
            // The request may well succeed later: nothing is wrong with it.
            other if other.is_unavailable() => ApiError::unavailable("database_unavailable", other),
            other => ApiError::internal(other),
        }
    }
}

/// Turns actix's own extractor and routing errors into problems, so every error
/// a client sees has our shape.
pub mod handlers {
    use actix_web::error::{JsonPayloadError, PathError, PayloadError, QueryPayloadError};
    use actix_web::{HttpRequest, HttpResponse};

    use super::ApiError;

    pub fn json(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
        match err {
            JsonPayloadError::OverflowKnownLength { limit, .. } | JsonPayloadError::Overflow { limit } => {
                ApiError::payload_too_large(limit)
            }
            JsonPayloadError::Payload(PayloadError::Overflow) => {
                ApiError::payload_too_large(0).detail("the request body is too large")
            }
            JsonPayloadError::ContentType => ApiError::new(
                actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Unsupported media type",
            )
            .detail("send Content-Type: application/json"),
            JsonPayloadError::Deserialize(e) => ApiError::invalid_json(String::new(), e.to_string()),
            other => ApiError::bad_request("invalid_body", other.to_string()),
        }
        .into()
    }

    pub fn path(err: PathError, _req: &HttpRequest) -> actix_web::Error {
        ApiError::bad_request("invalid_path", err.to_string()).into()
    }

    pub fn query(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
        ApiError::bad_request("invalid_query", err.to_string()).into()
    }

    pub fn payload(err: PayloadError) -> ApiError {
        match err {
            PayloadError::Overflow => ApiError::payload_too_large(0).detail("the request body is too large"),
            other => ApiError::bad_request("invalid_body", other.to_string()),
        }
    }

    /// Unknown routes and methods.
    pub async fn not_found(req: HttpRequest) -> HttpResponse {
        use actix_web::ResponseError;
        ApiError::not_found(
            "route_not_found",
            format!("no route for {} {}", req.method(), req.path()),
        )
        .error_response()
    }
}
