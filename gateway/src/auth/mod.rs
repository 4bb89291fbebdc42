//! Who may call: each caller kind is an extractor, so a handler's signature says
//! who it serves.

pub(crate) mod operator;
mod signed;

pub use operator::{Operator, TOKEN_FAILURES};
pub use signed::{CallerAppId, Issuer, Reimburser, SignedApp, read_body};
