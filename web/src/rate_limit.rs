//! Keyed rate limits that hold across gateway processes: GCRA (`n` attempts at
//! once, then one every 60/n s) per named limit and key. In the embedded mode they
//! are governor's keyed limiters; in scale-out the same arithmetic runs in Redis, so
//! spreading attempts over processes gains nothing. If Redis cannot answer, each
//! process's own limiters stand in rather than letting attempts through unlimited.
//!
//! Limits keyed by a client address take [`crate::client::limit_key`]'s form of it,
//! so an IPv6 client cannot mint a fresh key per address of its /64.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use redis::aio::ConnectionManager;

/// Keyed limiter maps are swept of idle keys once they hold this many.
const SWEEP_AT: usize = 10_000;

/// GCRA over several keys at once, on Redis's clock (so gateways' clocks need not
/// agree). ARGV[1] is 1 to count an attempt: then, per key, its emission interval
/// and burst follow; the attempt counts against every key or none, and the answer
/// is 0 or the milliseconds to wait. A refused key is also marked refused for that
/// long (`<key>:refused`). ARGV[1] = 0 only reads those marks: the longest wait.
const GCRA_LUA: &str = r"
if ARGV[1] == '0' then
  local wait = 0
  for _, key in ipairs(KEYS) do
    local ttl = redis.call('PTTL', key .. ':refused')
    if ttl > wait then wait = ttl end
  end
  return wait
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local wait = 0
local tats = {}
local waits = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local new_tat = tat + interval
  local allow_at = new_tat - interval * burst
  waits[i] = 0
  if allow_at > now then
    waits[i] = allow_at - now
    if waits[i] > wait then wait = waits[i] end
  end
  tats[i] = new_tat
end
if wait > 0 then
  for i, key in ipairs(KEYS) do
    if waits[i] > 0 then redis.call('SET', key .. ':refused', 1, 'PX', waits[i]) end
  end
  return wait
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, tats[i], 'PX', tats[i] - now)
end
return 0
";

struct Limit {
    name: &'static str,
    per_min: u32,
    local: DefaultKeyedRateLimiter<String>,
    /// Keys this process refused, and until when (what [`RateLimits::refusal`] reads
    /// without Redis, as it reads the `:refused` marks in Redis).
    refused_until: Mutex<std::collections::HashMap<String, Instant>>,
}

struct Shared {
    conn: ConnectionManager,
    prefix: String,
    script: redis::Script,
}

/// A set of named per-minute limits, each keyed by strings (an address, an app id…).
pub struct RateLimits {
    limits: Vec<Limit>,
    clock: DefaultClock,
    shared: Option<Shared>,
}

impl RateLimits {
    /// Limits of this process alone (the embedded mode): `(name, attempts per minute)`.
    pub fn new(limits: &[(&'static str, u32)]) -> Self {
        Self {
            limits: limits
                .iter()
                .map(|&(name, per_min)| Limit {
                    name,
                    per_min: per_min.max(1),
                    local: RateLimiter::keyed(Quota::per_minute(NonZeroU32::new(per_min).unwrap_or(NonZeroU32::MIN))),
                    refused_until: Mutex::default(),
                })
                .collect(),
            clock: DefaultClock::default(),
            shared: None,
        }
    }

    /// The same limits shared by every process on one Redis (scale-out); keys live
    /// under `key_prefix`.
    pub fn shared(limits: &[(&'static str, u32)], conn: ConnectionManager, key_prefix: String) -> Self {
        Self {
            shared: Some(Shared {
                conn,
                prefix: key_prefix,
                script: redis::Script::new(GCRA_LUA),
            }),
            ..Self::new(limits)
        }
    }

    /// [`RateLimits::shared`] with Redis, else [`RateLimits::new`].
    pub fn with_redis(limits: &[(&'static str, u32)], redis: Option<&ConnectionManager>, key_prefix: String) -> Self {
        match redis {
            Some(conn) => Self::shared(limits, conn.clone(), key_prefix),
            None => Self::new(limits),
        }
    }

    fn limit(&self, name: &str) -> &Limit {
        self.limits
            .iter()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no rate limit named {name}"))
    }

    /// Counts one attempt against each `(limit name, key)`; `Err(wait)` when any of
    /// them is over its limit. In Redis all keys count or none do; locally they are
    /// counted in order until one refuses.
    pub async fn check(&self, keys: &[(&'static str, &str)]) -> Result<(), Duration> {
        if let Some(shared) = &self.shared {
            match self.shared_call(shared, keys, true).await {
                Ok(0) => return Ok(()),
                Ok(ms) => return Err(Duration::from_millis(ms)),
                Err(e) => tracing::warn!(error = %e, "shared rate limits unavailable, this process's own apply"),
            }
        }
        self.check_local(keys)
    }

    /// Whether `(limit name, key)` was refused an attempt that is still being waited
    /// out: `Some(wait)` while it is. Counts nothing, so a caller can refuse a
    /// limited key before doing what the limit guards (and count only failures).
    pub async fn refusal(&self, name: &'static str, key: &str) -> Option<Duration> {
        if let Some(shared) = &self.shared {
            match self.shared_call(shared, &[(name, key)], false).await {
                Ok(0) => return None,
                Ok(ms) => return Some(Duration::from_millis(ms)),
                Err(e) => tracing::warn!(error = %e, "shared rate limits unavailable, this process's own apply"),
            }
        }
        let limit = self.limit(name);
        let refused = limit.refused_until.lock().unwrap_or_else(|e| e.into_inner());
        refused
            .get(key)
            .and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|wait| !wait.is_zero())
    }

    async fn shared_call(
        &self,
        shared: &Shared,
        keys: &[(&'static str, &str)],
        count: bool,
    ) -> Result<u64, redis::RedisError> {
        // At least 1 ms: a zero interval would never limit (and SET PX 0 is refused).
        let interval_ms = |n: u32| (60_000 / u64::from(n)).max(1);
        let mut invocation = shared.script.prepare_invoke();
        invocation.arg(u8::from(count));
        for (name, key) in keys {
            let limit = self.limit(name);
            invocation.key(format!("{}{name}:{key}", shared.prefix));
            if count {
                invocation.arg(interval_ms(limit.per_min)).arg(limit.per_min);
            }
        }
        let mut conn = shared.conn.clone();
        invocation.invoke_async(&mut conn).await
    }

    fn check_local(&self, keys: &[(&'static str, &str)]) -> Result<(), Duration> {
        let now = self.clock.now();
        for (name, key) in keys {
            let limit = self.limit(name);
            if limit.local.len() > SWEEP_AT {
                limit.local.retain_recent();
            }
            if let Err(not_until) = limit.local.check_key(&(*key).to_owned()) {
                let wait = not_until.wait_time_from(now);
                let mut refused = limit.refused_until.lock().unwrap_or_else(|e| e.into_inner());
                if refused.len() > SWEEP_AT {
                    let instant = Instant::now();
                    refused.retain(|_, until| *until > instant);
                }
                refused.insert((*key).to_owned(), Instant::now() + wait);
                return Err(wait);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_count_per_key_and_refusals_can_be_read_without_counting() {
        let limits = RateLimits::new(&[("ip", 3), ("app", 5)]);
        for _ in 0..3 {
            assert!(limits.check(&[("ip", "10.0.0.1"), ("app", "wx1")]).await.is_ok());
        }
        assert!(
            limits.refusal("ip", "10.0.0.1").await.is_none(),
            "not refused yet, though the next attempt would be"
        );
        let wait = limits
            .check(&[("ip", "10.0.0.1"), ("app", "wx1")])
            .await
            .expect_err("the address is over its limit");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(20), "{wait:?}");
        assert!(limits.refusal("ip", "10.0.0.1").await.is_some());
        // The app was not counted by the refused attempt: two left for others.
        assert!(limits.check(&[("ip", "10.0.0.2"), ("app", "wx1")]).await.is_ok());
        assert!(limits.check(&[("ip", "10.0.0.3"), ("app", "wx1")]).await.is_ok());
        assert!(limits.check(&[("ip", "10.0.0.4"), ("app", "wx1")]).await.is_err());
        assert!(limits.check(&[("ip", "10.0.0.4"), ("app", "wx2")]).await.is_ok());
    }
}
