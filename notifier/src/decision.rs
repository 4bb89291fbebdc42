//! What happens after an attempt: one pure function, [`decide`], from the send's
//! result, the attempts so far, the retry schedule and the fallback channel on
//! offer. The worker records what it decides; nothing else moves a delivery on
//! after an attempt.

use std::time::Duration;

use chrono::TimeDelta;
use piaojia_store::{AttemptOutcome, ChannelKind, DeliveryStatus, DeliveryUpdate, ParkReason, Timestamp};

use crate::channels::SendResult;

/// What to do with a delivery after one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Delivered {
        provider_ref: Option<String>,
    },
    /// Try the same delivery again at `at`.
    RetryAt {
        at: Timestamp,
        error: String,
    },
    /// This channel cannot reach the payer (a business outcome): the delivery
    /// ends failed and the payer is tried on `to` instead.
    FallBack {
        to: ChannelKind,
        error: String,
    },
    /// Waits for an operator or, parked for an outage, for the interface.
    Park {
        reason: ParkReason,
        error: String,
    },
    /// Ended by an outcome retrying cannot fix, with no other channel to try.
    GiveUp {
        error: String,
    },
}

/// What the decision depends on besides the send's result.
#[derive(Debug, Clone, Copy)]
pub struct Situation {
    /// Attempts made, this one included.
    pub attempts: u32,
    /// The schedule's wait after this many failed attempts (jitter included);
    /// `None` when the schedule is exhausted.
    pub scheduled_wait: Option<Duration>,
    /// A payer channel of the agency not tried yet, when there is one.
    pub fallback: Option<ChannelKind>,
    pub now: Timestamp,
}

pub fn decide(result: &SendResult, s: Situation) -> Decision {
    match result {
        SendResult::Delivered { provider_ref } => Decision::Delivered {
            provider_ref: provider_ref.clone(),
        },
        SendResult::Permanent { error, .. } => match s.fallback {
            Some(to) => Decision::FallBack {
                to,
                error: error.clone(),
            },
            None => Decision::GiveUp { error: error.clone() },
        },
        // Retrying on a schedule would spend the quota again tomorrow at best: an
        // operator decides (and is alerted).
        SendResult::QuotaExhausted { error, .. } => Decision::Park {
            reason: ParkReason::Quota,
            error: error.clone(),
        },
        SendResult::Retryable {
            error,
            retry_after,
            interface_failure,
            ..
        } => match s.scheduled_wait {
            Some(wait) => {
                // The outside system's own Retry-After (or 45011's minute) wins when longer.
                let wait = retry_after.map_or(wait, |r| r.max(wait));
                Decision::RetryAt {
                    at: s.now + TimeDelta::from_std(wait).unwrap_or(TimeDelta::seconds(15)),
                    error: error.clone(),
                }
            }
            None => Decision::Park {
                // Exhausted while the interface itself was failing: released again
                // automatically when it recovers.
                reason: if *interface_failure {
                    ParkReason::Outage
                } else {
                    ParkReason::Exhausted
                },
                error: error.clone(),
            },
        },
    }
}

impl Decision {
    /// The stored change this decision makes.
    pub fn update(&self) -> DeliveryUpdate {
        match self.clone() {
            Decision::Delivered { provider_ref } => DeliveryUpdate::Delivered { provider_ref },
            Decision::RetryAt { at, error } => DeliveryUpdate::Retry { at, error },
            Decision::FallBack { error, .. } | Decision::GiveUp { error } => DeliveryUpdate::Failed { error },
            Decision::Park { reason, error } => DeliveryUpdate::Parked { reason, error },
        }
    }

    /// The delivery's state once recorded, when it is final.
    pub fn final_status(&self) -> Option<DeliveryStatus> {
        match self {
            Decision::Delivered { .. } => Some(DeliveryStatus::Delivered),
            Decision::FallBack { .. } | Decision::GiveUp { .. } => Some(DeliveryStatus::Failed),
            Decision::Park { .. } => Some(DeliveryStatus::Parked),
            Decision::RetryAt { .. } => None,
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            Decision::Delivered { .. } => None,
            Decision::RetryAt { error, .. }
            | Decision::FallBack { error, .. }
            | Decision::Park { error, .. }
            | Decision::GiveUp { error } => Some(error),
        }
    }
}

/// How the attempt is recorded.
pub fn outcome(result: &SendResult) -> AttemptOutcome {
    match result {
        SendResult::Delivered { .. } => AttemptOutcome::Success,
        SendResult::Permanent { .. } => AttemptOutcome::Permanent,
        SendResult::Retryable { .. } | SendResult::QuotaExhausted { .. } => AttemptOutcome::Retryable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        "2026-11-23T01:30:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .expect("test value")
            .into()
    }

    fn situation(attempts: u32, wait: Option<u64>, fallback: Option<ChannelKind>) -> Situation {
        Situation {
            attempts,
            scheduled_wait: wait.map(Duration::from_secs),
            fallback,
            now: now(),
        }
    }

    fn retryable(interface_failure: bool, retry_after: Option<u64>) -> SendResult {
        SendResult::Retryable {
            code: Some(-1),
            error: "busy".into(),
            retry_after: retry_after.map(Duration::from_secs),
            interface_failure,
        }
    }

    fn permanent() -> SendResult {
        SendResult::Permanent {
            code: Some(43101),
            error: "43101 user refuse to accept the msg".into(),
        }
    }

    #[test]
    fn a_success_is_delivered_with_the_providers_id() {
        let d = decide(
            &SendResult::Delivered {
                provider_ref: Some("123".into()),
            },
            situation(1, Some(15), Some(ChannelKind::WechatSubscribe)),
        );
        assert_eq!(
            d,
            Decision::Delivered {
                provider_ref: Some("123".into())
            }
        );
        assert_eq!(d.final_status(), Some(DeliveryStatus::Delivered));
        assert_eq!(
            d.update(),
            DeliveryUpdate::Delivered {
                provider_ref: Some("123".into())
            }
        );
    }

    #[test]
    fn a_retryable_failure_waits_as_scheduled() {
        let d = decide(&retryable(true, None), situation(1, Some(15), None));
        assert_eq!(
            d,
            Decision::RetryAt {
                at: now() + TimeDelta::seconds(15),
                error: "busy".into()
            }
        );
        assert_eq!(d.final_status(), None);
    }

    #[test]
    fn retry_after_wins_only_when_longer() {
        let longer = decide(&retryable(false, Some(60)), situation(1, Some(15), None));
        assert!(matches!(longer, Decision::RetryAt { at, .. } if at == now() + TimeDelta::seconds(60)));
        let shorter = decide(&retryable(false, Some(5)), situation(1, Some(15), None));
        assert!(matches!(shorter, Decision::RetryAt { at, .. } if at == now() + TimeDelta::seconds(15)));
    }

    #[test]
    fn an_exhausted_schedule_parks_for_an_outage_or_for_an_operator() {
        let outage = decide(&retryable(true, None), situation(16, None, None));
        assert_eq!(
            outage,
            Decision::Park {
                reason: ParkReason::Outage,
                error: "busy".into()
            }
        );
        let exhausted = decide(&retryable(false, None), situation(16, None, None));
        assert!(matches!(
            exhausted,
            Decision::Park {
                reason: ParkReason::Exhausted,
                ..
            }
        ));
        assert_eq!(exhausted.final_status(), Some(DeliveryStatus::Parked));
    }

    #[test]
    fn a_spent_quota_parks_at_once_however_many_retries_are_left() {
        let d = decide(
            &SendResult::QuotaExhausted {
                code: Some(45009),
                error: "45009 reach max api daily quota limit".into(),
            },
            situation(1, Some(15), Some(ChannelKind::WechatSubscribe)),
        );
        assert!(matches!(
            d,
            Decision::Park {
                reason: ParkReason::Quota,
                ..
            }
        ));
    }

    #[test]
    fn a_permanent_failure_falls_back_when_a_channel_is_left() {
        let d = decide(&permanent(), situation(1, Some(15), Some(ChannelKind::WechatSubscribe)));
        assert!(matches!(
            d,
            Decision::FallBack {
                to: ChannelKind::WechatSubscribe,
                ..
            }
        ));
        assert_eq!(d.final_status(), Some(DeliveryStatus::Failed));
        assert!(matches!(d.update(), DeliveryUpdate::Failed { .. }));
    }

    #[test]
    fn a_permanent_failure_gives_up_when_none_is_left() {
        let d = decide(&permanent(), situation(1, Some(15), None));
        assert!(matches!(d, Decision::GiveUp { .. }));
        assert_eq!(d.error(), Some("43101 user refuse to accept the msg"));
    }

    #[test]
    fn outcomes_are_recorded_by_kind() {
        assert_eq!(outcome(&permanent()), AttemptOutcome::Permanent);
        assert_eq!(outcome(&retryable(true, None)), AttemptOutcome::Retryable);
        assert_eq!(
            outcome(&SendResult::Delivered { provider_ref: None }),
            AttemptOutcome::Success
        );
    }
}
