//! Intake: receipts pushed and reversed, with the deliveries they call for.

use std::sync::Arc;

use chrono::Duration;
use piaojia_store::payments::{NewWechatPayment, PaymentOutcome};
use piaojia_store::{
    ChannelKind, DeliveryEvent, DeliveryStatus, Entity, InsertOutcome, NewDelivery, ReimbursementState, Reversal,
    ReversalOutcome, StoreError, Timestamp,
};
use uuid::Uuid;

use crate::Fixture;
use crate::support::{TestResult, at, created, delivery, issued_deliveries, one_agency, receipt, reversal};

chapters!(
    create_duplicate_conflict,
    concurrent_identical_inserts,
    one_bad_push_fails_only_itself,
    a_batch_collects_each_openid_once,
    lookup_is_scoped_by_agency,
    reversal_rules,
    deliveries_share_the_transaction,
    a_payment_takes_its_orders_receipts_once,
);

async fn create_duplicate_conflict(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let b = one_agency(&*store, "B002").await?;

    let new = receipt(a, "0000000001", "hash-1");
    let first = created(store.insert_receipt(new.clone(), issued_deliveries()).await?)?;
    assert_eq!(first.id, new.id);
    assert_eq!(first.agency_id, a);
    assert_eq!(first.bill_no, "0000000001");
    assert_eq!(first.details, new.details);
    assert_eq!(first.file, new.file);
    assert_eq!(first.payer_id_index.as_deref(), Some("idx-id"));
    assert_eq!(first.payer_name_index, None);
    assert_eq!(first.open_id.as_deref(), Some("o-open-id"));
    assert_eq!(first.total_fen, 12_345);
    assert_eq!(first.received_at, new.received_at);
    // Stored at microsecond precision on both backends.
    assert_eq!(first.issued_at, at(0) + Duration::microseconds(123_456));
    assert_eq!(first.reimbursement_state, ReimbursementState::Init);
    assert!(first.reversal.is_none());
    assert_eq!(first.deliveries.len(), 2);
    for d in &first.deliveries {
        assert_eq!(d.receipt_id, first.id);
        assert_eq!(d.event, DeliveryEvent::Issued);
        assert_eq!(d.status, DeliveryStatus::Pending);
        assert_eq!(d.attempts, 0);
        assert!(d.last_error.is_none());
        assert_eq!(d.agency_id, a);
        assert_eq!(d.interface, format!("{}:test", d.channel));
        assert!(d.payload.is_none() && d.park_reason.is_none() && d.provider_ref.is_none());
        assert!(d.delivered_at.is_none());
        assert_eq!(d.next_attempt_at, d.created_at);
    }

    // The same push again (a retry makes a new id): the first result, no new deliveries.
    let again = store
        .insert_receipt(receipt(a, "0000000001", "hash-1"), issued_deliveries())
        .await?;
    let InsertOutcome::Duplicate(dup) = again else {
        return Err(format!("expected Duplicate, got {again:?}").into());
    };
    assert_eq!(dup.id, first.id);
    assert_eq!(dup.deliveries.len(), 2);
    assert_eq!(
        dup.deliveries.iter().map(|d| d.id).collect::<Vec<_>>(),
        first.deliveries.iter().map(|d| d.id).collect::<Vec<_>>()
    );

    // Different content from the same agency.
    assert!(matches!(
        store
            .insert_receipt(receipt(a, "0000000001", "hash-2"), issued_deliveries())
            .await?,
        InsertOutcome::Conflict
    ));
    // The identity is the agency's own: another agency's receipt with the same code
    // and number is stored too (never blocked), and the clash is reported.
    let clash = store
        .insert_receipt(receipt(b, "0000000001", "hash-1"), issued_deliveries())
        .await?;
    let InsertOutcome::Created {
        receipt: theirs,
        identity_clash: true,
        ..
    } = clash
    else {
        return Err(format!("expected Created with a clash, got {clash:?}").into());
    };
    assert_eq!(theirs.agency_id, b);
    // Same number in another batch is another receipt, and no clash.
    let mut other_batch = receipt(a, "0000000001", "hash-3");
    other_batch.bill_batch_code = "11010126".to_owned();
    let other = store.insert_receipt(other_batch, vec![]).await?;
    assert!(
        matches!(
            other,
            InsertOutcome::Created {
                identity_clash: false,
                ..
            }
        ),
        "{other:?}"
    );

    assert_eq!(store.count_receipts(a).await?, 2);
    assert_eq!(store.count_receipts(b).await?, 1);

    // Found by code and number in every agency, without their deliveries.
    let found = store.find_receipts("11010125", "0000000001").await?;
    assert_eq!(
        found.iter().map(|r| (r.id, r.agency_id)).collect::<Vec<_>>(),
        vec![(first.id, a), (theirs.id, b)]
    );
    assert!(found.iter().all(|r| r.deliveries.is_empty()));
    assert!(store.find_receipts("11010125", "0000000404").await?.is_empty());

    // Unknown agency, reused receipt id.
    assert!(matches!(
        store
            .insert_receipt(receipt(Uuid::now_v7(), "0000000009", "h"), vec![])
            .await,
        Err(StoreError::NotFound(Entity::Referenced))
    ));
    let mut reused = receipt(a, "0000000010", "h");
    reused.id = first.id;
    assert!(matches!(
        store.insert_receipt(reused, vec![]).await,
        Err(StoreError::Conflict("receipt_id"))
    ));
    assert_eq!(store.count_receipts(a).await?, 2);
    Ok(())
}

async fn concurrent_identical_inserts(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let template = receipt(a, "0000000042", "hash-42");

    // All eight wait at the barrier so their transactions really overlap.
    let start = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = Arc::clone(&store);
        let start = Arc::clone(&start);
        let mut push = template.clone();
        push.id = Uuid::now_v7();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            store.insert_receipt(push, issued_deliveries()).await
        }));
    }
    let mut created_ids = Vec::new();
    let mut duplicate_ids = Vec::new();
    for task in tasks {
        match task.await?? {
            InsertOutcome::Created { receipt: r, .. } => created_ids.push(r.id),
            InsertOutcome::Duplicate(r) => duplicate_ids.push(r.id),
            other => return Err(format!("unexpected {other:?}").into()),
        }
    }
    assert_eq!(created_ids.len(), 1, "exactly one push creates");
    assert_eq!(duplicate_ids.len(), 7);
    assert!(duplicate_ids.iter().all(|id| *id == created_ids[0]));
    assert_eq!(store.count_receipts(a).await?, 1);
    let stored = store
        .receipt(a, "11010125", "0000000042")
        .await?
        .ok_or("receipt missing")?;
    assert_eq!(stored.id, created_ids[0]);
    assert_eq!(stored.deliveries.len(), 2, "only the winner wrote deliveries");
    Ok(())
}

// Concurrent pushes share write transactions (group commit). One push that must
// fail (an id already taken) fails alone: every other push of its batch is stored,
// with its deliveries, and answered as created.
async fn one_bad_push_fails_only_itself(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let taken = created(store.insert_receipt(receipt(a, "0000000100", "h-100"), vec![]).await?)?;

    let start = Arc::new(tokio::sync::Barrier::new(40));
    let mut tasks = Vec::new();
    for i in 0..40u32 {
        let store = Arc::clone(&store);
        let start = Arc::clone(&start);
        let mut push = receipt(a, &format!("{:010}", 200 + i), &format!("h-{i}"));
        if i == 17 {
            push.id = taken.id;
        }
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            (i, store.insert_receipt(push, issued_deliveries()).await)
        }));
    }
    let mut stored = 0;
    for task in tasks {
        match task.await? {
            (17, result) => assert!(matches!(result, Err(StoreError::Conflict("receipt_id"))), "{result:?}"),
            (i, Ok(InsertOutcome::Created { receipt: r, .. })) => {
                assert_eq!(r.bill_no, format!("{:010}", 200 + i));
                assert_eq!(r.deliveries.len(), 2);
                stored += 1;
            }
            (i, other) => return Err(format!("push {i}: unexpected {other:?}").into()),
        }
    }
    assert_eq!(stored, 39);
    assert_eq!(store.count_receipts(a).await?, 40);
    for i in (0..40u32).filter(|i| *i != 17) {
        let r = store
            .receipt(a, "11010125", &format!("{:010}", 200 + i))
            .await?
            .ok_or("an acknowledged push is missing")?;
        assert_eq!(r.deliveries.len(), 2);
    }
    Ok(())
}

// Concurrent pushes with openids share statements (one for the wallets of a whole
// batch): an openid pushed several times in one batch makes one payer whose
// wallet holds each of its receipts; every other openid its own.
async fn a_batch_collects_each_openid_once(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let start = Arc::new(tokio::sync::Barrier::new(30));
    let mut tasks = Vec::new();
    for i in 0..30u32 {
        let store = Arc::clone(&store);
        let start = Arc::clone(&start);
        let openid = if i < 10 {
            "o-shared".to_owned()
        } else {
            format!("o-{i}")
        };
        let push = piaojia_store::NewReceiptRecord {
            open_id: Some(openid.clone()),
            openid_wallet: Some("wx-mp".to_owned()),
            ..receipt(a, &format!("{:010}", 500 + i), &format!("h-{i}"))
        };
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            (openid, store.insert_receipt(push, issued_deliveries()).await)
        }));
    }
    let mut payers = std::collections::HashMap::new();
    for task in tasks {
        let (openid, outcome) = task.await?;
        let r = created(outcome?)?;
        assert_eq!(r.deliveries.len(), 2);
        let (payer, added) = store.collect_for_openid("wx-mp", &openid, r.id).await?;
        assert_eq!(
            added,
            piaojia_store::wallets::WalletAdd::AlreadyThere,
            "collected with the push"
        );
        payers.entry(openid).or_insert_with(Vec::new).push(payer);
    }
    assert_eq!(payers.len(), 21);
    let shared = &payers["o-shared"];
    assert_eq!(shared.len(), 10);
    assert!(
        shared.iter().all(|p| *p == shared[0]),
        "one payer per openid: {shared:?}"
    );
    let distinct: std::collections::HashSet<_> = payers.values().map(|p| p[0]).collect();
    assert_eq!(distinct.len(), 21, "a payer of its own for every other openid");
    Ok(())
}

async fn lookup_is_scoped_by_agency(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let b = one_agency(&*store, "B002").await?;
    let first = created(
        store
            .insert_receipt(receipt(a, "0000000001", "hash-1"), issued_deliveries())
            .await?,
    )?;

    let found = store
        .receipt(a, "11010125", "0000000001")
        .await?
        .ok_or("own receipt not found")?;
    assert_eq!(found.id, first.id);
    assert_eq!(found.deliveries.len(), 2);
    assert_eq!(found.content_hash, "hash-1");
    assert!(store.receipt(b, "11010125", "0000000001").await?.is_none());
    assert!(store.receipt(a, "11010125", "0000000002").await?.is_none());
    assert!(store.receipt(a, "99999999", "0000000001").await?.is_none());
    Ok(())
}

async fn reversal_rules(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let b = one_agency(&*store, "B002").await?;
    let original = created(
        store
            .insert_receipt(receipt(a, "0000000001", "hash-1"), issued_deliveries())
            .await?,
    )?;
    let reversed_deliveries = || vec![delivery(DeliveryEvent::Reversed, ChannelKind::IssuerWebhook)];

    // Unknown receipt, or another agency's.
    for (agency, no) in [(a, "0000000404"), (b, "0000000001")] {
        assert!(matches!(
            store
                .reverse_receipt(agency, "11010125", no, reversal("退费"), reversed_deliveries())
                .await?,
            ReversalOutcome::NotFound
        ));
    }

    let request = reversal("退费");
    let outcome = store
        .reverse_receipt(a, "11010125", "0000000001", request.clone(), reversed_deliveries())
        .await?;
    let ReversalOutcome::Reversed(done) = outcome else {
        return Err(format!("expected Reversed, got {outcome:?}").into());
    };
    assert_eq!(done.id, original.id);
    assert_eq!(done.reimbursement_state, ReimbursementState::Cancel);
    let stored = done.reversal.clone().ok_or("reversal not recorded")?;
    // Kept at microsecond precision (the request was given nanoseconds).
    assert_eq!(stored.reversed_at, at(3600));
    assert!(stored.same_request(&Reversal {
        reversed_at: at(3600),
        ..request.clone()
    }));
    // Outbox: the issued deliveries first, then the reversal's.
    assert_eq!(
        done.deliveries.iter().map(|d| d.event).collect::<Vec<_>>(),
        [DeliveryEvent::Issued, DeliveryEvent::Issued, DeliveryEvent::Reversed]
    );

    // The same request again (recorded later by us): its first answer, nothing new.
    let mut repeat = request.clone();
    repeat.recorded_at = Timestamp::now() + Duration::seconds(5);
    let outcome = store
        .reverse_receipt(a, "11010125", "0000000001", repeat, reversed_deliveries())
        .await?;
    let ReversalOutcome::AlreadyReversed(same) = outcome else {
        return Err(format!("expected AlreadyReversed, got {outcome:?}").into());
    };
    assert_eq!(same.reversal, done.reversal);
    assert_eq!(same.deliveries.len(), 3);

    // A different reversal of the same receipt.
    let mut different = request.clone();
    different.red_bill_no = "9000000002".to_owned();
    let outcome = store
        .reverse_receipt(a, "11010125", "0000000001", different, reversed_deliveries())
        .await?;
    let ReversalOutcome::Conflict(kept) = outcome else {
        return Err(format!("expected Conflict, got {outcome:?}").into());
    };
    assert_eq!(kept.reversal, done.reversal);
    assert_eq!(kept.deliveries.len(), 3);

    // Locked and closed receipts cannot be reversed.
    for (no, state) in [
        ("0000000002", ReimbursementState::Lock),
        ("0000000003", ReimbursementState::Closure),
    ] {
        let r = created(store.insert_receipt(receipt(a, no, "h"), vec![]).await?)?;
        store.set_reimbursement_state(r.id, state).await?;
        let outcome = store
            .reverse_receipt(a, "11010125", no, reversal("退费"), reversed_deliveries())
            .await?;
        assert!(
            matches!(outcome, ReversalOutcome::Locked(s) if s == state),
            "{state:?}: {outcome:?}"
        );
        let after = store.receipt(a, "11010125", no).await?.ok_or("receipt missing")?;
        assert!(after.reversal.is_none());
        assert_eq!(after.reimbursement_state, state);
        assert!(after.deliveries.is_empty());
        // Unlocked again, it can be reversed.
        store.set_reimbursement_state(r.id, ReimbursementState::Init).await?;
        assert!(matches!(
            store
                .reverse_receipt(a, "11010125", no, reversal("退费"), reversed_deliveries())
                .await?,
            ReversalOutcome::Reversed(_)
        ));
    }

    assert!(matches!(
        store
            .set_reimbursement_state(Uuid::now_v7(), ReimbursementState::Lock)
            .await,
        Err(StoreError::NotFound(Entity::Receipt))
    ));
    Ok(())
}

async fn deliveries_share_the_transaction(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;

    // A delivery that cannot be written (its id is taken twice) undoes the receipt.
    let twice = delivery(DeliveryEvent::Issued, ChannelKind::IssuerWebhook);
    let result = store
        .insert_receipt(receipt(a, "0000000001", "hash-1"), vec![twice.clone(), twice])
        .await;
    assert!(matches!(result, Err(StoreError::Conflict("delivery_id"))), "{result:?}");
    assert_eq!(store.count_receipts(a).await?, 0);
    assert!(store.receipt(a, "11010125", "0000000001").await?.is_none());

    // After the failure the same push goes through whole.
    let ok = created(
        store
            .insert_receipt(receipt(a, "0000000001", "hash-1"), issued_deliveries())
            .await?,
    )?;
    assert_eq!(ok.deliveries.len(), 2);

    // Same for a reversal: a failed delivery leaves the receipt unreversed.
    let taken = ok.deliveries[0].id;
    let result = store
        .reverse_receipt(
            a,
            "11010125",
            "0000000001",
            reversal("退费"),
            vec![NewDelivery {
                id: taken,
                ..delivery(DeliveryEvent::Reversed, ChannelKind::IssuerWebhook)
            }],
        )
        .await;
    assert!(matches!(result, Err(StoreError::Conflict("delivery_id"))), "{result:?}");
    let after = store
        .receipt(a, "11010125", "0000000001")
        .await?
        .ok_or("receipt missing")?;
    assert!(after.reversal.is_none());
    assert_eq!(after.reimbursement_state, ReimbursementState::Init);
    assert_eq!(after.deliveries.len(), 2);
    Ok(())
}

/// A reported payment gives the receipts of its order pushed without an openid
/// (of its agency, not reversed) the payer's openid, collects them under it and
/// queues the announcement: once.
async fn a_payment_takes_its_orders_receipts_once(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let b = one_agency(&*store, "B002").await?;
    let order = "4200000000202612030000000009";
    let waiting = |agency, bill_no: &str| piaojia_store::NewReceiptRecord {
        open_id: None,
        wechat_order_no: Some(order.to_owned()),
        ..receipt(agency, bill_no, &format!("hash-{bill_no}"))
    };
    let first = created(store.insert_receipt(waiting(a, "0000000091"), vec![]).await?)?;
    created(store.insert_receipt(waiting(a, "0000000092"), vec![]).await?)?;
    store
        .reverse_receipt(a, "11010125", "0000000092", reversal("退费"), vec![])
        .await?;
    created(
        store
            .insert_receipt(
                piaojia_store::NewReceiptRecord {
                    open_id: Some("o-own".to_owned()),
                    ..waiting(a, "0000000093")
                },
                vec![],
            )
            .await?,
    )?;
    created(store.insert_receipt(waiting(b, "0000000094"), vec![]).await?)?;
    let reported = store
        .record_wechat_payment(NewWechatPayment {
            agency_id: a,
            wechat_order_no: order.to_owned(),
            wechat_app_id: "wx-oa".to_owned(),
            openid: "o-payer".to_owned(),
            total_fen: 12_345,
            paid_at: at(30),
            issuer_app_id: "his-1".to_owned(),
        })
        .await?;
    let PaymentOutcome::Created(payment) = reported else {
        panic!("a new payment: {reported:?}");
    };
    let announce = NewDelivery {
        target: "o-payer".to_owned(),
        ..delivery(DeliveryEvent::Issued, ChannelKind::WechatTemplate)
    };
    let taken = store.deliver_paid_receipts(&payment, Some(announce.clone())).await?;
    assert_eq!(
        taken,
        vec![first.id],
        "only the agency's unreversed receipt without an openid"
    );
    let held = store.receipt(a, "11010125", "0000000091").await?.expect("held");
    assert_eq!(held.open_id.as_deref(), Some("o-payer"));
    assert_eq!(held.deliveries.len(), 1);
    assert_eq!(held.deliveries[0].channel, ChannelKind::WechatTemplate);
    assert_eq!(held.deliveries[0].target, "o-payer");
    let (_, added) = store.collect_for_openid("wx-oa", "o-payer", first.id).await?;
    assert_eq!(added, piaojia_store::wallets::WalletAdd::AlreadyThere, "collected");
    // Once: a second call finds nothing left.
    assert!(store.deliver_paid_receipts(&payment, Some(announce)).await?.is_empty());
    let held = store.receipt(a, "11010125", "0000000091").await?.expect("held");
    assert_eq!(held.deliveries.len(), 1);
    for (agency, bill_no, openid) in [
        (a, "0000000092", None),
        (a, "0000000093", Some("o-own")),
        (b, "0000000094", None),
    ] {
        let r = store.receipt(agency, "11010125", bill_no).await?.expect("held");
        assert_eq!(r.open_id.as_deref(), openid, "{bill_no} untouched");
        assert!(r.deliveries.iter().all(|d| d.target != "o-payer"), "{bill_no}");
    }
    Ok(())
}
