//! The piaojia gateway: the actix-web server and the `piaojia` command line. Its
//! callers each have a home: [`issuer`] (hospital systems), [`operator`] (the
//! people who run it), [`message_server`] (WeChat's callbacks), [`pages`] (payers
//! inside WeChat: the official account's pages); the mini-program's payers are
//! served by the `piaojia-miniprogram-api` crate. [`auth`] holds the extractors that
//! say who may call.

pub mod auth;
pub mod card_package;
pub mod cli;
pub use piaojia_web::error;
pub mod files;
pub mod inbox;
pub mod issuer;
pub mod menu;
pub mod message_server;
pub mod nonces;
pub mod openapi;
pub mod operator;
pub mod pages;
pub mod reimburser;
pub mod reminders;
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

/// The link of the sandbox page showing what a payer sees (`piaojia demo`).
#[cfg(feature = "sandbox")]
pub fn sandbox_payer_page_url(
    base_url: &str,
    keyring: &piaojia_core::pii::Keyring,
    appid: &str,
    openid: &str,
) -> String {
    sandbox::payer_page_url(base_url, keyring, appid, openid)
}

/// Without the simulator there is no sandbox page.
#[cfg(not(feature = "sandbox"))]
pub fn sandbox_payer_page_url(_: &str, _: &piaojia_core::pii::Keyring, _: &str, _: &str) -> String {
    String::new()
}

/// Without the `sandbox` feature there is no simulator: nothing is of this type.
#[cfg(not(feature = "sandbox"))]
#[derive(Clone)]
pub enum Sandbox {}
