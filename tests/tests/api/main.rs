//! The API test suite: every test drives piaojia over HTTP, once on the embedded
//! SQLite store and once on PostgreSQL + Redis.

mod alert_rules;
mod auth;
mod body_limits;
mod card_package;
mod claims;
mod delivery;
mod files;
mod message_server;
mod official_account;
mod operability;
mod pages;
mod pages_browser;
mod pages_claims;
mod privacy;
mod receipts;
mod reimbursement;
mod reminders;
mod reversal;
mod security_headers;
mod sign_in_limits;
mod standard_webhooks;
mod validation;
mod wallet;
mod wechat_payments;
