//! Domain of piaojia, free of HTTP and storage: receipts and their validation,
//! money in fen, the PJ1 request signature, personal-data encryption and masking,
//! and the layered settings every role reads.

pub mod delivery;
pub mod identity;
pub mod mask;
pub mod money;
pub mod parties;
pub mod pii;
pub mod receipt;
pub mod settings;
pub mod signing;
