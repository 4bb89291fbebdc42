//! The reimburser: medical-insurance bureaus, commercial insurers and employers.
//! They verify receipts (查验) and lock, close, unlock or reject them
//! ([`routes`], signed with PJ1-HMAC-SHA256 through [`crate::auth::Reimburser`]);
//! [`views`] is what they read back. A receipt is reimbursed at most once: the
//! store decides every change under a row lock (`piaojia_store::Reimbursement`).
//! [`expiry`] releases locks held too long and reports them; [`card`] is the
//! hook the WeChat card package mirroring plugs into. [`claims`] is the
//! reimburser's side of payers' claims: the feed, a claim in full, acknowledgement.

pub mod card;
pub mod claims;
pub mod expiry;
pub mod routes;
pub mod views;

pub use routes::configure;
