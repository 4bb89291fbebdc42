//! The database itself: migrations, what survives reopening, backend edges.

use piaojia_store::{
    ChannelKind, ConnectOptions, DeliveryEvent, ReimbursementState, ReversalOutcome, StoreError, connect,
};

use crate::Fixture;
use crate::support::{TestResult, app, created, delivery, issued_deliveries, one_agency, receipt, reversal, secret};

chapters!(migrations, data_survives_reopening);

async fn migrations(fx: &Fixture) -> TestResult {
    let store = fx.open().await?;
    assert_eq!(store.backend(), fx.backend());
    store.ping().await?;
    // No migrations table at all yet.
    assert!(!store.migrations_current().await?);
    store.migrate().await?;
    assert!(store.migrations_current().await?);
    // Migrating again is a no-op.
    store.migrate().await?;
    assert!(store.migrations_current().await?);
    Ok(())
}

async fn data_survives_reopening(fx: &Fixture) -> TestResult {
    let (agency_id, before) = {
        let store = fx.migrated().await?;
        let a = one_agency(&*store, "A001").await?;
        store.create_app(app("his-1", a)).await?;
        store.add_app_secret("his-1", secret("sealed-2"), true).await?;
        created(
            store
                .insert_receipt(receipt(a, "0000000001", "hash-1"), issued_deliveries())
                .await?,
        )?;
        let ReversalOutcome::Reversed(r) = store
            .reverse_receipt(
                a,
                "11010125",
                "0000000001",
                reversal("退费"),
                vec![delivery(DeliveryEvent::Reversed, ChannelKind::WechatTemplate)],
            )
            .await?
        else {
            return Err("reversal refused".into());
        };
        (a, r)
        // The store (and its pool) is dropped here.
    };

    let store = fx.open().await?;
    assert!(store.migrations_current().await?);
    let agency = store.agency(agency_id).await?.ok_or("agency lost")?;
    assert_eq!(agency.code, "A001");
    let app = store.app("his-1").await?.ok_or("app lost")?;
    assert_eq!(app.secrets.len(), 2);
    assert_eq!(app.secrets[0].sealed, "sealed-2");
    let after = store
        .receipt(agency_id, "11010125", "0000000001")
        .await?
        .ok_or("receipt lost")?;
    assert_eq!(after.id, before.id);
    assert_eq!(after.issued_at, before.issued_at);
    assert_eq!(after.details, before.details);
    assert_eq!(after.file, before.file);
    assert_eq!(after.reversal, before.reversal);
    assert_eq!(after.reimbursement_state, ReimbursementState::Cancel);
    assert_eq!(
        after.deliveries.iter().map(|d| d.id).collect::<Vec<_>>(),
        before.deliveries.iter().map(|d| d.id).collect::<Vec<_>>()
    );
    assert_eq!(store.count_receipts(agency_id).await?, 1);
    Ok(())
}

#[tokio::test]
async fn unsupported_url_is_refused() {
    let result = connect(&ConnectOptions::new("mysql://user:secret@localhost/db".to_owned(), 1)).await;
    match result {
        Err(StoreError::UnsupportedUrl(shown)) => assert!(!shown.contains("secret")),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a mysql url was accepted"),
    }
}

#[tokio::test]
async fn sqlite_in_memory_works() -> TestResult {
    let store = connect(&ConnectOptions::new("sqlite::memory:".to_owned(), 4)).await?;
    store.migrate().await?;
    assert!(store.migrations_current().await?);
    let a = one_agency(&*store, "A001").await?;
    created(store.insert_receipt(receipt(a, "1", "h"), issued_deliveries()).await?)?;
    assert_eq!(store.count_receipts(a).await?, 1);
    Ok(())
}
