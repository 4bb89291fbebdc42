//! The simulator's newer surfaces over HTTP, as WeChat clients, message servers and
//! browsers see them: real-name checks, menus, follower events and passive replies, web
//! OAuth pages, and the card package for fiscal receipts.

mod cards;
mod common;
mod menu;
mod oauth;
mod realname;
mod users;
