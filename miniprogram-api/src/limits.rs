//! Rate limits on adding receipts by possession: guessing check codes (6
//! characters) must not pay, so attempts are limited per payer and per client
//! address (governor's keyed GCRA limiters, in-process: with N gateways the
//! effective limit is at most N times the setting).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

/// Keyed limiter maps are swept of idle keys once they hold this many.
const SWEEP_AT: usize = 10_000;

pub struct PossessionLimits {
    per_payer: DefaultKeyedRateLimiter<Uuid>,
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

fn per_minute(n: u32) -> Quota {
    // `n` attempts at once, then one every 60/n seconds.
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

impl PossessionLimits {
    pub fn new(per_payer_per_min: u32, per_ip_per_min: u32) -> Self {
        Self {
            per_payer: RateLimiter::keyed(per_minute(per_payer_per_min)),
            per_ip: RateLimiter::keyed(per_minute(per_ip_per_min)),
            clock: DefaultClock::default(),
        }
    }

    /// Counts one attempt; `Err(wait)` when the payer or the address is over its limit.
    pub fn check(&self, payer: Uuid, ip: Option<IpAddr>) -> Result<(), Duration> {
        if self.per_payer.len() > SWEEP_AT {
            self.per_payer.retain_recent();
        }
        if self.per_ip.len() > SWEEP_AT {
            self.per_ip.retain_recent();
        }
        let now = self.clock.now();
        self.per_payer
            .check_key(&payer)
            .map_err(|not_until| not_until.wait_time_from(now))?;
        if let Some(ip) = ip {
            self.per_ip
                .check_key(&ip)
                .map_err(|not_until| not_until.wait_time_from(now))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payers_and_addresses_are_limited_separately() {
        let limits = PossessionLimits::new(3, 5);
        let ip: IpAddr = [10, 0, 0, 1].into();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        for _ in 0..3 {
            assert!(limits.check(a, Some(ip)).is_ok());
        }
        let wait = limits.check(a, Some(ip)).expect_err("payer a is over its limit");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(20), "{wait:?}");
        // Payer b from the same address: the address has 2 attempts left (a's 4th was
        // refused by the payer limit before the address was counted).
        assert!(limits.check(b, Some(ip)).is_ok());
        assert!(limits.check(b, Some(ip)).is_ok());
        assert!(limits.check(b, Some(ip)).is_err(), "the address is over its limit");
        assert!(limits.check(Uuid::now_v7(), Some([10, 0, 0, 2].into())).is_ok());
    }
}
