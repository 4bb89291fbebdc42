//! HTTP routes by caller: issuers, operators, and the service's own endpoints.

pub mod docs;
pub mod health;
pub mod issuer;
pub mod ops;
pub mod wechat_events;
