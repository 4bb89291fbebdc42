//! When to try again: a fixed schedule of waits with jitter, then park.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetrySchedule {
    waits: Vec<Duration>,
    jitter_percent: u32,
}

impl RetrySchedule {
    pub fn new(waits: Vec<Duration>, jitter_percent: u32) -> Self {
        Self { waits, jitter_percent }
    }

    /// The wait after `attempts` failed attempts, or `None` when the schedule is
    /// exhausted and the delivery must be parked.
    pub fn next_wait(&self, attempts: u32) -> Option<Duration> {
        let base = *self.waits.get(attempts.checked_sub(1)? as usize)?;
        Some(base + jitter(base, self.jitter_percent))
    }

    pub fn max_attempts(&self) -> u32 {
        self.waits.len() as u32 + 1
    }
}

/// A random extra of up to `percent` of `base`.
pub fn jitter(base: Duration, percent: u32) -> Duration {
    let span = base.as_millis() as u64 * u64::from(percent) / 100;
    if span == 0 {
        return Duration::ZERO;
    }
    let r = u64::from_le_bytes(piaojia_core::pii::random_bytes::<8>());
    Duration::from_millis(r % (span + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_schedule_then_parks() {
        let s = RetrySchedule::new(vec![Duration::from_secs(15), Duration::from_secs(30)], 10);
        assert_eq!(s.next_wait(0), None, "no failure yet, nothing to wait for");
        let first = s.next_wait(1).expect("first retry");
        assert!(
            first >= Duration::from_secs(15) && first <= Duration::from_millis(16_500),
            "{first:?}"
        );
        let second = s.next_wait(2).expect("second retry");
        assert!(second >= Duration::from_secs(30) && second <= Duration::from_secs(33));
        assert_eq!(s.next_wait(3), None);
        assert_eq!(s.max_attempts(), 3);
    }
}
