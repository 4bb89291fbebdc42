//! Security headers on every response, errors and health checks included:
//! `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`, framing refused
//! (`X-Frame-Options: DENY` and CSP `frame-ancestors 'none'`), and HSTS when the
//! service is reached over https (`server.public_url`).
//!
//! The Content-Security-Policy is chosen per response, first match wins:
//! 1. one the handler set itself (the hook for HTML pages with their own strict
//!    policy, e.g. with script nonces);
//! 2. one registered for a path prefix ([`SecurityHeaders::page_policy`]);
//! 3. for `text/html`, [`HTML_CSP`]: nothing but the page's own origin;
//! 4. for everything else (JSON, problem+json, files), [`API_CSP`]: nothing at all.

use std::rc::Rc;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use futures_util::future::LocalBoxFuture;

/// Responses that are not pages may load, run and frame nothing.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The default of HTML pages: their own scripts, styles and images only, no inline
/// script, no plugins, never framed.
pub const HTML_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; font-src 'self'; form-action 'self'; base-uri 'none'; object-src 'none'; \
     frame-ancestors 'none'";

/// HSTS for a service reached over https: a year, subdomains included.
pub const HSTS: &str = "max-age=31536000; includeSubDomains";

/// The middleware (wrap it outermost, so nothing answers without it).
#[derive(Clone, Default)]
pub struct SecurityHeaders {
    hsts: bool,
    pages: Rc<Vec<(String, HeaderValue)>>,
}

impl SecurityHeaders {
    /// `hsts`: the service is reached over https (`server.public_url`).
    pub fn new(hsts: bool) -> Self {
        Self {
            hsts,
            pages: Rc::default(),
        }
    }

    /// HTML under `prefix` gets `policy` instead of [`HTML_CSP`] (pages whose
    /// bundled assets need more, like inline styles).
    pub fn page_policy(mut self, prefix: &str, policy: &'static str) -> Self {
        Rc::make_mut(&mut self.pages).push((prefix.to_owned(), HeaderValue::from_static(policy)));
        self
    }

    fn apply(&self, path: &str, headers: &mut HeaderMap) {
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        if self.hsts {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static(HSTS));
        }
        if headers.contains_key(header::CONTENT_SECURITY_POLICY) {
            return;
        }
        let html = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("text/html"));
        let policy = if html {
            self.pages
                .iter()
                .find(|(prefix, _)| path.starts_with(prefix.as_str()))
                .map_or_else(|| HeaderValue::from_static(HTML_CSP), |(_, p)| p.clone())
        } else {
            HeaderValue::from_static(API_CSP)
        };
        headers.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
}

impl<S, B> Transform<S, ServiceRequest> for SecurityHeaders
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = SecurityHeadersService<S>;
    type InitError = ();
    type Future = std::future::Ready<Result<Self::Transform, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        std::future::ready(Ok(SecurityHeadersService {
            service: Rc::new(service),
            config: self.clone(),
        }))
    }
}

pub struct SecurityHeadersService<S> {
    service: Rc<S>,
    config: SecurityHeaders,
}

impl<S, B> Service<ServiceRequest> for SecurityHeadersService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let service = self.service.clone();
        let config = self.config.clone();
        let path = req.path().to_owned();
        Box::pin(async move {
            match service.call(req).await {
                Ok(mut res) => {
                    config.apply(&path, res.headers_mut());
                    Ok(res)
                }
                // An error from an inner middleware: its response, with the headers.
                Err(e) => {
                    let mut res = e.error_response();
                    config.apply(&path, res.headers_mut());
                    Err(actix_web::error::InternalError::from_response(e, res).into())
                }
            }
        })
    }
}
