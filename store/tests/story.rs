//! The storage story, told once and run on both backends: every chapter below is a
//! plain async function over a fresh, empty database, and `chapters!` turns each
//! into a PostgreSQL and a SQLite test.
//!
//! PostgreSQL: `PIAOJIA_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`)
//! names a database from which a fresh `piaojia_store_<uuid>` database is created
//! per test and dropped afterwards.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use piaojia_store::wallet::{
    NewRefreshToken, RefreshOutcome, Registration, SubscriptionChoice, SubscriptionReport, WalletAdd, WalletChannel,
    WalletQuery,
};
use piaojia_store::{
    Alert, AppKind, AttemptOutcome, AttemptRecord, Backend, ClaimedDelivery, Completion, ConnectOptions, DeliveryEvent,
    DeliveryFilter, DeliveryStatus, DeliveryUpdate, FileMeta, InsertOutcome, NewAgency, NewApp, NewAppSecret,
    NewChannel, NewDelivery, NewReceiptRecord, ReimbursementState, Reversal, ReversalOutcome, StatsRow, Store,
    StoreError, StoredReceipt, connect,
};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use uuid::Uuid;

type Error = Box<dyn std::error::Error + Send + Sync>;
type TestResult = Result<(), Error>;

const DEFAULT_PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

// ----- fixture ---------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Kind {
    Postgres,
    Sqlite,
}

/// One fresh database; `open` may be called repeatedly (reopening).
struct Fixture {
    backend: Backend,
    url: String,
    /// PostgreSQL: the admin URL and the database to drop at the end.
    pg_admin: Option<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl Fixture {
    async fn new(kind: Kind) -> Result<Self, Error> {
        match kind {
            Kind::Postgres => {
                let admin =
                    std::env::var("PIAOJIA_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_PG_ADMIN_URL.to_owned());
                let name = format!("piaojia_store_{}", Uuid::new_v4().simple());
                let mut conn = PgConnection::connect(&admin).await?;
                sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await?;
                conn.close().await?;
                let mut url = url::Url::parse(&admin)?;
                url.set_path(&format!("/{name}"));
                Ok(Self {
                    backend: Backend::Postgres,
                    url: url.to_string(),
                    pg_admin: Some((admin, name)),
                    _dir: None,
                })
            }
            Kind::Sqlite => {
                let dir = tempfile::tempdir()?;
                // A nested path also checks that missing directories are created.
                let path = dir.path().join("nested").join("piaojia.db");
                Ok(Self {
                    backend: Backend::Sqlite,
                    url: format!("sqlite://{}", path.display()),
                    pg_admin: None,
                    _dir: Some(dir),
                })
            }
        }
    }

    async fn open(&self) -> Result<Arc<dyn Store>, Error> {
        Ok(connect(&ConnectOptions {
            url: self.url.clone(),
            max_connections: 8,
        })
        .await?)
    }

    async fn migrated(&self) -> Result<Arc<dyn Store>, Error> {
        let store = self.open().await?;
        store.migrate().await?;
        Ok(store)
    }

    async fn finish(self) -> TestResult {
        if let Some((admin, name)) = &self.pg_admin {
            let mut conn = PgConnection::connect(admin).await?;
            sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                .execute(&mut conn)
                .await?;
            conn.close().await?;
        }
        Ok(())
    }
}

async fn run(kind: Kind, chapter: impl AsyncFnOnce(&Fixture) -> TestResult) -> TestResult {
    let fixture = Fixture::new(kind).await?;
    let outcome = chapter(&fixture).await;
    // Keep the database of a failed chapter for inspection.
    if outcome.is_ok() {
        fixture.finish().await?;
    }
    outcome
}

macro_rules! chapters {
    ($($chapter:ident),* $(,)?) => {$(
        mod $chapter {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() -> super::TestResult {
                super::run(super::Kind::Postgres, super::$chapter).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() -> super::TestResult {
                super::run(super::Kind::Sqlite, super::$chapter).await
            }
        }
    )*};
}

chapters!(
    migrations,
    agencies,
    apps_and_secret_rotation,
    create_duplicate_conflict,
    concurrent_identical_inserts,
    lookup_is_scoped_by_agency,
    reversal_rules,
    deliveries_share_the_transaction,
    data_survives_reopening,
    claims_are_exclusive,
    leases_fencing_and_due_times,
    attempt_outcomes_and_follow_ups,
    completions_in_one_batch,
    listing_and_redrive,
    backlog_by_channel_and_interface,
    tracking_stats,
    channels,
    alerts,
    wallet_logins_and_tokens,
    collection_never_misses_a_racing_registration,
    consents_are_spent_once,
);

// ----- builders --------------------------------------------------------------------

fn agency(code: &str) -> NewAgency {
    NewAgency {
        code: code.to_owned(),
        name: format!("医院 {code}"),
        file_hosts: vec!["files.example.org".to_owned()],
    }
}

fn secret(sealed: &str) -> NewAppSecret {
    NewAppSecret {
        id: Uuid::now_v7(),
        sealed: sealed.to_owned(),
    }
}

fn app(app_id: &str, agency_id: Uuid) -> NewApp {
    NewApp {
        app_id: app_id.to_owned(),
        agency_id,
        kind: AppKind::Issuer,
        name: format!("HIS {app_id}"),
        callback_url: Some("https://his.example.org/callback".to_owned()),
        secret: secret("sealed-1"),
    }
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_750_000_000 + secs, 0).single().unwrap_or_default()
}

fn receipt(agency_id: Uuid, bill_no: &str, content_hash: &str) -> NewReceiptRecord {
    NewReceiptRecord {
        id: Uuid::now_v7(),
        agency_id,
        issuer_app_id: "his-1".to_owned(),
        bill_batch_code: "11010125".to_owned(),
        bill_no: bill_no.to_owned(),
        random: "a1b2c3".to_owned(),
        bus_no: format!("MZ{bill_no}"),
        bus_type: "02".to_owned(),
        payer_type: "1".to_owned(),
        // Nanoseconds on purpose: the store keeps microseconds on both backends.
        issued_at: at(0) + Duration::nanoseconds(123_456_789),
        total_fen: 12_345,
        content_hash: content_hash.to_owned(),
        payer_sealed: "v1:sealed-payer".to_owned(),
        payer_id_index: Some("idx-id".to_owned()),
        payer_phone_index: Some("idx-phone".to_owned()),
        payer_name_index: None,
        open_id: Some("o-open-id".to_owned()),
        details: serde_json::json!({
            "items": [{"name": "挂号费", "amount": 500}, {"name": "药费", "amount": 11845}],
            "settlement": {"medicare": 0, "self": 12345},
        }),
        file: Some(FileMeta {
            format: "pdf".to_owned(),
            sha256: "ab".repeat(32),
            size: 4096,
            object_key: format!("receipts/{bill_no}.pdf"),
        }),
        received_at: at(60),
        search_text: "挂号费 药费".to_owned(),
        wallet_channels: Vec::new(),
    }
}

fn delivery(event: DeliveryEvent, channel: &str) -> NewDelivery {
    NewDelivery {
        id: Uuid::now_v7(),
        event,
        channel: channel.to_owned(),
        target: format!("{channel}-target"),
        interface: format!("{channel}:test"),
        payload: None,
    }
}

fn issued_deliveries() -> Vec<NewDelivery> {
    vec![
        delivery(DeliveryEvent::Issued, "issuer_webhook"),
        delivery(DeliveryEvent::Issued, "wechat_template"),
    ]
}

fn reversal(reason: &str) -> Reversal {
    Reversal {
        red_bill_batch_code: "11010125".to_owned(),
        red_bill_no: "9000000001".to_owned(),
        red_random: "ffee01".to_owned(),
        reversed_at: at(3600) + Duration::nanoseconds(999),
        reason: reason.to_owned(),
        recorded_at: Utc::now(),
    }
}

fn created(outcome: InsertOutcome) -> Result<StoredReceipt, Error> {
    match outcome {
        InsertOutcome::Created(r) => Ok(r),
        other => Err(format!("expected Created, got {other:?}").into()),
    }
}

/// Sets up one agency; returns its id.
async fn one_agency(store: &dyn Store, code: &str) -> Result<Uuid, Error> {
    Ok(store.create_agency(agency(code)).await?.id)
}

// ----- chapters --------------------------------------------------------------------

async fn migrations(fx: &Fixture) -> TestResult {
    let store = fx.open().await?;
    assert_eq!(store.backend(), fx.backend);
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

async fn agencies(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = store.create_agency(agency("A001")).await?;
    assert_eq!(a.code, "A001");
    assert_eq!(a.file_hosts, vec!["files.example.org".to_owned()]);
    assert!(matches!(
        store.create_agency(agency("A001")).await,
        Err(StoreError::Conflict("agency_code"))
    ));

    assert_eq!(store.agency(a.id).await?, Some(a.clone()));
    assert_eq!(store.agency_by_code("A001").await?, Some(a.clone()));
    assert_eq!(store.agency(Uuid::now_v7()).await?, None);
    assert_eq!(store.agency_by_code("nope").await?, None);

    // Upsert updates name and hosts of an existing code, keeping its identity.
    let updated = store
        .upsert_agency(NewAgency {
            code: "A001".to_owned(),
            name: "新名字".to_owned(),
            file_hosts: vec!["a.example.org".to_owned(), "b.example.org".to_owned()],
        })
        .await?;
    assert_eq!(updated.id, a.id);
    assert_eq!(updated.created_at, a.created_at);
    assert_eq!(updated.name, "新名字");
    assert_eq!(updated.file_hosts.len(), 2);
    // … and creates a missing one.
    let b = store.upsert_agency(agency("B002")).await?;
    assert_ne!(b.id, a.id);

    let all = store.list_agencies().await?;
    assert_eq!(
        all.iter().map(|x| x.code.as_str()).collect::<Vec<_>>(),
        ["A001", "B002"]
    );
    assert_eq!(all[0], updated);
    Ok(())
}

async fn apps_and_secret_rotation(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let agency_id = one_agency(&*store, "A001").await?;
    let other_agency = one_agency(&*store, "B002").await?;

    assert!(matches!(
        store.create_app(app("his-1", Uuid::now_v7())).await,
        Err(StoreError::NotFound)
    ));
    let new = app("his-1", agency_id);
    let first_secret = new.secret.id;
    let created = store.create_app(new).await?;
    assert_eq!(created.kind, AppKind::Issuer);
    assert!(created.enabled);
    assert_eq!(created.agency_id, agency_id);
    assert_eq!(created.secrets.len(), 1);
    assert_eq!(created.secrets[0].id, first_secret);
    assert!(matches!(
        store.create_app(app("his-1", agency_id)).await,
        Err(StoreError::Conflict("app_id"))
    ));
    store
        .create_app(NewApp {
            kind: AppKind::Reimburser,
            callback_url: None,
            ..app("insurer-1", other_agency)
        })
        .await?;

    assert!(store.app("missing").await?.is_none());
    let listed = store.list_apps(Some(agency_id)).await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].secrets.len(), 1);
    let all = store.list_apps(None).await?;
    assert_eq!(
        all.iter().map(|a| a.app_id.as_str()).collect::<Vec<_>>(),
        ["his-1", "insurer-1"]
    );
    assert_eq!(all[1].kind, AppKind::Reimburser);

    // Enable/disable and callback.
    assert!(!store.set_app_enabled("his-1", false).await?.enabled);
    assert!(store.set_app_enabled("his-1", true).await?.enabled);
    let cleared = store.set_app_callback("his-1", None).await?;
    assert_eq!(cleared.callback_url, None);
    let set = store
        .set_app_callback("his-1", Some("https://new.example.org/cb".to_owned()))
        .await?;
    assert_eq!(set.callback_url.as_deref(), Some("https://new.example.org/cb"));
    assert!(matches!(
        store.set_app_enabled("missing", true).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.set_app_callback("missing", None).await,
        Err(StoreError::NotFound)
    ));

    // Rotation: at most two active, newest first.
    let s2 = secret("sealed-2");
    let app2 = store.add_app_secret("his-1", s2.clone(), true).await?;
    assert_eq!(ids(&app2), [s2.id, first_secret]);
    let s3 = secret("sealed-3");
    let app3 = store.add_app_secret("his-1", s3.clone(), true).await?;
    assert_eq!(ids(&app3), [s3.id, s2.id]);
    assert!(app3.secrets[0].created_at > app3.secrets[1].created_at);
    assert_eq!(app3.secrets[0].sealed, "sealed-3");
    let ended = store.retire_old_app_secrets("his-1").await?;
    assert_eq!(ids(&ended), [s3.id]);
    // Retiring again changes nothing.
    assert_eq!(ids(&store.retire_old_app_secrets("his-1").await?), [s3.id]);
    // Without keep_previous every existing secret goes at once.
    store.add_app_secret("his-1", secret("sealed-4"), true).await?;
    let s5 = secret("sealed-5");
    let replaced = store.add_app_secret("his-1", s5.clone(), false).await?;
    assert_eq!(ids(&replaced), [s5.id]);
    // Reading agrees with what the writes returned.
    let read = store.app("his-1").await?.ok_or("app vanished")?;
    assert_eq!(ids(&read), [s5.id]);
    // The other app is untouched.
    let other = store.app("insurer-1").await?.ok_or("app vanished")?;
    assert_eq!(other.secrets.len(), 1);

    // A secret id is unique, and missing apps are reported.
    assert!(matches!(
        store.add_app_secret("his-1", s5.clone(), true).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(ids(&store.app("his-1").await?.ok_or("app vanished")?), [s5.id]);
    assert!(matches!(
        store.add_app_secret("missing", secret("x"), true).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.retire_old_app_secrets("missing").await,
        Err(StoreError::NotFound)
    ));
    Ok(())
}

fn ids(app: &piaojia_store::App) -> Vec<Uuid> {
    app.secrets.iter().map(|s| s.id).collect()
}

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

    // Different content from the same agency, or the identity from another agency.
    assert!(matches!(
        store
            .insert_receipt(receipt(a, "0000000001", "hash-2"), issued_deliveries())
            .await?,
        InsertOutcome::Conflict { same_agency: true }
    ));
    assert!(matches!(
        store
            .insert_receipt(receipt(b, "0000000001", "hash-1"), issued_deliveries())
            .await?,
        InsertOutcome::Conflict { same_agency: false }
    ));
    // Same number in another batch is another receipt.
    let mut other_batch = receipt(a, "0000000001", "hash-3");
    other_batch.bill_batch_code = "11010126".to_owned();
    created(store.insert_receipt(other_batch, vec![]).await?)?;

    assert_eq!(store.count_receipts(a).await?, 2);
    assert_eq!(store.count_receipts(b).await?, 0);

    // Unknown agency, reused receipt id.
    assert!(matches!(
        store
            .insert_receipt(receipt(Uuid::now_v7(), "0000000009", "h"), vec![])
            .await,
        Err(StoreError::NotFound)
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
            InsertOutcome::Created(r) => created_ids.push(r.id),
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
    let reversed_deliveries = || vec![delivery(DeliveryEvent::Reversed, "issuer_webhook")];

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
    // Kept at microsecond precision (the request carried nanoseconds).
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
    repeat.recorded_at = Utc::now() + Duration::seconds(5);
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
        Err(StoreError::NotFound)
    ));
    Ok(())
}

async fn deliveries_share_the_transaction(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;

    // A delivery that cannot be written (its id is taken twice) undoes the receipt.
    let twice = delivery(DeliveryEvent::Issued, "issuer_webhook");
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
                ..delivery(DeliveryEvent::Reversed, "issuer_webhook")
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
                vec![delivery(DeliveryEvent::Reversed, "wechat_template")],
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

// ----- the notifier's side ----------------------------------------------------------

/// One receipt per delivery, created in order, so `created_at` follows `prefix`+index.
async fn seed(store: &dyn Store, agency_id: Uuid, prefix: &str, channels: &[&str]) -> Result<Vec<Uuid>, Error> {
    let mut ids = Vec::new();
    for (i, channel) in channels.iter().enumerate() {
        let no = format!("{prefix}{i:06}");
        let stored = created(
            store
                .insert_receipt(
                    receipt(agency_id, &no, &format!("hash-{no}")),
                    vec![delivery(DeliveryEvent::Issued, channel)],
                )
                .await?,
        )?;
        ids.push(stored.deliveries[0].id);
    }
    Ok(ids)
}

fn attempt(outcome: AttemptOutcome, code: Option<i64>) -> AttemptRecord {
    AttemptRecord {
        id: Uuid::now_v7(),
        started_at: Utc::now(),
        latency_ms: 42,
        outcome,
        code,
        detail: Some(format!("{outcome:?}")),
    }
}

fn claimed_ids(batch: &[ClaimedDelivery]) -> Vec<Uuid> {
    batch.iter().map(|c| c.delivery.id).collect()
}

fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::SubsecRound;
    t.trunc_subsecs(6)
}

async fn must_delivery(store: &dyn Store, id: Uuid) -> Result<piaojia_store::Delivery, Error> {
    Ok(store.delivery(id).await?.ok_or("delivery missing")?)
}

/// Claims everything due and completes each claimed delivery with `update(index in ids)`.
async fn settle(store: &dyn Store, ids: &[Uuid], update: impl Fn(usize) -> DeliveryUpdate) -> Result<(), Error> {
    let now = Utc::now() + Duration::seconds(1);
    let batch = store
        .claim_deliveries("settler", now, now + Duration::seconds(60), 1000)
        .await?;
    for c in batch {
        let Some(i) = ids.iter().position(|id| *id == c.delivery.id) else {
            continue;
        };
        let outcome = match update(i) {
            DeliveryUpdate::Delivered { .. } => AttemptOutcome::Success,
            DeliveryUpdate::Retry { .. } | DeliveryUpdate::Parked { .. } => AttemptOutcome::Retryable,
            DeliveryUpdate::Failed { .. } => AttemptOutcome::Permanent,
        };
        let done = store
            .complete_attempt(c.delivery.id, "settler", attempt(outcome, None), update(i), vec![])
            .await?;
        assert!(done, "settler lost its lease");
    }
    Ok(())
}

async fn claims_are_exclusive(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let ids = seed(&*store, a, "C", &["wechat_template"; 50]).await?;
    let now = Utc::now() + Duration::seconds(1);
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
    assert_eq!(c.lease_until, micros(lease_until));
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
            vec![delivery(DeliveryEvent::Reversed, "issuer_webhook")],
        )
        .await?
    else {
        return Err("reversal refused".into());
    };
    let later = Utc::now() + Duration::seconds(1);
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
    let d = seed(&*store, a, "L", &["wechat_template"; 3]).await?;
    let t0 = Utc::now() + Duration::seconds(1);
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
    let follow = delivery(DeliveryEvent::Issued, "issuer_webhook");
    assert!(
        !store
            .complete_attempt(
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
        store
            .complete_attempt(
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
        !store
            .complete_attempt(
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
    assert_eq!(retried.next_attempt_at, micros(retry_at));
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
    assert_eq!(deferred.next_attempt_at, micros(t0 + s(500)));
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

/// `complete_attempts` is `complete_attempt` for many at once: each row fenced on
/// its own, outcomes and follow-ups as one by one, results in order.
async fn completions_in_one_batch(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let d = seed(&*store, a, "B", &["wechat_template"; 5]).await?;
    let now = Utc::now() + Duration::seconds(1);
    let s = Duration::seconds;
    let mine = store.claim_deliveries("w", now, now + s(60), 4).await?;
    assert_eq!(claimed_ids(&mine), d[..4]);
    let theirs = store.claim_deliveries("other", now, now + s(60), 4).await?;
    assert_eq!(claimed_ids(&theirs), [d[4]]);

    let webhook = delivery(DeliveryEvent::Issued, "issuer_webhook");
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
                    follow_ups: vec![delivery(DeliveryEvent::Issued, "issuer_webhook")],
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
                        reason: "outage".to_owned(),
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
    assert_eq!(retried.next_attempt_at, micros(retry_at));
    assert_eq!(retried.last_error.as_deref(), Some("system busy"));
    assert_eq!(must_delivery(&*store, d[2]).await?.status, DeliveryStatus::Failed);
    let parked = must_delivery(&*store, d[3]).await?;
    assert_eq!(parked.status, DeliveryStatus::Parked);
    assert_eq!(parked.park_reason.as_deref(), Some("outage"));
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
    let d = seed(&*store, a, "O", &["wechat_template"; 4]).await?;
    let now = Utc::now() + Duration::seconds(1);
    let batch = store
        .claim_deliveries("w", now, now + Duration::seconds(60), 10)
        .await?;
    assert_eq!(claimed_ids(&batch), d);

    // Delivered, with a status webhook as follow-up in the same transaction.
    let webhook = NewDelivery {
        payload: Some(serde_json::json!({"outcome": "delivered", "channel": "wechat_template"})),
        interface: "webhook:his.example.org".to_owned(),
        ..delivery(DeliveryEvent::Issued, "status_webhook")
    };
    let success = attempt(AttemptOutcome::Success, Some(0));
    assert!(
        store
            .complete_attempt(
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
    assert_eq!(follow.channel, "status_webhook");
    assert_eq!(follow.interface, "webhook:his.example.org");
    assert_eq!(follow.payload, webhook.payload);
    assert!(follow.next_attempt_at <= Utc::now());
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
    // The attempt is kept as given (at stored precision).
    let attempts = store.delivery_attempts(d[0]).await?;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].id, success.id);
    assert_eq!(attempts[0].started_at, micros(success.started_at));
    assert_eq!(attempts[0].latency_ms, 42);
    assert_eq!(attempts[0].outcome, AttemptOutcome::Success);
    assert_eq!(attempts[0].code, Some(0));
    assert_eq!(attempts[0].detail.as_deref(), Some("Success"));

    // Failed: a business outcome.
    assert!(
        store
            .complete_attempt(
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
    let late = delivery(DeliveryEvent::Issued, "issuer_webhook");
    assert!(
        !store
            .complete_attempt(
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
        store
            .complete_attempt(
                d[2],
                "w",
                attempt(AttemptOutcome::Retryable, Some(504)),
                DeliveryUpdate::Parked {
                    reason: "exhausted".to_owned(),
                    error: "timeout".to_owned()
                },
                vec![],
            )
            .await?
    );
    let parked = must_delivery(&*store, d[2]).await?;
    assert_eq!(parked.status, DeliveryStatus::Parked);
    assert_eq!(parked.park_reason.as_deref(), Some("exhausted"));
    assert_eq!(parked.last_error.as_deref(), Some("timeout"));
    assert_eq!(parked.attempts, 1);

    // Retry, then delivered: two attempts, oldest first; the error is cleared.
    let first = attempt(AttemptOutcome::Retryable, Some(-1));
    assert!(
        store
            .complete_attempt(
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
        store
            .complete_attempt(
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

    // A provider's later report, found by its reference.
    let by_ref = store
        .delivery_by_provider_ref("wechat_template", "msg-1")
        .await?
        .ok_or("not found by provider ref")?;
    assert_eq!(by_ref.id, d[0]);
    assert!(
        store
            .delivery_by_provider_ref("issuer_webhook", "msg-1")
            .await?
            .is_none()
    );
    assert!(
        store
            .delivery_by_provider_ref("wechat_template", "msg-2")
            .await?
            .is_none()
    );
    store
        .set_delivery_outcome(d[0], DeliveryStatus::Failed, Some("43101 blocked".to_owned()))
        .await?;
    let reported = must_delivery(&*store, d[0]).await?;
    assert_eq!(reported.status, DeliveryStatus::Failed);
    assert_eq!(reported.last_error.as_deref(), Some("43101 blocked"));
    assert_eq!(reported.attempts, 1);
    store
        .set_delivery_outcome(d[2], DeliveryStatus::Delivered, None)
        .await?;
    let late_ok = must_delivery(&*store, d[2]).await?;
    assert_eq!(late_ok.status, DeliveryStatus::Delivered);
    assert!(late_ok.delivered_at.is_some());
    assert!(late_ok.last_error.is_none());
    assert!(late_ok.park_reason.is_none(), "park_reason only while parked");
    assert!(matches!(
        store
            .set_delivery_outcome(Uuid::now_v7(), DeliveryStatus::Delivered, None)
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(store.delivery(Uuid::now_v7()).await?.is_none());
    assert!(store.delivery_attempts(Uuid::now_v7()).await?.is_empty());
    Ok(())
}

async fn listing_and_redrive(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let b = one_agency(&*store, "B002").await?;
    let t = "wechat_template";
    let w = "issuer_webhook";
    let d = seed(&*store, a, "R", &[t, t, t, w, w, w]).await?;
    let far = Utc::now() + Duration::days(1);
    settle(&*store, &d, |i| match i {
        0 | 4 => DeliveryUpdate::Parked {
            reason: "exhausted".to_owned(),
            error: "timeout".to_owned(),
        },
        1 => DeliveryUpdate::Parked {
            reason: "outage".to_owned(),
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
        park_reason: Some("exhausted".to_owned()),
        ..parked.clone()
    };
    assert_eq!(list(exhausted, 100).await?, [d[4], d[0]]);
    let templates = DeliveryFilter {
        channel: Some(t.to_owned()),
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
    let start = micros(Utc::now()) + Duration::hours(1);
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
        channel: Some(t.to_owned()),
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
    assert_eq!(must_delivery(&*store, d[5]).await?.next_attempt_at, micros(far));
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

async fn backlog_by_channel_and_interface(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    assert!(store.backlog().await?.is_empty());
    let a = one_agency(&*store, "A001").await?;
    let t = "wechat_template";
    let w = "issuer_webhook";
    let d = seed(&*store, a, "B", &[t, w, t, w, t]).await?;
    settle(&*store, &d, |i| match i {
        0 => DeliveryUpdate::Delivered { provider_ref: None },
        _ => DeliveryUpdate::Retry {
            at: Utc::now(),
            error: "busy".to_owned(),
        },
    })
    .await?;
    let created = async |id: Uuid| -> Result<DateTime<Utc>, Error> { Ok(must_delivery(&*store, id).await?.created_at) };

    let rows = store.backlog().await?;
    let summary: Vec<_> = rows
        .iter()
        .map(|r| (r.channel.as_str(), r.interface.as_str(), r.pending, r.oldest_created_at))
        .collect();
    assert_eq!(
        summary,
        [
            ("issuer_webhook", "issuer_webhook:test", 2, Some(created(d[1]).await?)),
            ("wechat_template", "wechat_template:test", 2, Some(created(d[2]).await?)),
        ]
    );
    Ok(())
}

async fn tracking_stats(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let m0 = at(0);
    let m1 = at(60);
    let row = |minute, scope: &str, key: &str, writer: &str, attempts| StatsRow {
        minute,
        scope: scope.to_owned(),
        key: key.to_owned(),
        writer: writer.to_owned(),
        attempts,
        successes: attempts - 1,
        latency_buckets: vec![attempts, 1, 0, 0],
    };
    store.upsert_stats(vec![]).await?;
    store
        .upsert_stats(vec![
            row(m0, "channel", "wechat_template", "w1", 10),
            row(m0, "channel", "wechat_template", "w2", 5),
            row(m1, "interface", "wechat:wx1:template_send", "w1", 7),
        ])
        .await?;
    assert_eq!(store.stats_since(m0).await?.len(), 3);

    // A flush replaces its own row; others stay.
    store
        .upsert_stats(vec![row(m0, "channel", "wechat_template", "w1", 20)])
        .await?;
    let rows = store.stats_since(m0).await?;
    assert_eq!(
        rows,
        [
            row(m0, "channel", "wechat_template", "w1", 20),
            row(m0, "channel", "wechat_template", "w2", 5),
            row(m1, "interface", "wechat:wx1:template_send", "w1", 7),
        ]
    );
    assert_eq!(
        store.stats_since(m0 + Duration::seconds(1)).await?,
        [row(m1, "interface", "wechat:wx1:template_send", "w1", 7)]
    );
    assert_eq!(store.stats_since(m1).await?.len(), 1);
    assert!(store.stats_since(at(120)).await?.is_empty());
    Ok(())
}

async fn channels(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let b = one_agency(&*store, "B002").await?;
    let channel = |agency_id: Uuid, kind: &str, app: &str| NewChannel {
        agency_id: Some(agency_id),
        kind: kind.to_owned(),
        wechat_app_id: app.to_owned(),
        secret_sealed: "v1:sealed-secret".to_owned(),
        template_id: "tpl-1".to_owned(),
        fields: serde_json::json!({"thing1": "{agencyName}", "amount2": "{amount}元"}),
        page: Some("pages/receipt/index".to_owned()),
        message_token_sealed: Some("v1:token".to_owned()),
        encoding_aes_key_sealed: None,
        enabled: true,
        long_term: false,
    };

    let first = store.upsert_channel(channel(a, "wechat_template", "wx-shared")).await?;
    assert_eq!(first.agency_id, Some(a));
    assert_eq!(first.kind, "wechat_template");
    assert_eq!(first.fields["amount2"], "{amount}元");
    assert_eq!(first.page.as_deref(), Some("pages/receipt/index"));
    assert!(first.enabled);

    // Same agency and kind: replaced in place.
    let replaced = store
        .upsert_channel(NewChannel {
            template_id: "tpl-2".to_owned(),
            page: None,
            enabled: false,
            encoding_aes_key_sealed: Some("v1:aes".to_owned()),
            ..channel(a, "wechat_template", "wx-shared")
        })
        .await?;
    assert_eq!(replaced.id, first.id);
    assert_eq!(replaced.created_at, first.created_at);
    assert!(replaced.updated_at >= first.updated_at);
    assert_eq!(replaced.template_id, "tpl-2");
    assert_eq!(replaced.page, None);
    assert!(!replaced.enabled);
    assert_eq!(replaced.encoding_aes_key_sealed.as_deref(), Some("v1:aes"));

    let sub = store.upsert_channel(channel(a, "wechat_subscribe", "wx-mini")).await?;
    assert_ne!(sub.id, first.id);
    let other = store.upsert_channel(channel(b, "wechat_template", "wx-shared")).await?;

    let mine = store.channels_for_agency(a).await?;
    assert_eq!(
        mine.iter().map(|c| (c.id, c.kind.as_str())).collect::<Vec<_>>(),
        [(sub.id, "wechat_subscribe"), (first.id, "wechat_template")]
    );
    assert_eq!(
        mine.iter().find(|c| c.id == first.id).map(|c| c.template_id.as_str()),
        Some("tpl-2")
    );
    let shared = store.channel_by_wechat_app("wx-shared").await?;
    let mut shared_ids: Vec<Uuid> = shared.iter().map(|c| c.id).collect();
    shared_ids.sort();
    let mut expected = vec![first.id, other.id];
    expected.sort();
    assert_eq!(shared_ids, expected);
    assert_eq!(store.channel_by_wechat_app("wx-mini").await?.len(), 1);
    assert!(store.channel_by_wechat_app("wx-none").await?.is_empty());
    assert!(store.channels_for_agency(Uuid::now_v7()).await?.is_empty());
    assert!(matches!(
        store
            .upsert_channel(channel(Uuid::now_v7(), "wechat_template", "wx"))
            .await,
        Err(StoreError::NotFound)
    ));

    // The platform wallet: a channel of no agency, one per kind, replaced in place.
    assert!(store.platform_channels().await?.is_empty());
    let platform = |template: &str| NewChannel {
        agency_id: None,
        template_id: template.to_owned(),
        long_term: true,
        ..channel(a, "wallet_subscribe", "wx-wallet")
    };
    let wallet = store.upsert_channel(platform("tpl-w1")).await?;
    assert_eq!(wallet.agency_id, None);
    assert!(wallet.long_term);
    let wallet2 = store.upsert_channel(platform("tpl-w2")).await?;
    assert_eq!(wallet2.id, wallet.id);
    let listed = store.platform_channels().await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].template_id, "tpl-w2");
    assert!(
        store
            .channels_for_agency(a)
            .await?
            .iter()
            .all(|c| c.kind != "wallet_subscribe")
    );
    // A wallet channel must not belong to an agency, nor an agency channel to none.
    assert!(
        store
            .upsert_channel(channel(a, "wallet_subscribe", "wx-w"))
            .await
            .is_err()
    );
    assert!(
        store
            .upsert_channel(NewChannel {
                agency_id: None,
                ..channel(a, "wechat_template", "wx-t")
            })
            .await
            .is_err()
    );
    Ok(())
}

async fn alerts(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let firing = |rule: &str, key: &str, started: DateTime<Utc>| Alert {
        id: Uuid::now_v7(),
        rule: rule.to_owned(),
        key: key.to_owned(),
        state: "firing".to_owned(),
        message: format!("{rule} on {key}"),
        started_at: started,
        last_notified_at: started,
        resolved_at: None,
    };
    assert!(store.firing_alert("breaker_open", "wechat:wx1").await?.is_none());

    let mut first = firing("breaker_open", "wechat:wx1", at(0) + Duration::nanoseconds(1_234_567));
    store.save_alert(&first).await?;
    let found = store
        .firing_alert("breaker_open", "wechat:wx1")
        .await?
        .ok_or("firing alert missing")?;
    assert_eq!(found.id, first.id);
    assert_eq!(found.started_at, at(0) + Duration::microseconds(1_234));
    assert!(store.firing_alert("breaker_open", "wechat:wx2").await?.is_none());

    // One open incident per rule and key.
    let twin = firing("breaker_open", "wechat:wx1", at(10));
    assert!(matches!(store.save_alert(&twin).await, Err(StoreError::Conflict(_))));
    // Other keys and rules are independent.
    store.save_alert(&firing("breaker_open", "wechat:wx2", at(20))).await?;
    store.save_alert(&firing("backlog_old", "wechat:wx1", at(30))).await?;

    // Updating by id: renotified, then resolved.
    first.last_notified_at = at(100);
    first.message = "still open".to_owned();
    store.save_alert(&first).await?;
    let again = store
        .firing_alert("breaker_open", "wechat:wx1")
        .await?
        .ok_or("firing alert missing")?;
    assert_eq!(
        (again.last_notified_at, again.message.as_str()),
        (at(100), "still open")
    );
    first.state = "resolved".to_owned();
    first.resolved_at = Some(at(200));
    store.save_alert(&first).await?;
    assert!(store.firing_alert("breaker_open", "wechat:wx1").await?.is_none());
    // A new incident may open now.
    let reopened = firing("breaker_open", "wechat:wx1", at(300));
    store.save_alert(&reopened).await?;

    let listed = store.list_alerts(10).await?;
    assert_eq!(
        listed.iter().map(|x| x.started_at).collect::<Vec<_>>(),
        [at(300), at(30), at(20), micros(first.started_at)]
    );
    let resolved = listed.last().ok_or("no alerts")?;
    assert_eq!(resolved.state, "resolved");
    assert_eq!(resolved.resolved_at, Some(at(200)));
    assert_eq!(store.list_alerts(2).await?.len(), 2);
    Ok(())
}

// ----- backend-specific edges -------------------------------------------------------

#[tokio::test]
async fn unsupported_url_is_refused() {
    let result = connect(&ConnectOptions {
        url: "mysql://user:secret@localhost/db".to_owned(),
        max_connections: 1,
    })
    .await;
    match result {
        Err(StoreError::UnsupportedUrl(shown)) => assert!(!shown.contains("secret")),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a mysql url was accepted"),
    }
}

#[tokio::test]
async fn sqlite_in_memory_works() -> TestResult {
    let store = connect(&ConnectOptions {
        url: "sqlite::memory:".to_owned(),
        max_connections: 4,
    })
    .await?;
    store.migrate().await?;
    assert!(store.migrations_current().await?);
    let a = one_agency(&*store, "A001").await?;
    created(store.insert_receipt(receipt(a, "1", "h"), issued_deliveries()).await?)?;
    assert_eq!(store.count_receipts(a).await?, 1);
    Ok(())
}

// ----- the wallet ----------------------------------------------------------------

fn registration(id_index: &str, name_index: &str, phone: Option<(&str, bool)>) -> Registration {
    Registration {
        profile_sealed: "v1:sealed-profile".to_owned(),
        id_index: id_index.to_owned(),
        name_index: name_index.to_owned(),
        phone_index: phone.map(|(p, _)| p.to_owned()),
        phone_verified: phone.is_some_and(|(_, v)| v),
        consent_version: "2026-11".to_owned(),
        consent_at: at(5),
    }
}

fn person_receipt(agency_id: Uuid, bill_no: &str, id_index: &str, name_index: &str) -> NewReceiptRecord {
    NewReceiptRecord {
        payer_id_index: Some(id_index.to_owned()),
        payer_name_index: Some(name_index.to_owned()),
        payer_phone_index: None,
        ..receipt(agency_id, bill_no, &format!("hash-{bill_no}"))
    }
}

fn refresh(payer_id: Uuid, family_id: Uuid, hash: &str) -> NewRefreshToken {
    NewRefreshToken {
        id: Uuid::now_v7(),
        family_id,
        payer_id,
        app_id: "wx-wallet".to_owned(),
        token_hash: hash.to_owned(),
        expires_at: Utc::now() + Duration::days(30),
    }
}

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
    store.insert_refresh_token(refresh(alice, family, "h1")).await?;
    let rotated = store
        .rotate_refresh_token("h1", refresh(Uuid::nil(), Uuid::nil(), "h2"), Utc::now())
        .await?;
    assert_eq!(
        rotated,
        RefreshOutcome::Rotated {
            payer_id: alice,
            app_id: "wx-wallet".to_owned()
        }
    );
    assert!(matches!(
        store.rotate_refresh_token("h1", refresh(Uuid::nil(), Uuid::nil(), "h3"), Utc::now()).await?,
        RefreshOutcome::Reused { family_id, .. } if family_id == family
    ));
    assert_eq!(
        store
            .rotate_refresh_token("h2", refresh(Uuid::nil(), Uuid::nil(), "h4"), Utc::now())
            .await?,
        RefreshOutcome::Revoked
    );
    assert_eq!(
        store
            .rotate_refresh_token("nope", refresh(Uuid::nil(), Uuid::nil(), "h5"), Utc::now())
            .await?,
        RefreshOutcome::Unknown
    );
    let mut expired = refresh(alice, Uuid::now_v7(), "old");
    expired.expires_at = Utc::now() - Duration::seconds(1);
    store.insert_refresh_token(expired).await?;
    assert_eq!(
        store
            .rotate_refresh_token("old", refresh(Uuid::nil(), Uuid::nil(), "h6"), Utc::now())
            .await?,
        RefreshOutcome::Expired
    );
    // Logout: only the token's own payer revokes its family.
    store.insert_refresh_token(refresh(alice, Uuid::now_v7(), "h7")).await?;
    assert!(!store.revoke_refresh_family(bob.payer.id, "h7").await?);
    assert!(store.revoke_refresh_family(alice, "h7").await?);
    assert_eq!(
        store
            .rotate_refresh_token("h7", refresh(Uuid::nil(), Uuid::nil(), "h8"), Utc::now())
            .await?,
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
                payer_type: "2".to_owned(),
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
        kind: "wallet_subscribe".to_owned(),
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
        let InsertOutcome::Created(stored) = outcome? else {
            return Err("receipt not created".into());
        };
        for d in &stored.deliveries {
            assert_eq!((d.channel.as_str(), d.target.as_str()), ("wallet_subscribe", "o-dora"));
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
