//! Rate limits of the mini-program API, on the shared keyed limits of
//! [`piaojia_web::rate_limit`] (governor in the embedded mode, the same GCRA in
//! Redis in scale-out, each process's own if Redis cannot answer). Client
//! addresses count by [`piaojia_web::client::limit_key`]: IPv6 by its /64.
//!
//! - Possession: guessing check codes (6 characters) must not pay, so attempts to
//!   add a receipt by possession are limited per payer and per client address.
//! - Sign-in: `POST /v1/mp/session` per client address and per mini-program,
//!   counted before WeChat is asked, so bogus codes cannot spend the app's
//!   jscode2session quota, and one address cannot spend the app's limit for
//!   everyone.

use std::net::IpAddr;
use std::time::Duration;

use piaojia_web::client::limit_key;
use piaojia_web::rate_limit::RateLimits;
use redis::aio::ConnectionManager;
use uuid::Uuid;

const PAYER: &str = "payer";
const IP: &str = "ip";
const APP: &str = "app";

pub struct PossessionLimits {
    limits: RateLimits,
}

impl PossessionLimits {
    /// Limits of this process alone (the embedded mode).
    pub fn new(per_payer_per_min: u32, per_ip_per_min: u32) -> Self {
        Self {
            limits: RateLimits::new(&[(PAYER, per_payer_per_min), (IP, per_ip_per_min)]),
        }
    }

    /// Limits shared by every process on one Redis (scale-out).
    pub fn shared(per_payer_per_min: u32, per_ip_per_min: u32, conn: ConnectionManager, key_prefix: &str) -> Self {
        Self {
            limits: RateLimits::shared(
                &[(PAYER, per_payer_per_min), (IP, per_ip_per_min)],
                conn,
                format!("{key_prefix}possession:"),
            ),
        }
    }

    /// Counts one attempt; `Err(wait)` when the payer or the address is over its limit.
    pub async fn check(&self, payer: Uuid, ip: Option<IpAddr>) -> Result<(), Duration> {
        let payer = payer.simple().to_string();
        let ip = ip.map(limit_key);
        let mut keys = vec![(PAYER, payer.as_str())];
        if let Some(ip) = &ip {
            keys.push((IP, ip.as_str()));
        }
        self.limits.check(&keys).await
    }
}

/// Sign-ins per client address and per mini-program.
pub struct SessionLimits {
    limits: RateLimits,
}

impl SessionLimits {
    pub fn new(per_ip_per_min: u32, per_app_per_min: u32, redis: Option<&ConnectionManager>, key_prefix: &str) -> Self {
        Self {
            limits: RateLimits::with_redis(
                &[(IP, per_ip_per_min), (APP, per_app_per_min)],
                redis,
                format!("{key_prefix}session:"),
            ),
        }
    }

    /// Counts one sign-in of `app_id` from `ip`; `Err(wait)` when either is over
    /// its limit (the address is counted first: a refused address spends nothing
    /// of the app's limit).
    pub async fn check(&self, ip: Option<IpAddr>, app_id: &str) -> Result<(), Duration> {
        let ip = ip.map(limit_key);
        let mut keys = Vec::with_capacity(2);
        if let Some(ip) = &ip {
            keys.push((IP, ip.as_str()));
        }
        keys.push((APP, app_id));
        self.limits.check(&keys).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn payers_and_addresses_are_limited_separately() {
        let limits = PossessionLimits::new(3, 5);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        for _ in 0..3 {
            assert!(limits.check(a, Some(ip)).await.is_ok());
        }
        let wait = limits.check(a, Some(ip)).await.expect_err("payer a is over its limit");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(20), "{wait:?}");
        // Payer b from the same address: the address has 2 attempts left (a's 4th was
        // refused by the payer limit before the address was counted).
        assert!(limits.check(b, Some(ip)).await.is_ok());
        assert!(limits.check(b, Some(ip)).await.is_ok());
        assert!(
            limits.check(b, Some(ip)).await.is_err(),
            "the address is over its limit"
        );
        assert!(limits.check(Uuid::now_v7(), Some([10, 0, 0, 2].into())).await.is_ok());
    }

    #[tokio::test]
    async fn ipv6_addresses_of_one_64_share_a_limit() {
        let limits = PossessionLimits::new(100, 2);
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        assert!(limits.check(Uuid::now_v7(), ip("2001:db8:1:2::1")).await.is_ok());
        assert!(limits.check(Uuid::now_v7(), ip("2001:db8:1:2::2")).await.is_ok());
        assert!(limits.check(Uuid::now_v7(), ip("2001:db8:1:2:abcd::9")).await.is_err());
        assert!(limits.check(Uuid::now_v7(), ip("2001:db8:1:3::1")).await.is_ok());
    }
}
