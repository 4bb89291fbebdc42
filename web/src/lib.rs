//! HTTP pieces the gateway and the mini-program API share: the one error type
//! (RFC 9457 problem+json with a stable `code`), actix's own errors in that shape,
//! and request spans that name the route template, never the raw target (which can
//! carry download tokens and search text).

pub mod client;
pub mod error;
pub mod logging;
