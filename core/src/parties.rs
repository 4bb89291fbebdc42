//! Who calls piaojia with signed requests, and the reimbursement state a
//! receipt is in (which reimburser holds it).

use serde::{Deserialize, Serialize};

use crate::delivery::spelled;

/// The kind of a signed caller (an app with HMAC secrets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppKind {
    /// A hospital's billing or receipt system.
    Issuer,
    /// Medical insurance, an insurer or an employer.
    Reimburser,
}

spelled!(AppKind {
    Issuer => "issuer",
    Reimburser => "reimburser",
});

/// Where a receipt stands with reimbursers (DOMAIN.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReimbursementState {
    Init,
    /// Held by exactly one reimburser.
    Lock,
    /// Reimbursed; irreversible.
    Closure,
    /// Reversed by the issuer.
    Cancel,
}

spelled!(ReimbursementState {
    Init => "INIT",
    Lock => "LOCK",
    Closure => "CLOSURE",
    Cancel => "CANCEL",
});
