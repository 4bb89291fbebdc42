//! Request bodies bounded per scope, before they are read: only issuer pushes and
//! reversals may be large; the WeChat message server takes 256 KiB; everything else
//! (mini-program, operator, reimburser JSON) a small limit. A `Content-Length` above
//! the limit is refused at once; a chunked body is cut off where it passes the
//! limit, while it streams. Either way the answer is `413 payload_too_large`
//! problem+json, whatever the handler made of the cut-off body.

use std::cell::Cell;
use std::rc::Rc;

use actix_web::HttpMessage as _;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::error::PayloadError;
use actix_web::http::{Method, header};
use actix_web::{ResponseError as _, dev};
use futures_util::StreamExt as _;
use futures_util::future::LocalBoxFuture;

use crate::error::ApiError;

type PayloadStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, PayloadError>>>>;

/// The limits, by scope.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Issuer pushes and reversals (`server.body_limit_bytes`).
    pub issuer_push: usize,
    /// `/v1/wechat/{appid}/events` (256 KiB: WeChat's own events are a few KiB).
    pub wechat_events: usize,
    /// The built-in WeChat simulator (sandbox mode): our own client's uploads.
    pub sandbox: usize,
    /// Everything else (`server.json_body_limit_bytes`).
    pub default: usize,
}

impl BodyLimits {
    /// The limit of a request, by its method and (raw) path.
    pub fn limit_for(&self, method: &Method, path: &str) -> usize {
        if *method == Method::POST && is_issuer_push(path) {
            self.issuer_push
        } else if path.starts_with("/v1/wechat/") {
            self.wechat_events
        } else if path.starts_with("/sandbox/wechat/") {
            self.sandbox
        } else {
            self.default
        }
    }
}

/// `/v1/receipts` and `/v1/receipts/{code}/{number}/reversal`.
fn is_issuer_push(path: &str) -> bool {
    if path == "/v1/receipts" {
        return true;
    }
    let Some(rest) = path.strip_prefix("/v1/receipts/") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    matches!(parts.as_slice(), [code, number, "reversal"] if !code.is_empty() && !number.is_empty())
}

/// A declared length above `limit`.
fn declared_too_large(req: &ServiceRequest, limit: usize) -> bool {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|len| len > limit as u64)
}

impl<S, B> Transform<S, ServiceRequest> for BodyLimits
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = BodyLimitService<S>;
    type InitError = ();
    type Future = std::future::Ready<Result<Self::Transform, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        std::future::ready(Ok(BodyLimitService {
            service: Rc::new(service),
            limits: *self,
        }))
    }
}

pub struct BodyLimitService<S> {
    service: Rc<S>,
    limits: BodyLimits,
}

impl<S, B> Service<ServiceRequest> for BodyLimitService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let limit = self.limits.limit_for(req.method(), req.path());
        if declared_too_large(&req, limit) {
            // Nothing of the body is read: the connection closes after the answer.
            let res = ApiError::payload_too_large(limit).error_response();
            return Box::pin(async move { Ok(req.into_response(res).map_into_right_body()) });
        }
        // Count what streams in; past the limit the stream fails and we answer 413.
        let overflowed = Rc::new(Cell::new(false));
        let flag = overflowed.clone();
        let mut seen = 0usize;
        let limited = req.take_payload().map(move |chunk| {
            let chunk = chunk?;
            seen = seen.saturating_add(chunk.len());
            if seen > limit {
                flag.set(true);
                return Err(PayloadError::Overflow);
            }
            Ok(chunk)
        });
        let limited: PayloadStream = Box::pin(limited);
        req.set_payload(dev::Payload::from(limited));
        let service = self.service.clone();
        Box::pin(async move {
            // (The request must not be cloned before the call: routing needs it alone.)
            let res = service.call(req).await;
            if !overflowed.get() {
                return res.map(ServiceResponse::map_into_left_body);
            }
            let too_large = ApiError::payload_too_large(limit).error_response();
            match res {
                Ok(res) => {
                    let (http, _) = res.into_parts();
                    Ok(ServiceResponse::new(http, too_large).map_into_right_body())
                }
                Err(e) => Err(actix_web::error::InternalError::from_response(e, too_large).into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WECHAT_EVENT_LIMIT: usize = 256 * 1024;

    #[test]
    fn only_issuer_pushes_and_reversals_are_large() {
        let limits = BodyLimits {
            issuer_push: 8 << 20,
            wechat_events: WECHAT_EVENT_LIMIT,
            sandbox: 8 << 20,
            default: 64 << 10,
        };
        let post = Method::POST;
        assert_eq!(limits.limit_for(&post, "/v1/receipts"), 8 << 20);
        assert_eq!(
            limits.limit_for(&post, "/v1/receipts/11060124/0000000001/reversal"),
            8 << 20
        );
        assert_eq!(
            limits.limit_for(&Method::GET, "/v1/receipts/11060124/0000000001"),
            64 << 10
        );
        assert_eq!(limits.limit_for(&post, "/v1/receipts/x/reversal"), 64 << 10);
        assert_eq!(limits.limit_for(&post, "/v1/receipts/a/b/c/reversal"), 64 << 10);
        assert_eq!(limits.limit_for(&post, "/v1/mp/session"), 64 << 10);
        assert_eq!(limits.limit_for(&post, "/v1/ops/deliveries/redrive"), 64 << 10);
        assert_eq!(limits.limit_for(&post, "/v1/reimburser/claims"), 64 << 10);
        assert_eq!(
            limits.limit_for(&post, "/v1/wechat/wx0a1b2c3d4e5f6a7b/events"),
            WECHAT_EVENT_LIMIT
        );
        assert_eq!(limits.limit_for(&post, "/nowhere"), 64 << 10);
    }
}
