//! A circuit breaker per outside interface. While an interface fails, deliveries
//! wait instead of burning their retries; a single probe tests recovery.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub failures: u32,
    pub failure_rate: f64,
    pub window: Duration,
    pub open_for: Duration,
    pub max_open_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Closed: call.
    Allow,
    /// Half-open: this call is the probe.
    Probe,
    /// Open (or a probe is out): wait until then.
    Wait(Instant),
}

/// What a recorded result changed, for alerts and re-drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    Recovered,
}

#[derive(Debug)]
enum State {
    Closed { calls: VecDeque<(Instant, bool)> },
    Open { until: Instant, open_for: Duration },
    HalfOpen { probe_out: bool, open_for: Duration },
}

#[derive(Debug)]
pub struct Breakers {
    config: BreakerConfig,
    states: Mutex<HashMap<String, State>>,
}

impl Breakers {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            states: Mutex::new(HashMap::new()),
        }
    }

    pub fn permit(&self, interface: &str) -> Permit {
        let now = Instant::now();
        let mut states = self.states.lock().expect("breaker lock");
        let state = states
            .entry(interface.to_owned())
            .or_insert_with(|| State::Closed { calls: VecDeque::new() });
        match state {
            State::Closed { .. } => Permit::Allow,
            State::Open { until, open_for } if now >= *until => {
                let open_for = *open_for;
                *state = State::HalfOpen {
                    probe_out: true,
                    open_for,
                };
                Permit::Probe
            }
            State::Open { until, .. } => Permit::Wait(*until),
            State::HalfOpen {
                probe_out: false,
                open_for,
            } => {
                let open_for = *open_for;
                *state = State::HalfOpen {
                    probe_out: true,
                    open_for,
                };
                Permit::Probe
            }
            // Others wait a moment for the probe's answer.
            State::HalfOpen { probe_out: true, .. } => Permit::Wait(now + Duration::from_secs(1)),
        }
    }

    /// Records a call's result. `failure` means the interface itself failed
    /// (timeouts, 5xx, busy) — not a business answer such as "user refused".
    pub fn record(&self, interface: &str, failure: bool) -> Transition {
        let now = Instant::now();
        let cfg = &self.config;
        let mut states = self.states.lock().expect("breaker lock");
        let state = states
            .entry(interface.to_owned())
            .or_insert_with(|| State::Closed { calls: VecDeque::new() });
        match state {
            State::Closed { calls } => {
                calls.push_back((now, failure));
                while calls.front().is_some_and(|(t, _)| now.duration_since(*t) > cfg.window) {
                    calls.pop_front();
                }
                let failed = calls.iter().filter(|(_, f)| *f).count();
                if failure && failed as u32 >= cfg.failures && failed as f64 / calls.len() as f64 >= cfg.failure_rate {
                    *state = State::Open {
                        until: now + cfg.open_for,
                        open_for: cfg.open_for,
                    };
                    return Transition::Opened;
                }
                Transition::None
            }
            State::HalfOpen { open_for, .. } => {
                if failure {
                    let open_for = (*open_for * 2).min(cfg.max_open_for);
                    *state = State::Open {
                        until: now + open_for,
                        open_for,
                    };
                    Transition::None
                } else {
                    *state = State::Closed { calls: VecDeque::new() };
                    Transition::Recovered
                }
            }
            // A call that started before the breaker opened: nothing to learn.
            State::Open { .. } => Transition::None,
        }
    }

    /// Interfaces whose breaker is not closed.
    pub fn open_interfaces(&self) -> Vec<String> {
        let states = self.states.lock().expect("breaker lock");
        states
            .iter()
            .filter(|(_, s)| !matches!(s, State::Closed { .. }))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Every interface a breaker was made for, and whether it is not closed
    /// (the `piaojia_breaker_open` gauge: 0 again once it recovers).
    pub fn interface_states(&self) -> Vec<(String, bool)> {
        let states = self.states.lock().expect("breaker lock");
        states
            .iter()
            .map(|(k, s)| (k.clone(), !matches!(s, State::Closed { .. })))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(open_ms: u64) -> Breakers {
        Breakers::new(BreakerConfig {
            failures: 3,
            failure_rate: 0.5,
            window: Duration::from_secs(30),
            open_for: Duration::from_millis(open_ms),
            max_open_for: Duration::from_millis(open_ms * 4),
        })
    }

    #[test]
    fn opens_probes_and_recovers() {
        let b = breakers(50);
        assert_eq!(b.permit("x"), Permit::Allow);
        assert_eq!(b.record("x", false), Transition::None);
        assert_eq!(b.record("x", true), Transition::None);
        assert_eq!(b.record("x", true), Transition::None);
        assert_eq!(b.record("x", true), Transition::Opened, "3 of 4 failed");
        assert!(matches!(b.permit("x"), Permit::Wait(_)));
        assert_eq!(b.permit("other"), Permit::Allow, "breakers are per interface");
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.permit("x"), Permit::Probe);
        assert!(matches!(b.permit("x"), Permit::Wait(_)), "one probe at a time");
        assert_eq!(b.record("x", true), Transition::None, "failed probe reopens");
        assert!(matches!(b.permit("x"), Permit::Wait(_)));
        std::thread::sleep(Duration::from_millis(110));
        assert_eq!(b.permit("x"), Permit::Probe);
        assert_eq!(b.record("x", false), Transition::Recovered);
        assert_eq!(b.permit("x"), Permit::Allow);
        assert!(b.open_interfaces().is_empty());
        let mut states = b.interface_states();
        states.sort();
        assert_eq!(states, [("other".to_owned(), false), ("x".to_owned(), false)]);
    }

    #[test]
    fn a_few_failures_among_many_successes_do_not_open() {
        let b = breakers(50);
        for _ in 0..20 {
            b.record("x", false);
        }
        for _ in 0..5 {
            assert_eq!(b.record("x", true), Transition::None);
        }
    }
}
