//! HTTP pieces the gateway and the mini-program API share: the one error type
//! (RFC 9457 problem+json with a stable `code`), actix's own errors in that shape,
//! and request spans that name the route template, never the raw target (which can
//! carry download tokens and search text); request bodies bounded per scope,
//! security headers on every response, and keyed rate limits shared through Redis.

pub mod body_limit;
pub mod client;
pub mod codes;
pub mod error;
pub mod logging;
pub mod rate_limit;
pub mod security_headers;
