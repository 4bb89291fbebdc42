//! Test support shared by the API tests and the benchmarks: starting piaojia on a
//! fresh store, signed issuer clients, sample receipts, and the simulators of the
//! outside systems we cannot reach.

pub mod bench;
pub mod browser;
pub mod harness;
pub mod samples;
