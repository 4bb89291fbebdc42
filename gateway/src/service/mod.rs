//! The service's own endpoints: health, readiness, metrics (on their own
//! listener) and the API documentation.

pub mod docs;
pub mod health;
