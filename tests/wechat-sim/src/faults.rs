//! Fault injection: latency, random errors, timeouts, daily quotas and outages.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Added latency: `fixed_ms` plus a uniform draw in `0..=jitter_ms`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencyDist {
    pub fixed_ms: u64,
    pub jitter_ms: u64,
}

/// How an outage answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutageMode {
    /// HTTP 503 with a text body.
    #[default]
    Http503,
    /// HTTP 200 with `{"errcode":-1,"errmsg":"system error"}`.
    SystemError,
}

/// Faults applied to calls in one scope. `Faults::default()` injects nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    pub latency: LatencyDist,
    /// Probability (0..=1) of answering `errcode`/`errmsg` without doing anything.
    pub error_rate: f64,
    pub errcode: i64,
    pub errmsg: String,
    /// Probability (0..=1) of sleeping `timeout_ms` before answering (the call still takes effect).
    pub timeout_rate: f64,
    pub timeout_ms: u64,
    /// Calls per app per (Beijing) day before 45009.
    pub daily_quota: Option<u64>,
    pub outage: bool,
    /// Outage until this instant of the simulator's clock.
    pub outage_until: Option<DateTime<Utc>>,
    pub outage_mode: OutageMode,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency: LatencyDist::default(),
            error_rate: 0.0,
            errcode: -1,
            errmsg: "system error".to_owned(),
            timeout_rate: 0.0,
            timeout_ms: 60_000,
            daily_quota: None,
            outage: false,
            outage_until: None,
            outage_mode: OutageMode::Http503,
        }
    }
}

impl Faults {
    pub fn latency(fixed_ms: u64, jitter_ms: u64) -> Self {
        Self {
            latency: LatencyDist { fixed_ms, jitter_ms },
            ..Self::default()
        }
    }

    /// Random `-1 system error` answers at this rate.
    pub fn error_rate(rate: f64) -> Self {
        Self {
            error_rate: rate,
            ..Self::default()
        }
    }

    /// Random answers with this errcode at this rate.
    pub fn error_rate_with(rate: f64, errcode: i64, errmsg: &str) -> Self {
        Self {
            error_rate: rate,
            errcode,
            errmsg: errmsg.to_owned(),
            ..Self::default()
        }
    }

    pub fn timeouts(rate: f64, timeout_ms: u64) -> Self {
        Self {
            timeout_rate: rate,
            timeout_ms,
            ..Self::default()
        }
    }

    pub fn daily_quota(calls: u64) -> Self {
        Self {
            daily_quota: Some(calls),
            ..Self::default()
        }
    }

    pub fn outage(mode: OutageMode) -> Self {
        Self {
            outage: true,
            outage_mode: mode,
            ..Self::default()
        }
    }

    pub fn outage_until(until: DateTime<Utc>, mode: OutageMode) -> Self {
        Self {
            outage_until: Some(until),
            outage_mode: mode,
            ..Self::default()
        }
    }

    pub(crate) fn in_outage(&self, now: DateTime<Utc>) -> bool {
        self.outage || self.outage_until.is_some_and(|t| now < t)
    }
}

/// Where faults apply: every WeChat endpoint, or one path such as `/cgi-bin/message/template/send`.
/// A path's own faults replace the `All` ones for that path.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultScope {
    All,
    Path(String),
}

/// Deterministic xorshift64* so seeded fault runs repeat exactly.
#[derive(Debug, Clone)]
pub(crate) struct Prng(u64);

impl Prng {
    pub(crate) fn new(seed: u64) -> Self {
        // splitmix64 step so that small seeds still give well-mixed, non-zero states.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Self(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`; draws nothing when `p <= 0` so unrelated faults do not shift the sequence.
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.next_f64() < p
    }
}
