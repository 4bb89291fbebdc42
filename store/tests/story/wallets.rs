//! Wallets: payers, sign-ins and refresh tokens, collection by identity,
//! subscription consents.

use chrono::Duration;
use piaojia_core::receipt::PayerType;
use piaojia_store::wallets::{
    IdentityVerification, RefreshOutcome, SubscriptionChoice, SubscriptionReport, WalletAdd, WalletChannel, WalletQuery,
};
use piaojia_store::{
    ChannelKind, DeliveryEvent, DeliveryFilter, DeliveryStatus, InsertOutcome, NewDelivery, NewReceiptRecord, Timestamp,
};
use uuid::Uuid;

use crate::Fixture;
use crate::support::{TestResult, one_agency, person_receipt, refresh, registration};
use piaojia_store::wallets::Registration;

chapters!(
    wallet_logins_and_tokens,
    collection_never_misses_a_racing_registration,
    consents_are_spent_once,
    only_a_verified_identity_collects,
    erasure_cancels_what_was_not_sent,
);

async fn wallet_logins_and_tokens(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    // First logins of one person, at once: one payer, one identity.
    let logins = futures_util::future::join_all((0..6).map(|_| {
        let store = store.clone();
        async move { store.login_payer("wx-wallet", "o-alice", Some("u-alice")).await }
    }))
    .await;
    let ids: Vec<Uuid> = logins
        .into_iter()
        .map(|l| l.map(|o| o.payer.id))
        .collect::<Result<_, _>>()?;
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    // The same unionid through another mini-program is the same payer.
    let other_app = store.login_payer("wx-hospital", "o-alice-h", Some("u-alice")).await?;
    assert_eq!(other_app.payer.id, ids[0]);
    assert!(!other_app.created);
    let bob = store.login_payer("wx-wallet", "o-bob", None).await?;
    assert!(bob.created);
    assert_ne!(bob.payer.id, ids[0]);

    // Refresh tokens: one use each; a second use revokes the family.
    let alice = ids[0];
    let family = Uuid::now_v7();
    let next = |hash: &str| refresh(Uuid::nil(), Uuid::nil(), hash);
    store.insert_refresh_token(refresh(alice, family, "h1")).await?;
    let rotated = store.rotate_refresh_token("h1", next("h2"), Timestamp::now()).await?;
    assert_eq!(
        rotated,
        RefreshOutcome::Rotated {
            payer_id: alice,
            app_id: "wx-wallet".to_owned()
        }
    );
    assert!(matches!(
        store.rotate_refresh_token("h1", next("h3"), Timestamp::now()).await?,
        RefreshOutcome::Reused { family_id, .. } if family_id == family
    ));
    assert_eq!(
        store.rotate_refresh_token("h2", next("h4"), Timestamp::now()).await?,
        RefreshOutcome::Revoked
    );
    assert_eq!(
        store.rotate_refresh_token("nope", next("h5"), Timestamp::now()).await?,
        RefreshOutcome::Unknown
    );
    let mut expired = refresh(alice, Uuid::now_v7(), "old");
    expired.expires_at = Timestamp::now() - Duration::seconds(1);
    store.insert_refresh_token(expired).await?;
    assert_eq!(
        store.rotate_refresh_token("old", next("h6"), Timestamp::now()).await?,
        RefreshOutcome::Expired
    );
    // Logout: only the token's own payer revokes its family.
    store.insert_refresh_token(refresh(alice, Uuid::now_v7(), "h7")).await?;
    assert!(!store.revoke_refresh_family(bob.payer.id, "h7").await?);
    assert!(store.revoke_refresh_family(alice, "h7").await?);
    assert_eq!(
        store.rotate_refresh_token("h7", next("h8"), Timestamp::now()).await?,
        RefreshOutcome::Revoked
    );

    // Deleting the payer takes identities and tokens; a later login starts afresh.
    assert!(store.delete_payer(alice).await?);
    assert!(!store.delete_payer(alice).await?);
    assert!(store.payer(alice).await?.is_none());
    let again = store.login_payer("wx-wallet", "o-alice", Some("u-alice")).await?;
    assert!(again.created);
    assert_ne!(again.payer.id, alice);
    let audit = store.payer_audit(alice).await?;
    assert_eq!(
        audit.iter().map(|a| a.event.as_str()).collect::<Vec<_>>(),
        ["refresh_token_reused", "deleted"]
    );
    Ok(())
}

async fn collection_never_misses_a_racing_registration(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let agency = one_agency(&*store, "A001").await?;
    // Each payer registers while their receipt arrives; whichever commits first,
    // the receipt ends in the wallet exactly once.
    let mut payers = Vec::new();
    for i in 0..16 {
        payers.push(store.login_payer("wx-wallet", &format!("o-{i}"), None).await?.payer.id);
    }
    let tasks = payers.iter().enumerate().flat_map(|(i, payer)| {
        let (s1, s2, payer) = (store.clone(), store.clone(), *payer);
        [
            tokio::spawn(async move {
                s1.register_payer(payer, registration(&format!("id-{i}"), "name-x", None))
                    .await
                    .map(|_| ())
            }),
            tokio::spawn(async move {
                s2.insert_receipt(
                    person_receipt(agency, &format!("{:010}", i), &format!("id-{i}"), "name-x"),
                    Vec::new(),
                )
                .await
                .map(|_| ())
            }),
        ]
    });
    for t in futures_util::future::join_all(tasks).await {
        t??;
    }
    for (i, payer) in payers.iter().enumerate() {
        let page = store
            .wallet_page(&WalletQuery {
                payer_id: *payer,
                limit: 10,
                ..WalletQuery::default()
            })
            .await?;
        assert_eq!(
            page.iter().map(|w| w.bill_no.clone()).collect::<Vec<_>>(),
            [format!("{:010}", i)],
            "payer {i}"
        );
    }
    // Another name with the same ID number is not the same person; an organisation's
    // receipt is never collected; a verified phone with the name is.
    let carol = store.login_payer("wx-wallet", "o-carol", None).await?.payer.id;
    store
        .insert_receipt(person_receipt(agency, "0000000100", "id-c", "name-other"), Vec::new())
        .await?;
    store
        .insert_receipt(
            NewReceiptRecord {
                payer_type: PayerType::Organisation,
                ..person_receipt(agency, "0000000101", "id-c", "name-c")
            },
            Vec::new(),
        )
        .await?;
    store
        .insert_receipt(
            NewReceiptRecord {
                payer_id_index: None,
                payer_phone_index: Some("phone-c".to_owned()),
                ..person_receipt(agency, "0000000102", "unused", "name-c")
            },
            Vec::new(),
        )
        .await?;
    let unverified = store
        .register_payer(carol, registration("id-c", "name-c", Some(("phone-c", false))))
        .await?;
    assert_eq!(unverified.collected, 0, "an unverified phone collects nothing");
    let verified = store
        .register_payer(carol, registration("id-c", "name-c", Some(("phone-c", true))))
        .await?;
    assert_eq!(verified.collected, 1);
    // Removed receipts stay removed; a changed identity releases what no longer matches.
    let listed = store
        .wallet_page(&WalletQuery {
            payer_id: carol,
            limit: 10,
            ..WalletQuery::default()
        })
        .await?;
    assert_eq!(listed.len(), 1);
    assert!(store.remove_from_wallet(carol, listed[0].receipt_id, None).await?);
    let again = store
        .register_payer(carol, registration("id-c", "name-c", Some(("phone-c", true))))
        .await?;
    assert_eq!(again.collected, 0, "removed is removed");
    assert!(store.add_to_wallet(carol, listed[0].receipt_id).await? == WalletAdd::Added);
    let changed = store
        .register_payer(carol, registration("id-z", "name-z", None))
        .await?;
    assert_eq!(changed.released, 0, "a receipt added by possession stays");
    Ok(())
}

async fn consents_are_spent_once(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let agency = one_agency(&*store, "A001").await?;
    let payer = store.login_payer("wx-wallet", "o-dora", None).await?.payer.id;
    store
        .register_payer(payer, registration("id-d", "name-d", None))
        .await?;
    let report = |choice| SubscriptionReport {
        template_id: "tpl-w".to_owned(),
        choice,
        long_term: false,
    };
    for _ in 0..3 {
        store
            .record_subscriptions(payer, "wx-wallet", &[report(SubscriptionChoice::Accept)])
            .await?;
    }
    let channel = WalletChannel {
        kind: ChannelKind::WalletSubscribe,
        app_id: "wx-wallet".to_owned(),
        template_id: "tpl-w".to_owned(),
        long_term: false,
        interface: "wechat:wx-wallet:subscribe_send".to_owned(),
    };
    // Eight receipts at once against three consents: exactly three messages.
    let inserts = (0..8).map(|i| {
        let store = store.clone();
        let mut r = person_receipt(agency, &format!("{:010}", 200 + i), "id-d", "name-d");
        r.wallet_channels = vec![channel.clone()];
        async move { store.insert_receipt(r, Vec::new()).await }
    });
    let mut messages = 0;
    for outcome in futures_util::future::join_all(inserts).await {
        let InsertOutcome::Created { receipt: stored, .. } = outcome? else {
            return Err("receipt not created".into());
        };
        for d in &stored.deliveries {
            assert_eq!((d.channel, d.target.as_str()), (ChannelKind::WalletSubscribe, "o-dora"));
            messages += 1;
        }
    }
    assert_eq!(messages, 3);
    let credits = store.subscription_credits(payer).await?;
    assert_eq!(credits[0].remaining, 0);
    // A refusal after acceptances leaves nothing.
    store
        .record_subscriptions(
            payer,
            "wx-wallet",
            &[report(SubscriptionChoice::Accept), report(SubscriptionChoice::Reject)],
        )
        .await?;
    assert_eq!(store.subscription_credits(payer).await?[0].remaining, 0);
    Ok(())
}

/// Typing a name and an ID number proves nothing: only WeChat's real-name check (ID
/// number and name) or a verified phone (phone and name) collects, from both sides.
async fn only_a_verified_identity_collects(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let agency = one_agency(&*store, "A001").await?;
    let by_id = person_receipt(agency, "0000000201", "id-e", "name-e");
    let by_phone = NewReceiptRecord {
        payer_id_index: None,
        payer_phone_index: Some("phone-e".to_owned()),
        ..person_receipt(agency, "0000000202", "unused", "name-e")
    };
    store.insert_receipt(by_id, Vec::new()).await?;
    store.insert_receipt(by_phone, Vec::new()).await?;

    let payer = store.login_payer("wx-wallet", "o-erin", None).await?.payer.id;
    let typed = Registration {
        verified_via: None,
        ..registration("id-e", "name-e", Some(("phone-e", false)))
    };
    let outcome = store.register_payer(payer, typed).await?;
    assert_eq!(outcome.collected, 0, "a typed name and ID number collect nothing");
    assert_eq!(outcome.payer.identity_verified_via, None);
    assert_eq!(outcome.payer.identity_verified_at, None);

    let phone = Registration {
        verified_via: Some(IdentityVerification::Phone),
        ..registration("id-e", "name-e", Some(("phone-e", true)))
    };
    let outcome = store.register_payer(payer, phone).await?;
    assert_eq!(outcome.collected, 1, "a verified phone collects by phone and name only");
    assert_eq!(outcome.payer.identity_verified_via, Some(IdentityVerification::Phone));
    assert!(outcome.payer.identity_verified_at.is_some());

    let real_name = registration("id-e", "name-e", Some(("phone-e", true)));
    let outcome = store.register_payer(payer, real_name).await?;
    assert_eq!(
        outcome.collected, 1,
        "the real-name check adds the receipt by ID number"
    );
    assert_eq!(
        outcome.payer.identity_verified_via,
        Some(IdentityVerification::WechatRealname)
    );

    // Arriving receipts follow the same rule: an unverified payer gets nothing new.
    let mallory = store.login_payer("wx-wallet", "o-mallory", None).await?.payer.id;
    let claims = Registration {
        verified_via: None,
        ..registration("id-f", "name-f", None)
    };
    store.register_payer(mallory, claims).await?;
    store
        .insert_receipt(person_receipt(agency, "0000000203", "id-f", "name-f"), Vec::new())
        .await?;
    let page = |payer_id| WalletQuery {
        payer_id,
        limit: 10,
        ..WalletQuery::default()
    };
    assert!(store.wallet_page(&page(mallory)).await?.is_empty());
    store
        .insert_receipt(person_receipt(agency, "0000000204", "id-e", "name-e"), Vec::new())
        .await?;
    assert_eq!(store.wallet_page(&page(payer)).await?.len(), 3);

    // Falling back to unverified releases what was collected.
    let outcome = store
        .register_payer(
            payer,
            Registration {
                verified_via: None,
                ..registration("id-e", "name-e", None)
            },
        )
        .await?;
    assert_eq!(outcome.released, 3);
    Ok(())
}

/// Erasure means erasure: every delivery to the payer not yet made is cancelled
/// (kept as a record, never sent, never re-driven), and other payers' are untouched.
async fn erasure_cancels_what_was_not_sent(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let agency = one_agency(&*store, "A001").await?;
    let gone = store.login_payer("wx-wallet", "o-gone", None).await?.payer.id;
    store.login_payer("wx-wallet", "o-stays", None).await?;
    let to = |openid: &str| NewDelivery {
        id: Uuid::now_v7(),
        event: DeliveryEvent::Issued,
        channel: ChannelKind::WalletSubscribe,
        target: openid.to_owned(),
        interface: "wechat:wx-wallet:subscribe_send".to_owned(),
        payload: None,
    };
    let receipt = |no: &str| crate::support::receipt(agency, no, &format!("hash-{no}"));
    let mine = crate::support::created(
        store
            .insert_receipt(receipt("0000000301"), vec![to("o-gone"), to("o-gone")])
            .await?,
    )?;
    let theirs = crate::support::created(store.insert_receipt(receipt("0000000302"), vec![to("o-stays")]).await?)?;
    // One of the payer's deliveries is parked (an operator could re-drive it).
    let claimed = store
        .claim_deliveries("w", Timestamp::now(), Timestamp::now() + Duration::seconds(30), 10)
        .await?;
    let parked = claimed
        .iter()
        .find(|c| c.delivery.id == mine.deliveries[0].id)
        .ok_or("claimed")?;
    let held = crate::support::complete(
        &*store,
        parked.delivery.id,
        "w",
        crate::support::attempt(piaojia_store::AttemptOutcome::Retryable, None),
        piaojia_store::DeliveryUpdate::Parked {
            reason: piaojia_store::ParkReason::Exhausted,
            error: "down".into(),
        },
        Vec::new(),
    )
    .await?;
    assert!(held);

    assert!(store.delete_payer(gone).await?);
    for d in &mine.deliveries {
        let d = store.delivery(d.id).await?.ok_or("delivery kept")?;
        assert_eq!(d.status, DeliveryStatus::Cancelled, "{d:?}");
        assert_eq!(d.last_error.as_deref(), Some("the payer erased their account"));
    }
    let other = store.delivery(theirs.deliveries[0].id).await?.ok_or("delivery")?;
    assert_eq!(other.status, DeliveryStatus::Pending, "another payer's delivery stays");
    // Nothing of the erased payer is claimed or re-driven afterwards.
    let redriven = store
        .redrive(&DeliveryFilter::default(), Timestamp::now(), Duration::milliseconds(1))
        .await?;
    assert_eq!(redriven, 0);
    let later = store
        .claim_deliveries(
            "w2",
            Timestamp::now() + Duration::seconds(60),
            Timestamp::now() + Duration::seconds(90),
            10,
        )
        .await?;
    assert!(later.iter().all(|c| c.delivery.target != "o-gone"), "{later:?}");
    let audit = store.payer_audit(gone).await?;
    let deleted = audit.iter().find(|a| a.event == "deleted").ok_or("audited")?;
    assert_eq!(
        deleted.detail.as_ref().and_then(|d| d["cancelledDeliveries"].as_u64()),
        Some(2)
    );
    Ok(())
}
