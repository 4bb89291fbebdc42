//! The storage story, told once and run on both backends: every chapter below is a
//! plain async function over a fresh, empty database, and `chapters!` turns each
//! into a PostgreSQL and a SQLite test.
//!
//! PostgreSQL: `PIAOJIA_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`)
//! names a database from which a fresh `piaojia_store_<uuid>` database is created
//! per test and dropped afterwards.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use piaojia_store::{
    AppKind, Backend, ConnectOptions, DeliveryEvent, DeliveryStatus, FileMeta, InsertOutcome, NewAgency, NewApp,
    NewAppSecret, NewDelivery, NewReceiptRecord, ReimbursementState, Reversal, ReversalOutcome, Store, StoreError,
    StoredReceipt, connect,
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
    }
}

fn delivery(event: DeliveryEvent, channel: &str) -> NewDelivery {
    NewDelivery {
        id: Uuid::now_v7(),
        event,
        channel: channel.to_owned(),
        target: format!("{channel}-target"),
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
