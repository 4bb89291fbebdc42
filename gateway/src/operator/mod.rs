//! The operator: the people who run piaojia. The operator API ([`routes`], bearer
//! operator token through [`crate::auth::Operator`]) shows each channel's and each
//! outside interface's health, alerts and deliveries, and re-drives them;
//! [`provisioning`] is what the command line and the settings file provision
//! (agencies, apps, channels); [`views`] is what the API shows.

pub mod provisioning;
pub mod routes;
pub mod views;

pub use routes::configure;
