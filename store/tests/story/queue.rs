//! The delivery queue, the notifier's side: claims, leases, attempts, provider
//! reports, listing and re-drive.

use std::sync::Arc;

use chrono::Duration;
use piaojia_store::{
    AttemptOutcome, AttemptRecord, ChannelKind, Completion, Delivery, DeliveryEvent, DeliveryFilter, DeliveryStatus,
    DeliveryUpdate, NewDelivery, ParkReason, ReimbursementState, ReversalOutcome, StoreError, Timestamp,
};
use uuid::Uuid;

use crate::Fixture;
use crate::support::{
    Error, TestResult, attempt, claimed_ids, complete, delivery, must_delivery, one_agency, reversal, seed, settle,
};

chapters!(
    claims_are_exclusive,
    leases_fencing_and_due_times,
    attempt_outcomes_and_follow_ups,
    completions_in_one_batch,
    provider_reports_only_take_back_a_delivery,
    listing_and_redrive,
    pushes_hand_deliveries_to_free_workers,
);

const TEMPLATE: ChannelKind = ChannelKind::WechatTemplate;
const WEBHOOK: ChannelKind = ChannelKind::IssuerWebhook;

async fn claims_are_exclusive(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let ids = seed(&*store, a, "C", &[TEMPLATE; 50]).await?;
    let now = Timestamp::now() + Duration::seconds(1);
    let lease_until = now + Duration::seconds(60);

    let start = Arc::new(tokio::sync::Barrier::new(2));
    let mut tasks = Vec::new();
    for owner in ["worker-a", "worker-b"] {
        let store = Arc::clone(&store);
        let start = Arc::clone(&start);
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut got = Vec::new();
            loop {
                let batch = store.claim_deliveries(owner, now, lease_until, 10).await?;
                if batch.is_empty() {
                    return Ok::<_, StoreError>(got);
                }
                assert!(batch.len() <= 10);
                got.extend(batch);
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let mut claimed = claimed_ids(&all);
    claimed.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(claimed, expected, "every delivery claimed exactly once");
    // Everything is leased now.
    assert!(
        store
            .claim_deliveries("worker-c", now, lease_until, 10)
            .await?
            .is_empty()
    );

    // A claim carries the receipt and its agency.
    let c = &all[0];
    assert_eq!(c.lease_until, lease_until);
    assert_eq!(c.receipt.id, c.delivery.receipt_id);
    assert_eq!(c.receipt.agency_id, a);
    assert_eq!(c.receipt.agency_code, "A001");
    assert_eq!(c.receipt.agency_name, "医院 A001");
    assert_eq!(c.receipt.issuer_app_id, "his-1");
    assert_eq!(c.receipt.bill_batch_code, "11010125");
    assert_eq!(c.receipt.bus_type, "02");
    assert_eq!(c.receipt.total_fen, 12_345);
    assert_eq!(c.receipt.open_id.as_deref(), Some("o-open-id"));
    assert!(!c.receipt.reversed);
    assert_eq!(c.receipt.reimbursement_state, ReimbursementState::Init);
    assert_eq!(c.delivery.agency_id, a);
    assert_eq!(c.delivery.interface, "wechat_template:test");

    // A reversed receipt says so.
    let ReversalOutcome::Reversed(r) = store
        .reverse_receipt(
            a,
            "11010125",
            "C000000",
            reversal("退费"),
            vec![delivery(DeliveryEvent::Reversed, WEBHOOK)],
        )
        .await?
    else {
        return Err("reversal refused".into());
    };
    let later = Timestamp::now() + Duration::seconds(1);
    let batch = store
        .claim_deliveries("worker-c", later, later + Duration::seconds(60), 10)
        .await?;
    assert_eq!(claimed_ids(&batch), [r.deliveries[1].id]);
    assert_eq!(batch[0].delivery.event, DeliveryEvent::Reversed);
    assert!(batch[0].receipt.reversed);
    assert_eq!(batch[0].receipt.reimbursement_state, ReimbursementState::Cancel);
    Ok(())
}

async fn leases_fencing_and_due_times(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let d = seed(&*store, a, "L", &[TEMPLATE; 3]).await?;
    let t0 = Timestamp::now() + Duration::seconds(1);
    let s = Duration::seconds;

    // Oldest first, up to the limit; leased rows are skipped.
    let first = store.claim_deliveries("a", t0, t0 + s(30), 2).await?;
    assert_eq!(claimed_ids(&first), [d[0], d[1]]);
    let rest = store.claim_deliveries("b", t0 + s(10), t0 + s(40), 10).await?;
    assert_eq!(claimed_ids(&rest), [d[2]]);
    // Nothing is due before it was created.
    assert!(
        store
            .claim_deliveries("z", t0 - s(3600), t0 + s(3600), 10)
            .await?
            .is_empty()
    );

    // a's lease expires: b takes over (d2 is still b's).
    let taken = store.claim_deliveries("b", t0 + s(31), t0 + s(1000), 10).await?;
    assert_eq!(claimed_ids(&taken), [d[0], d[1]]);

    // a is fenced out: nothing it does changes anything.
    let before = must_delivery(&*store, d[0]).await?;
    assert!(!store.renew_lease(d[0], "a", t0 + s(5000)).await?);
    assert!(!store.defer_delivery(d[0], "a", t0 + s(5000)).await?);
    let follow = delivery(DeliveryEvent::Issued, WEBHOOK);
    assert!(
        !complete(
            &*store,
            d[0],
            "a",
            attempt(AttemptOutcome::Success, None),
            DeliveryUpdate::Delivered { provider_ref: None },
            vec![follow.clone()],
        )
        .await?
    );
    let after = must_delivery(&*store, d[0]).await?;
    assert_eq!(after.status, DeliveryStatus::Pending);
    assert_eq!(after.attempts, 0);
    assert_eq!(after.next_attempt_at, before.next_attempt_at);
    assert_eq!(after.updated_at, before.updated_at);
    assert!(store.delivery_attempts(d[0]).await?.is_empty());
    assert!(store.delivery(follow.id).await?.is_none());
    // b still holds it: renewing works, and keeps others out past the old lease.
    assert!(store.renew_lease(d[0], "b", t0 + s(2000)).await?);
    assert!(store.renew_lease(d[0], "b", t0 + s(2000)).await?);

    // A retry is due at its time, not before; the lease is released.
    let retry_at = t0 + s(200) + Duration::nanoseconds(1_500);
    assert!(
        complete(
            &*store,
            d[0],
            "b",
            attempt(AttemptOutcome::Retryable, Some(-1)),
            DeliveryUpdate::Retry {
                at: retry_at,
                error: "system busy".to_owned()
            },
            vec![],
        )
        .await?
    );
    // The lease is gone: the same owner cannot complete twice.
    assert!(
        !complete(
            &*store,
            d[0],
            "b",
            attempt(AttemptOutcome::Success, None),
            DeliveryUpdate::Delivered { provider_ref: None },
            vec![],
        )
        .await?
    );
    assert!(!store.renew_lease(d[0], "b", t0 + s(3000)).await?);
    let retried = must_delivery(&*store, d[0]).await?;
    assert_eq!(retried.status, DeliveryStatus::Pending);
    assert_eq!(retried.attempts, 1);
    assert_eq!(retried.next_attempt_at, retry_at);
    assert_eq!(retried.last_error.as_deref(), Some("system busy"));
    assert_eq!(store.delivery_attempts(d[0]).await?.len(), 1);

    // At t0+150 only d2 (lease expired at t0+40) is claimable; d0 waits, d1 is leased.
    let mid = store.claim_deliveries("c", t0 + s(150), t0 + s(1000), 10).await?;
    assert_eq!(claimed_ids(&mid), [d[2]]);
    let due = store.claim_deliveries("c", retry_at, t0 + s(1000), 10).await?;
    assert_eq!(claimed_ids(&due), [d[0]]);
    assert_eq!(due[0].delivery.attempts, 1);

    // Deferring postpones without counting an attempt.
    assert!(store.defer_delivery(d[0], "c", t0 + s(500)).await?);
    let deferred = must_delivery(&*store, d[0]).await?;
    assert_eq!(deferred.attempts, 1);
    assert_eq!(deferred.next_attempt_at, t0 + s(500));
    assert!(
        !store.renew_lease(d[0], "c", t0 + s(3000)).await?,
        "defer releases the lease"
    );
    assert!(
        store
            .claim_deliveries("c", t0 + s(400), t0 + s(1000), 10)
            .await?
            .is_empty()
    );
    let back = store.claim_deliveries("c", t0 + s(500), t0 + s(1000), 10).await?;
    assert_eq!(claimed_ids(&back), [d[0]]);

    // Unknown deliveries are simply not held.
    assert!(!store.renew_lease(Uuid::now_v7(), "c", t0).await?);
    assert!(!store.defer_delivery(Uuid::now_v7(), "c", t0).await?);
    Ok(())
}

/// A batch of completions: each row fenced on its own, outcomes and follow-ups
/// as one by one, results in order.
async fn completions_in_one_batch(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let d = seed(&*store, a, "B", &[TEMPLATE; 5]).await?;
    let now = Timestamp::now() + Duration::seconds(1);
    let s = Duration::seconds;
    let mine = store.claim_deliveries("w", now, now + s(60), 4).await?;
    assert_eq!(claimed_ids(&mine), d[..4]);
    let theirs = store.claim_deliveries("other", now, now + s(60), 4).await?;
    assert_eq!(claimed_ids(&theirs), [d[4]]);

    let webhook = delivery(DeliveryEvent::Issued, WEBHOOK);
    let retry_at = now + s(30);
    let done = store
        .complete_attempts(
            "w",
            &[
                Completion {
                    delivery_id: d[0],
                    attempt: attempt(AttemptOutcome::Success, None),
                    update: DeliveryUpdate::Delivered {
                        provider_ref: Some("msg-0".to_owned()),
                    },
                    follow_ups: vec![webhook.clone()],
                },
                Completion {
                    delivery_id: d[1],
                    attempt: attempt(AttemptOutcome::Retryable, Some(-1)),
                    update: DeliveryUpdate::Retry {
                        at: retry_at,
                        error: "system busy".to_owned(),
                    },
                    follow_ups: vec![],
                },
                // Not ours: fenced out, nothing written.
                Completion {
                    delivery_id: d[4],
                    attempt: attempt(AttemptOutcome::Success, None),
                    update: DeliveryUpdate::Delivered { provider_ref: None },
                    follow_ups: vec![delivery(DeliveryEvent::Issued, WEBHOOK)],
                },
                Completion {
                    delivery_id: d[2],
                    attempt: attempt(AttemptOutcome::Permanent, Some(43101)),
                    update: DeliveryUpdate::Failed {
                        error: "43101".to_owned(),
                    },
                    follow_ups: vec![],
                },
                Completion {
                    delivery_id: d[3],
                    attempt: attempt(AttemptOutcome::Retryable, None),
                    update: DeliveryUpdate::Parked {
                        reason: ParkReason::Outage,
                        error: "timeout".to_owned(),
                    },
                    follow_ups: vec![],
                },
            ],
        )
        .await?;
    assert_eq!(done, [true, true, false, true, true]);

    let delivered = must_delivery(&*store, d[0]).await?;
    assert_eq!(delivered.status, DeliveryStatus::Delivered);
    assert_eq!(delivered.provider_ref.as_deref(), Some("msg-0"));
    assert!(delivered.delivered_at.is_some());
    assert_eq!(delivered.attempts, 1);
    assert!(store.delivery(webhook.id).await?.is_some(), "follow-up written");
    let retried = must_delivery(&*store, d[1]).await?;
    assert_eq!(retried.status, DeliveryStatus::Pending);
    assert_eq!(retried.next_attempt_at, retry_at);
    assert_eq!(retried.last_error.as_deref(), Some("system busy"));
    assert_eq!(must_delivery(&*store, d[2]).await?.status, DeliveryStatus::Failed);
    let parked = must_delivery(&*store, d[3]).await?;
    assert_eq!(parked.status, DeliveryStatus::Parked);
    assert_eq!(parked.park_reason, Some(ParkReason::Outage));
    for id in &d[..4] {
        assert_eq!(store.delivery_attempts(*id).await?.len(), 1);
        assert!(
            !store.renew_lease(*id, "w", now + s(90)).await?,
            "the lease is released"
        );
    }
    let foreign = must_delivery(&*store, d[4]).await?;
    assert_eq!(foreign.status, DeliveryStatus::Pending);
    assert_eq!(foreign.attempts, 0);
    assert!(store.delivery_attempts(d[4]).await?.is_empty());
    assert!(store.renew_lease(d[4], "other", now + s(90)).await?);

    // The same delivery twice: the second meets the fence the first left.
    let again = store.claim_deliveries("w", retry_at, retry_at + s(60), 10).await?;
    assert_eq!(claimed_ids(&again), [webhook.id, d[1]]);
    let twice = |outcome| Completion {
        delivery_id: d[1],
        attempt: attempt(outcome, None),
        update: DeliveryUpdate::Delivered { provider_ref: None },
        follow_ups: vec![],
    };
    let done = store
        .complete_attempts("w", &[twice(AttemptOutcome::Success), twice(AttemptOutcome::Success)])
        .await?;
    assert_eq!(done, [true, false]);
    assert_eq!(store.delivery_attempts(d[1]).await?.len(), 2);
    assert!(store.complete_attempts("w", &[]).await?.is_empty());
    Ok(())
}

async fn attempt_outcomes_and_follow_ups(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let d = seed(&*store, a, "O", &[TEMPLATE; 4]).await?;
    let now = Timestamp::now() + Duration::seconds(1);
    let batch = store
        .claim_deliveries("w", now, now + Duration::seconds(60), 10)
        .await?;
    assert_eq!(claimed_ids(&batch), d);

    // Delivered, with a status webhook as follow-up in the same transaction.
    let webhook = NewDelivery {
        payload: Some(serde_json::json!({"outcome": "delivered", "channel": "wechat_template"})),
        interface: "webhook:his.example.org".to_owned(),
        ..delivery(DeliveryEvent::Issued, WEBHOOK)
    };
    let success = attempt(AttemptOutcome::Success, Some(0));
    assert!(
        complete(
            &*store,
            d[0],
            "w",
            success.clone(),
            DeliveryUpdate::Delivered {
                provider_ref: Some("msg-1".to_owned())
            },
            vec![webhook.clone()],
        )
        .await?
    );
    let done = must_delivery(&*store, d[0]).await?;
    assert_eq!(done.status, DeliveryStatus::Delivered);
    assert_eq!(done.attempts, 1);
    assert_eq!(done.provider_ref.as_deref(), Some("msg-1"));
    assert!(done.delivered_at.is_some());
    assert!(done.last_error.is_none());
    assert!(done.updated_at >= done.created_at);
    let follow = must_delivery(&*store, webhook.id).await?;
    assert_eq!(follow.receipt_id, done.receipt_id);
    assert_eq!(follow.agency_id, a);
    assert_eq!(follow.status, DeliveryStatus::Pending);
    assert_eq!(follow.attempts, 0);
    assert_eq!(follow.channel, WEBHOOK);
    assert_eq!(follow.interface, "webhook:his.example.org");
    assert_eq!(follow.payload, webhook.payload);
    assert!(follow.next_attempt_at <= Timestamp::now());
    // The receipt lists it too.
    let stored = store
        .receipt(a, "11010125", "O000000")
        .await?
        .ok_or("receipt missing")?;
    assert_eq!(
        stored.deliveries.iter().map(|x| x.id).collect::<Vec<_>>(),
        [d[0], webhook.id]
    );
    assert_eq!(stored.deliveries[1].payload, webhook.payload);
    // The attempt is kept as given.
    let attempts = store.delivery_attempts(d[0]).await?;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].id, success.id);
    assert_eq!(attempts[0].started_at, success.started_at);
    assert_eq!(attempts[0].latency_ms, 42);
    assert_eq!(attempts[0].outcome, AttemptOutcome::Success);
    assert_eq!(attempts[0].code, Some(0));
    assert_eq!(attempts[0].detail.as_deref(), Some("Success"));

    // Failed: a business outcome.
    assert!(
        complete(
            &*store,
            d[1],
            "w",
            attempt(AttemptOutcome::Permanent, Some(43101)),
            DeliveryUpdate::Failed {
                error: "43101 user refused".to_owned()
            },
            vec![],
        )
        .await?
    );
    let failed = must_delivery(&*store, d[1]).await?;
    assert_eq!(failed.status, DeliveryStatus::Failed);
    assert_eq!(failed.attempts, 1);
    assert_eq!(failed.last_error.as_deref(), Some("43101 user refused"));
    assert!(failed.delivered_at.is_none() && failed.provider_ref.is_none());
    // Completing again is fenced (no lease, not pending): no attempt, no follow-up.
    let late = delivery(DeliveryEvent::Issued, WEBHOOK);
    assert!(
        !complete(
            &*store,
            d[1],
            "w",
            attempt(AttemptOutcome::Success, None),
            DeliveryUpdate::Delivered { provider_ref: None },
            vec![late.clone()],
        )
        .await?
    );
    assert_eq!(store.delivery_attempts(d[1]).await?.len(), 1);
    assert!(store.delivery(late.id).await?.is_none());

    // Parked: waits for an operator.
    assert!(
        complete(
            &*store,
            d[2],
            "w",
            attempt(AttemptOutcome::Retryable, Some(504)),
            DeliveryUpdate::Parked {
                reason: ParkReason::Exhausted,
                error: "timeout".to_owned()
            },
            vec![],
        )
        .await?
    );
    let parked = must_delivery(&*store, d[2]).await?;
    assert_eq!(parked.status, DeliveryStatus::Parked);
    assert_eq!(parked.park_reason, Some(ParkReason::Exhausted));
    assert_eq!(parked.last_error.as_deref(), Some("timeout"));
    assert_eq!(parked.attempts, 1);

    // Retry, then delivered: two attempts, oldest first; the error is cleared.
    let first = attempt(AttemptOutcome::Retryable, Some(-1));
    assert!(
        complete(
            &*store,
            d[3],
            "w",
            first.clone(),
            DeliveryUpdate::Retry {
                at: now,
                error: "busy".to_owned()
            },
            vec![],
        )
        .await?
    );
    let again = store
        .claim_deliveries("w2", now, now + Duration::seconds(60), 10)
        .await?;
    assert!(claimed_ids(&again).contains(&d[3]));
    let second = AttemptRecord {
        started_at: first.started_at + Duration::milliseconds(5),
        ..attempt(AttemptOutcome::Success, None)
    };
    assert!(
        complete(
            &*store,
            d[3],
            "w2",
            second.clone(),
            DeliveryUpdate::Delivered { provider_ref: None },
            vec![],
        )
        .await?
    );
    let twice = must_delivery(&*store, d[3]).await?;
    assert_eq!(twice.status, DeliveryStatus::Delivered);
    assert_eq!(twice.attempts, 2);
    assert!(twice.last_error.is_none());
    assert!(twice.provider_ref.is_none());
    assert_eq!(
        store
            .delivery_attempts(d[3])
            .await?
            .iter()
            .map(|x| (x.id, x.outcome))
            .collect::<Vec<_>>(),
        [
            (first.id, AttemptOutcome::Retryable),
            (second.id, AttemptOutcome::Success)
        ]
    );

    // A provider's later report, found by its reference on the delivery's interface.
    let by_ref = store
        .delivery_by_provider_ref("wechat_template:test", "msg-1")
        .await?
        .ok_or("not found by provider ref")?;
    assert_eq!(by_ref.id, d[0]);
    for (interface, provider_ref) in [
        ("issuer_webhook:test", "msg-1"),
        ("wechat_template:test", "msg-2"),
        // The channel is not the interface.
        ("wechat_template", "msg-1"),
    ] {
        assert!(
            store.delivery_by_provider_ref(interface, provider_ref).await?.is_none(),
            "{interface} {provider_ref}"
        );
    }
    assert!(
        store
            .settle_delivery(d[0], DeliveryStatus::Failed, Some("43101 blocked".to_owned()))
            .await?
    );
    let reported = must_delivery(&*store, d[0]).await?;
    assert_eq!(reported.status, DeliveryStatus::Failed);
    assert_eq!(reported.last_error.as_deref(), Some("43101 blocked"));
    assert_eq!(reported.attempts, 1);
    assert!(
        !store
            .settle_delivery(Uuid::now_v7(), DeliveryStatus::Failed, None)
            .await?
    );
    assert!(store.delivery(Uuid::now_v7()).await?.is_none());
    assert!(store.delivery_attempts(Uuid::now_v7()).await?.is_empty());
    Ok(())
}

/// What a provider report could change of a delivery.
type State = (
    DeliveryStatus,
    Option<String>,
    Option<ParkReason>,
    Option<String>,
    Option<Timestamp>,
    i32,
    Timestamp,
    Timestamp,
);

fn state(d: &Delivery) -> State {
    (
        d.status,
        d.last_error.clone(),
        d.park_reason,
        d.provider_ref.clone(),
        d.delivered_at,
        d.attempts,
        d.next_attempt_at,
        d.updated_at,
    )
}

/// A provider's later report (TEMPLATESENDJOBFINISH) can only take back what it
/// accepted: `delivered` → `failed`. Any other request is refused and changes nothing.
async fn provider_reports_only_take_back_a_delivery(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let d = seed(&*store, a, "S", &[TEMPLATE; 4]).await?;
    let far = Timestamp::now() + Duration::days(1);
    settle(&*store, &d, |i| match i {
        0 => DeliveryUpdate::Delivered {
            provider_ref: Some("msg-0".to_owned()),
        },
        1 => DeliveryUpdate::Failed {
            error: "43101".to_owned(),
        },
        2 => DeliveryUpdate::Parked {
            reason: ParkReason::Exhausted,
            error: "timeout".to_owned(),
        },
        _ => DeliveryUpdate::Retry {
            at: far,
            error: "busy".to_owned(),
        },
    })
    .await?;
    let unchanged = async |id: Uuid, before: &Delivery| -> TestResult {
        assert_eq!(state(&must_delivery(&*store, id).await?), state(before), "{id} changed");
        Ok(())
    };

    // Failed, parked and pending deliveries take no report at all.
    for id in &d[1..] {
        let before = must_delivery(&*store, *id).await?;
        for status in DeliveryStatus::ALL {
            assert!(
                !store
                    .settle_delivery(*id, *status, Some("late report".to_owned()))
                    .await?,
                "{:?} → {status:?}",
                before.status
            );
            unchanged(*id, &before).await?;
        }
    }
    // A delivered one takes nothing but failed.
    let delivered = must_delivery(&*store, d[0]).await?;
    assert_eq!(delivered.status, DeliveryStatus::Delivered);
    for status in [
        DeliveryStatus::Pending,
        DeliveryStatus::Delivered,
        DeliveryStatus::Parked,
    ] {
        assert!(
            !store.settle_delivery(d[0], status, None).await?,
            "delivered → {status:?}"
        );
        unchanged(d[0], &delivered).await?;
    }
    assert!(
        store
            .settle_delivery(d[0], DeliveryStatus::Failed, Some("43101 blocked".to_owned()))
            .await?
    );
    let taken_back = must_delivery(&*store, d[0]).await?;
    assert_eq!(taken_back.status, DeliveryStatus::Failed);
    assert_eq!(taken_back.last_error.as_deref(), Some("43101 blocked"));
    assert!(taken_back.updated_at >= delivered.updated_at);
    // What was sent stays on record; no attempt is counted.
    assert_eq!(taken_back.provider_ref.as_deref(), Some("msg-0"));
    assert_eq!(taken_back.delivered_at, delivered.delivered_at);
    assert_eq!(taken_back.attempts, delivered.attempts);
    assert_eq!(store.delivery_attempts(d[0]).await?.len(), 1);
    // Once failed, a second report is refused too.
    assert!(
        !store
            .settle_delivery(d[0], DeliveryStatus::Failed, Some("again".to_owned()))
            .await?
    );
    unchanged(d[0], &taken_back).await?;
    // Unknown deliveries are refused.
    for status in DeliveryStatus::ALL {
        assert!(!store.settle_delivery(Uuid::now_v7(), *status, None).await?);
    }
    Ok(())
}

async fn listing_and_redrive(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let b = one_agency(&*store, "B002").await?;
    let (t, w) = (TEMPLATE, WEBHOOK);
    let d = seed(&*store, a, "R", &[t, t, t, w, w, w]).await?;
    let far = Timestamp::now() + Duration::days(1);
    settle(&*store, &d, |i| match i {
        0 | 4 => DeliveryUpdate::Parked {
            reason: ParkReason::Exhausted,
            error: "timeout".to_owned(),
        },
        1 => DeliveryUpdate::Parked {
            reason: ParkReason::Outage,
            error: "breaker open".to_owned(),
        },
        2 => DeliveryUpdate::Failed {
            error: "43101".to_owned(),
        },
        3 => DeliveryUpdate::Delivered { provider_ref: None },
        _ => DeliveryUpdate::Retry {
            at: far,
            error: "busy".to_owned(),
        },
    })
    .await?;

    let list = async |filter: DeliveryFilter, limit: i64| -> Result<Vec<Uuid>, Error> {
        Ok(store
            .list_deliveries(&filter, limit)
            .await?
            .iter()
            .map(|x| x.id)
            .collect())
    };
    let all = DeliveryFilter::default();
    assert_eq!(list(all.clone(), 100).await?, [d[5], d[4], d[3], d[2], d[1], d[0]]);
    assert_eq!(list(all.clone(), 2).await?, [d[5], d[4]]);
    let parked = DeliveryFilter {
        status: Some(DeliveryStatus::Parked),
        ..Default::default()
    };
    assert_eq!(list(parked.clone(), 100).await?, [d[4], d[1], d[0]]);
    let exhausted = DeliveryFilter {
        park_reason: Some(ParkReason::Exhausted),
        ..parked.clone()
    };
    assert_eq!(list(exhausted, 100).await?, [d[4], d[0]]);
    let templates = DeliveryFilter {
        channel: Some(t),
        ..Default::default()
    };
    assert_eq!(list(templates.clone(), 100).await?, [d[2], d[1], d[0]]);
    let webhook_iface = DeliveryFilter {
        interface: Some("issuer_webhook:test".to_owned()),
        status: Some(DeliveryStatus::Pending),
        ..Default::default()
    };
    assert_eq!(list(webhook_iface, 100).await?, [d[5]]);
    let by_ids = DeliveryFilter {
        ids: Some(vec![d[0], d[3], Uuid::now_v7()]),
        ..Default::default()
    };
    assert_eq!(list(by_ids, 100).await?, [d[3], d[0]]);
    let no_ids = DeliveryFilter {
        ids: Some(vec![]),
        ..Default::default()
    };
    assert!(list(no_ids, 100).await?.is_empty());
    let mine = DeliveryFilter {
        agency_id: Some(a),
        ..Default::default()
    };
    assert_eq!(list(mine, 100).await?.len(), 6);
    let theirs = DeliveryFilter {
        agency_id: Some(b),
        ..Default::default()
    };
    assert!(list(theirs, 100).await?.is_empty());

    // Only parked or failed deliveries are re-driven.
    let start = Timestamp::now() + Duration::hours(1);
    let spacing = Duration::milliseconds(250);
    for status in [DeliveryStatus::Pending, DeliveryStatus::Delivered] {
        let filter = DeliveryFilter {
            status: Some(status),
            ..Default::default()
        };
        assert_eq!(store.redrive(&filter, start, spacing).await?, 0);
    }
    let untouched = must_delivery(&*store, d[3]).await?;
    assert_eq!(untouched.status, DeliveryStatus::Delivered);

    // Parked templates: d0 then d1, spaced, back to a fresh start.
    let parked_templates = DeliveryFilter {
        channel: Some(t),
        ..parked
    };
    assert_eq!(store.redrive(&parked_templates, start, spacing).await?, 2);
    for (k, id) in [d[0], d[1]].into_iter().enumerate() {
        let x = must_delivery(&*store, id).await?;
        assert_eq!(x.status, DeliveryStatus::Pending);
        assert_eq!(x.attempts, 0);
        assert!(x.park_reason.is_none());
        assert_eq!(x.next_attempt_at, start + spacing * k as i32);
    }
    // d2 (failed) is a template too but was not parked.
    assert_eq!(must_delivery(&*store, d[2]).await?.status, DeliveryStatus::Failed);

    // Without a status: every parked or failed match, oldest first.
    let later = start + Duration::hours(1);
    assert_eq!(store.redrive(&all, later, spacing).await?, 2);
    let x2 = must_delivery(&*store, d[2]).await?;
    let x4 = must_delivery(&*store, d[4]).await?;
    assert_eq!((x2.status, x2.next_attempt_at), (DeliveryStatus::Pending, later));
    assert_eq!(
        (x4.status, x4.next_attempt_at),
        (DeliveryStatus::Pending, later + spacing)
    );
    assert_eq!(x2.attempts, 0);
    assert_eq!(must_delivery(&*store, d[3]).await?.status, DeliveryStatus::Delivered);
    assert_eq!(must_delivery(&*store, d[5]).await?.next_attempt_at, far);
    assert_eq!(
        store.redrive(&all, later, spacing).await?,
        0,
        "nothing left to re-drive"
    );

    // The schedule is what claims see.
    let first = store
        .claim_deliveries("w", start, start + Duration::seconds(60), 10)
        .await?;
    assert_eq!(claimed_ids(&first), [d[0]]);
    let second = store
        .claim_deliveries("w", start + spacing, start + Duration::seconds(60), 10)
        .await?;
    assert_eq!(claimed_ids(&second), [d[1]]);
    Ok(())
}

/// This process's notifier, as the intake sees it: `free` workers, each handed
/// delivery recorded; workers reserved for a transaction that does not commit come
/// free again.
struct Workers {
    free: Arc<std::sync::atomic::AtomicUsize>,
    handed: Arc<std::sync::Mutex<Vec<piaojia_store::ClaimedDelivery>>>,
    lease: Duration,
}

/// Gives a reservation's unused workers back when it is dropped.
struct Held(Arc<std::sync::atomic::AtomicUsize>, usize);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_add(self.1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl piaojia_store::Handoff for Workers {
    fn reserve(&self, wanted: usize) -> Option<piaojia_store::Reserved> {
        use std::sync::atomic::Ordering::SeqCst;
        let n = wanted.min(self.free.load(SeqCst));
        if n == 0 {
            return None;
        }
        self.free.fetch_sub(n, SeqCst);
        let held = Held(self.free.clone(), n);
        let handed = self.handed.clone();
        Some(piaojia_store::Reserved::new(
            "worker-h".to_owned(),
            Timestamp::now() + self.lease,
            n,
            move |jobs| {
                let mut held = held;
                held.1 -= jobs.len();
                handed.lock().unwrap_or_else(|p| p.into_inner()).extend(jobs);
            },
        ))
    }
}

async fn pushes_hand_deliveries_to_free_workers(fx: &Fixture) -> TestResult {
    use piaojia_store::InsertOutcome;
    use std::sync::atomic::Ordering::SeqCst;
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let workers = Arc::new(Workers {
        free: Arc::new(3.into()),
        handed: Arc::default(),
        lease: Duration::seconds(30),
    });
    store.hand_off_to(Some(workers.clone()));
    let handed = || workers.handed.lock().map(|h| h.clone()).unwrap_or_default();
    store.set_following("wxpay", "o-gone", false, Timestamp::now()).await?;
    let template = |target: &str| NewDelivery {
        target: target.to_owned(),
        interface: "wechat:wxpay:template_send".to_owned(),
        ..delivery(DeliveryEvent::Issued, TEMPLATE)
    };

    // Three free workers take both deliveries of the first receipt, leased to them
    // in its insert, with the receipt a claim would have read.
    let first = store
        .insert_receipt(
            crate::support::receipt(a, "0000000001", "hash-1"),
            vec![delivery(DeliveryEvent::Issued, WEBHOOK), template("o-gone")],
        )
        .await?;
    let InsertOutcome::Created {
        receipt, handed_off: 2, ..
    } = first
    else {
        return Err(format!("expected both deliveries handed off, got {first:?}").into());
    };
    let jobs = handed();
    assert_eq!(jobs.len(), 2);
    for job in &jobs {
        assert_eq!(job.receipt.id, receipt.id);
        assert_eq!(job.receipt.agency_code, "A001");
        assert_eq!(job.receipt.agency_name, "医院 A001");
        assert_eq!(job.receipt.bill_no, "0000000001");
        assert_eq!(job.receipt.total_fen, receipt.total_fen);
        assert_eq!(job.receipt.reimbursement_state, ReimbursementState::Init);
        assert!(!job.receipt.reversed);
        assert_eq!(job.delivery.attempts, 0);
        // Read in the same transaction, as a claim reads it.
        assert_eq!(job.unfollowed, job.delivery.channel == TEMPLATE, "{job:?}");
    }
    assert_eq!(workers.free.load(SeqCst), 1);

    // One worker left: the second receipt's first delivery goes to it, the other
    // waits for a claim; a leased one is nobody else's until its lease runs out.
    let second = store
        .insert_receipt(
            crate::support::receipt(a, "0000000002", "hash-2"),
            vec![template("o-here"), delivery(DeliveryEvent::Issued, WEBHOOK)],
        )
        .await?;
    assert!(
        matches!(second, InsertOutcome::Created { handed_off: 1, .. }),
        "{second:?}"
    );
    let jobs = handed();
    assert_eq!(jobs.len(), 3);
    assert!(!jobs[2].unfollowed);
    let now = Timestamp::now() + Duration::seconds(1);
    let others = store
        .claim_deliveries("worker-c", now, now + Duration::seconds(60), 10)
        .await?;
    let waiting = crate::support::created(second.clone())?.deliveries[1].id;
    assert_eq!(claimed_ids(&others), vec![waiting], "only the delivery no worker took");

    // A handed delivery is completed under the lease the intake gave it.
    assert!(
        complete(
            &*store,
            jobs[0].delivery.id,
            "worker-h",
            attempt(AttemptOutcome::Success, None),
            DeliveryUpdate::Delivered { provider_ref: None },
            vec![],
        )
        .await?
    );
    assert_eq!(
        must_delivery(&*store, jobs[0].delivery.id).await?.status,
        DeliveryStatus::Delivered
    );

    // The process died with the rest in hand: once their leases run out, any
    // notifier claims them, so nothing handed off is lost.
    let later = Timestamp::now() + Duration::seconds(31);
    let reclaimed = store
        .claim_deliveries("worker-c", later, later + Duration::seconds(60), 10)
        .await?;
    let mut expected = vec![jobs[1].delivery.id, jobs[2].delivery.id];
    expected.sort();
    let mut got = claimed_ids(&reclaimed);
    got.sort();
    assert_eq!(got, expected);

    // A repeat creates nothing and hands nothing off.
    workers.free.store(5, SeqCst);
    let repeat = store
        .insert_receipt(
            crate::support::receipt(a, "0000000001", "hash-1"),
            vec![delivery(DeliveryEvent::Issued, WEBHOOK)],
        )
        .await?;
    assert!(matches!(repeat, InsertOutcome::Duplicate(_)), "{repeat:?}");
    assert_eq!(handed().len(), 3);

    // A push whose transaction fails starts nothing, and its workers come free.
    let reused = NewDelivery {
        id: jobs[0].delivery.id,
        ..delivery(DeliveryEvent::Issued, WEBHOOK)
    };
    let failed = store
        .insert_receipt(crate::support::receipt(a, "0000000003", "hash-3"), vec![reused])
        .await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(handed().len(), 3);
    assert_eq!(workers.free.load(SeqCst), 5);
    assert!(store.receipt(a, "11010125", "0000000003").await?.is_none());

    // Without a notifier to hand to, every delivery waits for a claim.
    store.hand_off_to(None);
    let alone = store
        .insert_receipt(
            crate::support::receipt(a, "0000000004", "hash-4"),
            vec![delivery(DeliveryEvent::Issued, WEBHOOK)],
        )
        .await?;
    assert!(
        matches!(alone, InsertOutcome::Created { handed_off: 0, .. }),
        "{alone:?}"
    );
    assert_eq!(workers.free.load(SeqCst), 5);
    Ok(())
}
