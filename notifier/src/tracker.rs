//! Success rate and latency per channel, per outside interface and for the
//! inbound issuer API, over the last 5 minutes, hour and day.
//!
//! Each process counts per minute in memory and flushes its own rows to the store
//! (PostgreSQL is the shared truth), so every gateway sees the figures of all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use piaojia_store::{StatsRow, Store, Timestamp};
use serde::Serialize;

/// Upper bounds of the latency buckets in milliseconds; the last bucket is open.
pub const BUCKETS_MS: [u64; 14] = [
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    30_000,
    60_000,
    u64::MAX,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Channel,
    Interface,
    Inbound,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Channel => "channel",
            Scope::Interface => "interface",
            Scope::Inbound => "inbound",
        }
    }
}

#[derive(Default, Clone)]
struct Counts {
    attempts: i64,
    successes: i64,
    buckets: [i64; BUCKETS_MS.len()],
    /// Changed since its row was last written: an idle process writes nothing.
    dirty: bool,
}

/// Counts of one minute, one scope and one key.
type MinuteKey = (DateTime<Utc>, Scope, String);

pub struct Tracker {
    writer: String,
    minutes: Mutex<HashMap<MinuteKey, Counts>>,
}

impl Tracker {
    pub fn new(writer: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            writer: writer.into(),
            minutes: Mutex::new(HashMap::new()),
        })
    }

    pub fn record(&self, scope: Scope, key: &str, success: bool, latency_ms: u64) {
        let minute = Utc::now()
            .duration_trunc(TimeDelta::minutes(1))
            .unwrap_or_else(|_| Utc::now());
        let bucket = BUCKETS_MS
            .iter()
            .position(|b| latency_ms <= *b)
            .unwrap_or(BUCKETS_MS.len() - 1);
        let mut minutes = self.minutes.lock().expect("tracker lock");
        let c = minutes.entry((minute, scope, key.to_owned())).or_default();
        c.attempts += 1;
        c.successes += i64::from(success);
        c.buckets[bucket] += 1;
        c.dirty = true;
    }

    /// Writes this process's rows; minutes older than a day are forgotten here.
    pub async fn flush(&self, store: &dyn Store) -> piaojia_store::Result<()> {
        let (keys, rows): (Vec<MinuteKey>, Vec<StatsRow>) = {
            let mut minutes = self.minutes.lock().expect("tracker lock");
            let horizon = Utc::now() - TimeDelta::minutes(2);
            let changed = minutes
                .iter_mut()
                .filter_map(|(k, c)| std::mem::take(&mut c.dirty).then_some((k, c)))
                .map(|(k, c)| {
                    let (minute, scope, key) = k;
                    let row = StatsRow {
                        minute: (*minute).into(),
                        scope: scope.as_str().to_owned(),
                        key: key.clone(),
                        writer: self.writer.clone(),
                        attempts: c.attempts,
                        successes: c.successes,
                        latency_buckets: c.buckets.to_vec(),
                    };
                    (k.clone(), row)
                })
                .unzip();
            // Closed minutes are final once flushed.
            minutes.retain(|(minute, _, _), _| *minute >= horizon);
            changed
        };
        if rows.is_empty() {
            return Ok(());
        }
        let result = store.upsert_stats(rows).await;
        if result.is_err() {
            // Not written: the next flush tries again.
            let mut minutes = self.minutes.lock().expect("tracker lock");
            for k in keys {
                if let Some(c) = minutes.get_mut(&k) {
                    c.dirty = true;
                }
            }
        }
        result
    }
}

/// Figures of one key over one window.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowSummary {
    pub attempts: i64,
    pub successes: i64,
    /// successes / attempts; null without attempts.
    pub success_rate: Option<f64>,
    /// Upper bounds of the buckets holding the percentile, in milliseconds.
    pub p50_ms: Option<u64>,
    pub p95_ms: Option<u64>,
    pub p99_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeySummary {
    pub key: String,
    pub last_5m: WindowSummary,
    pub last_1h: WindowSummary,
    pub last_24h: WindowSummary,
}

fn summarize(rows: &[&StatsRow]) -> WindowSummary {
    let attempts: i64 = rows.iter().map(|r| r.attempts).sum();
    let successes: i64 = rows.iter().map(|r| r.successes).sum();
    let mut buckets = [0i64; BUCKETS_MS.len()];
    for r in rows {
        for (i, n) in r.latency_buckets.iter().enumerate().take(BUCKETS_MS.len()) {
            buckets[i] += n;
        }
    }
    let total: i64 = buckets.iter().sum();
    let pct = |p: f64| -> Option<u64> {
        if total == 0 {
            return None;
        }
        let rank = (total as f64 * p).ceil() as i64;
        let mut seen = 0;
        for (i, n) in buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(BUCKETS_MS[i].min(BUCKETS_MS[BUCKETS_MS.len() - 2] * 2));
            }
        }
        None
    };
    WindowSummary {
        attempts,
        successes,
        success_rate: (attempts > 0).then(|| successes as f64 / attempts as f64),
        p50_ms: pct(0.50),
        p95_ms: pct(0.95),
        p99_ms: pct(0.99),
    }
}

/// Summaries per key of one scope from the rows of the last day.
pub fn summaries(rows: &[StatsRow], scope: Scope, now: Timestamp) -> Vec<KeySummary> {
    let mut keys: Vec<&str> = rows
        .iter()
        .filter(|r| r.scope == scope.as_str())
        .map(|r| r.key.as_str())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys.into_iter()
        .map(|key| {
            let window = |mins: i64| -> WindowSummary {
                let since = now - TimeDelta::minutes(mins);
                let rows: Vec<&StatsRow> = rows
                    .iter()
                    .filter(|r| r.scope == scope.as_str() && r.key == key && r.minute >= since)
                    .collect();
                summarize(&rows)
            };
            KeySummary {
                key: key.to_owned(),
                last_5m: window(5),
                last_1h: window(60),
                last_24h: window(24 * 60),
            }
        })
        .collect()
}

/// The summary of one key over the last `mins` minutes.
pub fn window_of(rows: &[StatsRow], scope: Scope, key: &str, now: Timestamp, mins: i64) -> WindowSummary {
    let since = now - TimeDelta::minutes(mins);
    let rows: Vec<&StatsRow> = rows
        .iter()
        .filter(|r| r.scope == scope.as_str() && r.key == key && r.minute >= since)
        .collect();
    summarize(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rates_from_buckets() {
        let now = Timestamp::now();
        let mut buckets = vec![0i64; BUCKETS_MS.len()];
        buckets[3] = 90; // <= 50 ms
        buckets[6] = 9; // <= 500 ms
        buckets[9] = 1; // <= 5 s
        let row = StatsRow {
            minute: now
                .as_datetime()
                .duration_trunc(TimeDelta::minutes(1))
                .expect("trunc")
                .into(),
            scope: "channel".into(),
            key: "k".into(),
            writer: "w".into(),
            attempts: 100,
            successes: 97,
            latency_buckets: buckets,
        };
        let old = StatsRow {
            minute: row.minute - TimeDelta::minutes(30),
            ..row.clone()
        };
        let s = summaries(&[row, old], Scope::Channel, now);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].last_5m.attempts, 100);
        assert_eq!(s[0].last_1h.attempts, 200);
        assert_eq!(s[0].last_5m.success_rate, Some(0.97));
        assert_eq!(s[0].last_5m.p50_ms, Some(50));
        assert_eq!(s[0].last_5m.p95_ms, Some(500));
        assert_eq!(s[0].last_5m.p99_ms, Some(500));
    }
}
