//! The piaojia gateway: the actix-web server, its callers' authentication, the
//! issuer intake, and the `piaojia` command line.

pub mod auth;
pub mod cli;
pub use piaojia_web::error;
pub mod files;
pub mod intake;
pub mod nonces;
pub mod openapi;
pub mod provisioning;
pub mod routes;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod views;

#[cfg(feature = "sandbox")]
pub use sandbox::Sandbox;

/// Without the `sandbox` feature there is no simulator: nothing is of this type.
#[cfg(not(feature = "sandbox"))]
#[derive(Clone)]
pub enum Sandbox {}
