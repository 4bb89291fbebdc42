//! The message server's inbox: one row per WeChat event (its retries insert
//! nothing), claims exclusive among concurrent claimers, a lease that a dead
//! claimer loses, settling fenced by the lease, retries when due, pruning.

use std::sync::Arc;

use chrono::Duration;
use piaojia_store::{InboxOutcome, NewInboxEvent, StoreError, Timestamp};

use crate::Fixture;
use crate::support::TestResult;

chapters!(inbox_claims_leases_and_retries);

fn event(key: &str, at: Timestamp) -> NewInboxEvent {
    NewInboxEvent {
        wechat_app_id: "wx-oa".to_owned(),
        dedup_key: key.to_owned(),
        event: "subscribe".to_owned(),
        payload_sealed: "v1:sealed".to_owned(),
        received_at: at,
    }
}

async fn inbox_claims_leases_and_retries(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let t0 = Timestamp::now();
    for i in 0..40 {
        assert!(store.record_inbox_event(event(&format!("k{i}"), t0)).await?);
    }
    // WeChat's retry of one: nothing kept.
    assert!(!store.record_inbox_event(event("k7", t0)).await?);
    assert_eq!(store.inbox_events("wx-oa").await?.len(), 40);

    // Four claimers at once: every event claimed exactly once.
    let now = t0 + Duration::seconds(1);
    let lease = now + Duration::seconds(60);
    let start = Arc::new(tokio::sync::Barrier::new(4));
    let mut tasks = Vec::new();
    for owner in ["gw-a", "gw-b", "gw-c", "gw-d"] {
        let (store, start) = (Arc::clone(&store), Arc::clone(&start));
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut got = Vec::new();
            loop {
                let batch = store.claim_inbox_events(owner, now, lease, 3).await?;
                if batch.is_empty() {
                    return Ok::<_, StoreError>(got);
                }
                got.extend(batch.into_iter().map(|e| (owner, e)));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let mut ids: Vec<_> = all.iter().map(|(_, e)| e.id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 40);
    assert_eq!(all.len(), 40, "no event claimed twice");
    assert!(
        all.iter()
            .all(|(o, e)| e.attempts == 1 && e.lease_owner.as_deref() == Some(*o))
    );
    assert!(store.claim_inbox_events("gw-e", now, lease, 50).await?.is_empty());

    let (owner, first) = all[0].clone();
    let (_, second) = all[1].clone();
    // Only the holder settles.
    assert!(
        !store
            .settle_inbox_event(first.id, "gw-other", first.attempts, InboxOutcome::Done, now)
            .await?
    );
    assert!(
        store
            .settle_inbox_event(first.id, owner, first.attempts, InboxOutcome::Done, now)
            .await?
    );
    assert!(
        !store
            .settle_inbox_event(first.id, owner, first.attempts, InboxOutcome::Done, now)
            .await?
    );

    // A failure waits for its retry time, then is claimed again.
    let (owner2, _) = all[1];
    let retry = now + Duration::seconds(5);
    assert!(
        store
            .settle_inbox_event(
                second.id,
                owner2,
                second.attempts,
                InboxOutcome::Failed {
                    error: "boom".to_owned(),
                    retry_at: Some(retry),
                },
                now,
            )
            .await?
    );
    assert!(store.claim_inbox_events("gw-e", now, lease, 50).await?.is_empty());
    let again = store.claim_inbox_events("gw-e", retry, lease, 50).await?;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].id, second.id);
    assert_eq!(again[0].attempts, 2);
    assert_eq!(again[0].last_error.as_deref(), Some("boom"));

    // The others' claimers died: past the lease every one is taken again.
    let late = lease + Duration::seconds(1);
    let taken = store
        .claim_inbox_events("gw-f", late, late + Duration::seconds(60), 100)
        .await?;
    assert_eq!(taken.len(), 39, "all but the one done");
    assert!(taken.iter().all(|e| e.lease_owner.as_deref() == Some("gw-f")));
    // The dead claimer's settling is refused now.
    let (dead, third) = all[2].clone();
    assert!(
        !store
            .settle_inbox_event(third.id, dead, third.attempts, InboxOutcome::Done, late)
            .await?
    );
    // Failed for good, and pruned with the done one past retention.
    let third_again = taken.iter().find(|e| e.id == third.id).ok_or("taken again")?;
    assert_eq!(third_again.attempts, third.attempts + 1);
    assert!(
        store
            .settle_inbox_event(
                third.id,
                "gw-f",
                third_again.attempts,
                InboxOutcome::Failed {
                    error: "never".to_owned(),
                    retry_at: None,
                },
                late,
            )
            .await?
    );
    // A stale handling by the same owner (its lease ran out and the owner claimed
    // the event again) cannot settle the newer claim: the fence is the claim.
    let fourth = taken
        .iter()
        .find(|e| e.id != third.id && e.id != second.id)
        .cloned()
        .ok_or("a fourth event")?;
    let later = late + Duration::seconds(61);
    let reclaimed = store
        .claim_inbox_events("gw-f", later, later + Duration::seconds(60), 100)
        .await?;
    let newer = reclaimed.iter().find(|e| e.id == fourth.id).ok_or("re-claimed")?;
    assert_eq!(newer.attempts, fourth.attempts + 1);
    assert!(
        !store
            .settle_inbox_event(fourth.id, "gw-f", fourth.attempts, InboxOutcome::Done, later)
            .await?,
        "the stale claim settles nothing"
    );
    assert!(
        store
            .settle_inbox_event(fourth.id, "gw-f", newer.attempts, InboxOutcome::Done, later)
            .await?
    );
    let kept = store.inbox_events("wx-oa").await?;
    assert_eq!(kept.iter().filter(|e| e.state == "failed").count(), 1);
    assert_eq!(kept.iter().filter(|e| e.state == "done").count(), 2);

    // An idle poll is a read: nothing due while every pending event is leased.
    assert!(!store.inbox_has_due(later).await?);
    assert!(store.inbox_has_due(later + Duration::seconds(61)).await?);

    // The operator's view and re-drive: a failed event back to due, attempts reset.
    let failed = store.list_inbox_events(Some("failed"), None, 10).await?;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].id, third.id);
    let page = store.list_inbox_events(None, None, 5).await?;
    let next = store.list_inbox_events(None, Some(page[4].id), 100).await?;
    assert_eq!(page.len() + next.len(), 40);
    assert!(next.iter().all(|e| e.id > page[4].id));
    assert!(!store.retry_inbox_event(fourth.id, later).await?, "done is not failed");
    assert!(store.retry_inbox_event(third.id, later).await?);
    let back = store.inbox_event(third.id).await?.ok_or("kept")?;
    assert_eq!((back.state.as_str(), back.attempts), ("pending", 0));
    assert!(back.handled_at.is_none() && back.lease_owner.is_none());
    assert_eq!(back.last_error.as_deref(), Some("never"));
    assert!(store.inbox_has_due(later).await?);
    let again = store
        .claim_inbox_events("gw-g", later, later + Duration::seconds(60), 100)
        .await?;
    assert_eq!(again.iter().map(|e| e.id).collect::<Vec<_>>(), vec![third.id]);
    assert!(
        store
            .settle_inbox_event(
                third.id,
                "gw-g",
                again[0].attempts,
                InboxOutcome::Failed {
                    error: "still".to_owned(),
                    retry_at: None,
                },
                later,
            )
            .await?
    );
    // The batch re-drive takes the failed ones since a time only.
    assert_eq!(
        store
            .retry_failed_inbox_events(later + Duration::seconds(1), later)
            .await?,
        0
    );
    assert_eq!(store.retry_failed_inbox_events(later, later).await?, 1);
    assert!(store.inbox_event(uuid::Uuid::now_v7()).await?.is_none());
    let again = store
        .claim_inbox_events("gw-g", later, later + Duration::seconds(60), 100)
        .await?;
    assert!(
        store
            .settle_inbox_event(
                third.id,
                "gw-g",
                again[0].attempts,
                InboxOutcome::Failed {
                    error: "never".to_owned(),
                    retry_at: None,
                },
                later,
            )
            .await?
    );

    assert_eq!(store.prune_inbox(later + Duration::seconds(1)).await?, 3);
    assert_eq!(store.inbox_events("wx-oa").await?.len(), 37);
    // A pruned key is a new event again (retention outlives WeChat's retries).
    assert!(store.record_inbox_event(event(&first.dedup_key, late)).await?);
    Ok(())
}
