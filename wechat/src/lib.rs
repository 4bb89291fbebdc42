//! WeChat for piaojia (DOMAIN.md §4).
pub mod errcode;
