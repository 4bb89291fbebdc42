//! Rate limits on adding receipts by possession: guessing check codes (6
//! characters) must not pay, so attempts are limited per payer and per client
//! address. Both are GCRA limits (`n` attempts at once, then one every 60/n s).
//! In the embedded mode they are governor's keyed limiters; in scale-out the same
//! arithmetic runs in Redis, so the limit holds across every gateway process. If
//! Redis cannot answer, the process's own limiters stand in rather than letting
//! attempts through unlimited.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use redis::aio::ConnectionManager;
use uuid::Uuid;

/// Keyed limiter maps are swept of idle keys once they hold this many.
const SWEEP_AT: usize = 10_000;

/// GCRA over several keys at once, on Redis's clock (so gateways' clocks need not
/// agree). ARGV holds, per key, its emission interval and burst. An attempt counts
/// against every key or none; the answer is 0 or the milliseconds to wait.
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = 0
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - interval * burst
  if allow_at > now and allow_at - now > wait then wait = allow_at - now end
  tats[i] = new_tat
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, tats[i], 'PX', tats[i] - now)
end
return 0
";

pub struct PossessionLimits {
    per_payer: DefaultKeyedRateLimiter<Uuid>,
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    quotas: (u32, u32),
    shared: Option<Shared>,
}

struct Shared {
    conn: ConnectionManager,
    prefix: String,
    script: redis::Script,
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

impl PossessionLimits {
    /// Limits of this process alone (the embedded mode).
    pub fn new(per_payer_per_min: u32, per_ip_per_min: u32) -> Self {
        Self {
            per_payer: RateLimiter::keyed(per_minute(per_payer_per_min)),
            per_ip: RateLimiter::keyed(per_minute(per_ip_per_min)),
            clock: DefaultClock::default(),
            quotas: (per_payer_per_min.max(1), per_ip_per_min.max(1)),
            shared: None,
        }
    }

    /// Limits shared by every process on one Redis (scale-out).
    pub fn shared(per_payer_per_min: u32, per_ip_per_min: u32, conn: ConnectionManager, key_prefix: &str) -> Self {
        Self {
            shared: Some(Shared {
                conn,
                prefix: format!("{key_prefix}possession:"),
                script: redis::Script::new(GCRA_LUA),
            }),
            ..Self::new(per_payer_per_min, per_ip_per_min)
        }
    }

    /// Counts one attempt; `Err(wait)` when the payer or the address is over its limit.
    pub async fn check(&self, payer: Uuid, ip: Option<IpAddr>) -> Result<(), Duration> {
        if let Some(shared) = &self.shared {
            match self.check_shared(shared, payer, ip).await {
                Ok(answer) => return answer,
                Err(e) => tracing::warn!(error = %e, "shared possession limits unavailable, this process's own apply"),
            }
        }
        self.check_local(payer, ip)
    }

    async fn check_shared(
        &self,
        shared: &Shared,
        payer: Uuid,
        ip: Option<IpAddr>,
    ) -> Result<Result<(), Duration>, redis::RedisError> {
        // At least 1 ms: a zero interval would never limit (and SET PX 0 is refused).
        let interval_ms = |n: u32| (60_000 / u64::from(n)).max(1);
        let mut invocation = shared.script.prepare_invoke();
        invocation
            .key(format!("{}payer:{}", shared.prefix, payer.simple()))
            .arg(interval_ms(self.quotas.0))
            .arg(self.quotas.0);
        if let Some(ip) = ip {
            invocation
                .key(format!("{}ip:{ip}", shared.prefix))
                .arg(interval_ms(self.quotas.1))
                .arg(self.quotas.1);
        }
        let mut conn = shared.conn.clone();
        let wait_ms: u64 = invocation.invoke_async(&mut conn).await?;
        Ok(if wait_ms == 0 {
            Ok(())
        } else {
            Err(Duration::from_millis(wait_ms))
        })
    }

    fn check_local(&self, payer: Uuid, ip: Option<IpAddr>) -> Result<(), Duration> {
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
}
