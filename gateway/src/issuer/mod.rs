//! The issuer: hospital billing and receipt systems. They push receipts and
//! reversals, report WeChat Pay payments ([`payments`]) and read what piaojia holds ([`routes`], signed with PJ1-HMAC-SHA256
//! through [`crate::auth::Issuer`]); [`intake`] stores what they push with the
//! deliveries it calls for; [`views`] is what they read back.

pub mod intake;
pub mod payments;
pub mod routes;
pub mod views;

pub use routes::configure;
