//! The piaojia gateway: the actix-web server and the `piaojia` command line. Its
//! callers each have a home: [`issuer`] (hospital systems), [`operator`] (the
//! people who run it), [`message_server`] (WeChat's callbacks); payers are served
//! by the `piaojia-miniprogram-api` crate. [`auth`] holds the extractors that
//! say who may call.

pub mod auth;
pub mod card_package;
pub mod cli;
pub use piaojia_web::error;
pub mod files;
pub mod issuer;
pub mod menu;
pub mod message_server;
pub mod nonces;
pub mod openapi;
pub mod operator;
pub mod reimburser;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod scan;
pub mod service;
pub mod startup;
pub mod state;
pub mod telemetry;
pub mod views;

/// Provisioning lives with the operator; tests and tools reach it here too.
pub use operator::provisioning;

#[cfg(feature = "sandbox")]
pub use sandbox::Sandbox;

/// Without the `sandbox` feature there is no simulator: nothing is of this type.
#[cfg(not(feature = "sandbox"))]
#[derive(Clone)]
pub enum Sandbox {}
