//! Times: a time keeps microseconds on both databases, reads back equal to what
//! was written and sorts as time; on SQLite it is stored as one fixed-width text
//! (`YYYY-MM-DDTHH:MM:SS.ffffff+00:00`), and migration 0004 brings times stored
//! in the earlier variable forms to it.

use std::str::FromStr;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use piaojia_core::parties::{ReimbursementAction, ReimburserKind};
use piaojia_store::claims::{NewClaim, SubmitOutcome, WithdrawOutcome};
use piaojia_store::official_account::{CardOrder, CardUnit, InboxOutcome, NewInboxEvent};
use piaojia_store::pages::{NewScene, NewWebSession, Scan, ScanOutcome};
use piaojia_store::payments::{NewWechatPayment, PaymentOutcome};
use piaojia_store::reimbursement::{
    NewReimburser, ReceiptKey, ReimbursementChange, ReimbursementOutcome, ReimbursementRequest,
};
use piaojia_store::reminders::{DeadlineWindow, ReminderScan};
use piaojia_store::testing::FreshDatabase;
use piaojia_store::wallets::{RefreshOutcome, SubscriptionChoice, SubscriptionReport, WalletAdd, WalletQuery};
use piaojia_store::{
    Alert, AlertState, AttemptOutcome, AttemptRecord, Backend, ChannelKind, ConnectOptions, DeliveryEvent,
    DeliveryStatus, DeliveryUpdate, NewChannel, Reversal, ReversalOutcome, StatsRow, Store, Timestamp, connect,
};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AssertSqlSafe, Connection, SqliteConnection};
use uuid::Uuid;

use crate::Fixture;
use crate::support::{
    Error, TestResult, app, at, attempt, claimed_ids, complete, created, delivery, must_delivery, one_agency, receipt,
    refresh, registration, reversal, secret, seed,
};

chapters!(times_keep_microseconds_and_sort);

/// The one form of a stored time on SQLite (`d`: a digit).
const FIXED_WIDTH: &str = "dddd-dd-ddTdd:dd:dd.dddddd+00:00";

fn is_fixed_width(text: &str) -> bool {
    text.len() == FIXED_WIDTH.len()
        && text.bytes().zip(FIXED_WIDTH.bytes()).all(|(c, p)| match p {
            b'd' => c.is_ascii_digit(),
            _ => c == p,
        })
}

fn is_time_column(name: &str) -> bool {
    name.ends_with("_at") || matches!(name, "at" | "minute" | "lease_until")
}

/// Where a time is stored: table, column, rowid.
type Place = (String, String, i64);

/// The time columns of a SQLite database's tables, and every time stored in them.
async fn stored_times(conn: &mut SqliteConnection) -> Result<(Vec<(String, String)>, Vec<(Place, String)>), Error> {
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name <> '_sqlx_migrations' ORDER BY name",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut columns = Vec::new();
    let mut times = Vec::new();
    for (table,) in tables {
        let names: Vec<(String,)> = sqlx::query_as("SELECT name FROM pragma_table_info($1) ORDER BY cid")
            .bind(&table)
            .fetch_all(&mut *conn)
            .await?;
        for (column,) in names.into_iter().filter(|(name,)| is_time_column(name)) {
            let rows: Vec<(i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT rowid, \"{column}\" FROM \"{table}\" WHERE \"{column}\" IS NOT NULL ORDER BY rowid"
            )))
            .fetch_all(&mut *conn)
            .await?;
            times.extend(
                rows.into_iter()
                    .map(|(rowid, text)| ((table.clone(), column.clone(), rowid), text)),
            );
            columns.push((table.clone(), column));
        }
    }
    Ok((columns, times))
}

/// Asserts that every time column holds at least one time, and every time is fixed-width.
async fn assert_every_time_fixed_width(conn: &mut SqliteConnection) -> TestResult {
    let (columns, times) = stored_times(conn).await?;
    assert!(columns.len() > 30, "time columns found: {columns:?}");
    for (table, column) in &columns {
        assert!(
            times.iter().any(|((t, c, _), _)| t == table && c == column),
            "nothing stored in {table}.{column}"
        );
    }
    for ((table, column, rowid), text) in &times {
        assert!(is_fixed_width(text), "{table}.{column} of row {rowid}: {text:?}");
    }
    Ok(())
}

async fn sqlite_file(fx: &Fixture) -> Result<SqliteConnection, Error> {
    Ok(SqliteConnection::connect(&fx.db.url).await?)
}

async fn times_keep_microseconds_and_sort(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let a = one_agency(&*store, "A001").await?;
    let d = seed(&*store, a, "T", &[ChannelKind::WechatTemplate; 6]).await?;
    let t: DateTime<Utc> = "2026-11-23T01:30:00Z".parse()?;
    let (ms, us, ns) = (Duration::milliseconds, Duration::microseconds, Duration::nanoseconds);
    // Due times given with 0, 1, 3, 6 and 9 fractional digits, in an order unlike
    // the deliveries' creation: (delivery, due as given, due as kept on SQLite).
    let plan = [
        (d[0], t + ms(500), "2026-11-23T01:30:00.500000+00:00"),
        (d[1], t + us(1), "2026-11-23T01:30:00.000001+00:00"),
        (d[2], t, "2026-11-23T01:30:00.000000+00:00"),
        (d[3], t + ms(123), "2026-11-23T01:30:00.123000+00:00"),
        (d[4], t + ns(123_456_789), "2026-11-23T01:30:00.123456+00:00"),
        (d[5], t + us(123_457), "2026-11-23T01:30:00.123457+00:00"),
    ];
    let lease = Timestamp::now() + Duration::seconds(600);
    let defer_all = async || -> TestResult {
        for (id, due, _) in &plan {
            assert!(store.defer_delivery(*id, "w", (*due).into()).await?);
        }
        Ok(())
    };
    let now = Timestamp::now() + Duration::seconds(1);
    assert_eq!(store.claim_deliveries("w", now, lease, 10).await?.len(), 6);
    defer_all().await?;

    // Each reads back as the instant given, to the microsecond.
    for (id, due, kept) in &plan {
        let x = must_delivery(&*store, *id).await?;
        assert_eq!(x.next_attempt_at, Timestamp::from(*due));
        assert_eq!(x.next_attempt_at, DateTime::parse_from_rfc3339(kept)?.to_utc());
    }
    // Given at nanoseconds, it equals the same microsecond given as such.
    assert_eq!(
        must_delivery(&*store, d[4]).await?.next_attempt_at,
        Timestamp::from(t + us(123_456))
    );

    // Claimed in time order, one at a time.
    let late = Timestamp::from(t) + Duration::seconds(1);
    for expected in [d[2], d[1], d[3], d[4], d[5], d[0]] {
        let one = store.claim_deliveries("w", late, lease, 1).await?;
        assert_eq!(claimed_ids(&one), [expected]);
    }
    // Each is due at its microsecond, not one before.
    defer_all().await?;
    let ts = Timestamp::from(t);
    let steps: [(Timestamp, &[Uuid]); 11] = [
        (ts - us(1), &[]),
        (ts, &[d[2]]),
        (ts + us(1), &[d[1]]),
        (ts + ms(123) - us(1), &[]),
        (ts + ms(123), &[d[3]]),
        (ts + us(123_455), &[]),
        // A time of nanoseconds is its microsecond: due at .123456789 is due at .123456.
        ((t + ns(123_456_001)).into(), &[d[4]]),
        ((t + ns(123_456_999)).into(), &[]),
        (ts + us(123_457), &[d[5]]),
        (ts + ms(500) - us(1), &[]),
        (ts + ms(500), &[d[0]]),
    ];
    for (now, expected) in steps {
        let batch = store.claim_deliveries("w", now, lease, 10).await?;
        assert_eq!(claimed_ids(&batch), expected, "claimed at {now:?}");
    }

    write_everywhere(&*store, a).await?;

    if fx.backend() == Backend::Sqlite {
        let mut conn = sqlite_file(fx).await?;
        for (id, _, kept) in &plan {
            let (text,): (String,) = sqlx::query_as("SELECT next_attempt_at FROM deliveries WHERE id = $1")
                .bind(id)
                .fetch_one(&mut conn)
                .await?;
            assert_eq!(text, *kept);
        }
        // Whatever the store wrote, wherever: one width.
        assert_every_time_fixed_width(&mut conn).await?;
        conn.close().await?;
    }
    Ok(())
}

/// Writes through every role, with times given at nanoseconds where the caller
/// gives them, so that every time column holds a time the store wrote.
async fn write_everywhere(store: &dyn Store, agency_id: Uuid) -> TestResult {
    let ns = Duration::nanoseconds;
    // Tenants: an app whose first secret is retired, and a channel.
    store.create_app(app("his-1", agency_id)).await?;
    store.add_app_secret("his-1", secret("sealed-2"), false).await?;
    store
        .upsert_channel(NewChannel {
            agency_id: Some(agency_id),
            kind: ChannelKind::WechatSubscribe,
            wechat_app_id: "wx-mini".to_owned(),
            secret_sealed: "v1:sealed-secret".to_owned(),
            template_id: "tpl-1".to_owned(),
            fields: serde_json::json!({}),
            page: None,
            message_token_sealed: None,
            encoding_aes_key_sealed: None,
            enabled: true,
            long_term: false,
        })
        .await?;

    // Intake: a receipt, reversed.
    let r = created(
        store
            .insert_receipt(
                receipt(agency_id, "W000001", "hash-w"),
                vec![delivery(DeliveryEvent::Issued, ChannelKind::WechatTemplate)],
            )
            .await?,
    )?;
    let reversed = store
        .reverse_receipt(
            agency_id,
            "11010125",
            "W000001",
            Reversal {
                reversed_at: at(7200) + ns(987_654_321),
                ..reversal("退费")
            },
            vec![],
        )
        .await?;
    assert!(matches!(reversed, ReversalOutcome::Reversed(_)), "{reversed:?}");

    // Queue: delivered, then taken back by the provider.
    let id = r.deliveries[0].id;
    let now = Timestamp::now() + Duration::seconds(1);
    let claimed = store
        .claim_deliveries("w-times", now, now + Duration::seconds(60), 100)
        .await?;
    assert_eq!(claimed_ids(&claimed), [id]);
    let tried = AttemptRecord {
        started_at: at(7300) + ns(1),
        ..attempt(AttemptOutcome::Success, None)
    };
    let update = DeliveryUpdate::Delivered {
        provider_ref: Some("msg-w".to_owned()),
    };
    assert!(complete(store, id, "w-times", tried, update, vec![]).await?);
    assert!(
        store
            .settle_delivery(id, DeliveryStatus::Failed, Some("43101".to_owned()))
            .await?
    );

    // Figures: a minute's counts and a resolved alert.
    store
        .upsert_stats(vec![StatsRow {
            minute: at(60),
            scope: "channel".to_owned(),
            key: "wechat_template".to_owned(),
            writer: "w1".to_owned(),
            attempts: 1,
            successes: 1,
            latency_buckets: vec![1, 0],
        }])
        .await?;
    store
        .save_alert(&Alert {
            id: Uuid::now_v7(),
            rule: "breaker_open".to_owned(),
            key: "wechat:wx1".to_owned(),
            state: AlertState::Resolved,
            message: "over".to_owned(),
            started_at: at(0) + ns(1_500),
            last_notified_at: at(1) + ns(999_999_999),
            resolved_at: Some(at(2) + ns(1)),
        })
        .await?;

    // Wallets: a registered payer with a consent, a used and a revoked token, and
    // a wallet entry added and removed.
    let payer = store.login_payer("wx-wallet", "o-times", None).await?.payer.id;
    let mut registered = registration("id-t", "name-t", None);
    registered.consent_at = at(5) + ns(123_456_789);
    store.register_payer(payer, registered).await?;
    let accepted = SubscriptionReport {
        template_id: "tpl-w".to_owned(),
        choice: SubscriptionChoice::Accept,
        long_term: false,
    };
    store.record_subscriptions(payer, "wx-wallet", &[accepted]).await?;
    store.insert_refresh_token(refresh(payer, Uuid::now_v7(), "t1")).await?;
    let rotated = store
        .rotate_refresh_token("t1", refresh(Uuid::nil(), Uuid::nil(), "t2"), Timestamp::now())
        .await?;
    assert!(matches!(rotated, RefreshOutcome::Rotated { .. }), "{rotated:?}");
    assert!(store.revoke_refresh_family(payer, "t2").await?);
    assert_eq!(store.add_to_wallet(payer, r.id).await?, WalletAdd::Added);
    assert!(store.remove_from_wallet(payer, r.id, None).await?);

    // The official account's pages: a session, and a QR scene taken by its first
    // scanner, refused to a second one; an expired scene delivers nothing.
    store
        .create_web_session(NewWebSession {
            token_hash: "session-times".to_owned(),
            payer_id: payer,
            wechat_app_id: "wx-oa".to_owned(),
            openid: "o-times".to_owned(),
            expires_at: Timestamp::now() + Duration::hours(1),
        })
        .await?;
    let session = store.web_session("session-times", Timestamp::now()).await?;
    assert_eq!(session.map(|s| s.payer_id), Some(payer));
    let scene = |hash: &str, expires_at: Timestamp| NewScene {
        scene_hash: hash.to_owned(),
        receipt_id: r.id,
        agency_id,
        wechat_app_id: "wx-oa".to_owned(),
        expires_at,
    };
    let scan = |hash: &str, openid: &str| Scan {
        scene_hash: hash.to_owned(),
        wechat_app_id: "wx-oa".to_owned(),
        openid: openid.to_owned(),
        now: Timestamp::now(),
        announce: None,
    };
    store
        .insert_scene(scene("scene-times", Timestamp::now() + Duration::hours(1)))
        .await?;
    let first = store.scan_scene(scan("scene-times", "o-scanner")).await?;
    assert!(matches!(first, ScanOutcome::Delivered { first: true, .. }), "{first:?}");
    let again = store.scan_scene(scan("scene-times", "o-scanner")).await?;
    assert!(
        matches!(again, ScanOutcome::Delivered { first: false, .. }),
        "{again:?}"
    );
    assert_eq!(
        store.scan_scene(scan("scene-times", "o-other")).await?,
        ScanOutcome::Taken
    );
    let mut elsewhere = scan("scene-times", "o-scanner");
    elsewhere.wechat_app_id = "wx-other".to_owned();
    assert_eq!(store.scan_scene(elsewhere).await?, ScanOutcome::Unknown);
    store
        .insert_scene(scene("scene-late", Timestamp::now() - Duration::seconds(1)))
        .await?;
    assert_eq!(
        store.scan_scene(scan("scene-late", "o-late")).await?,
        ScanOutcome::Expired
    );

    // The official account and its card package: a follower, a provider's final
    // report, a card template, and a card order through to WeChat's status report.
    let later = Timestamp::now() + ns(123_456_789);
    store.set_following("wx-oa", "o-times", true, later).await?;
    assert!(store.record_provider_report(id, "success", later).await?);
    store
        .upsert_card_unit(CardUnit {
            agency_id,
            wechat_app_id: "wx-oa".to_owned(),
            s_pappid: "pappid-times".to_owned(),
            card_id: "card-times".to_owned(),
            payee: "医院".to_owned(),
            logo_url: "https://example.test/logo.png".to_owned(),
            enabled: true,
            created_at: later,
            updated_at: later,
        })
        .await?;
    store
        .open_card_order(CardOrder {
            order_id: "order-times".to_owned(),
            receipt_id: r.id,
            agency_id,
            wechat_app_id: "wx-oa".to_owned(),
            open_id: "o-times".to_owned(),
            card_id: "card-times".to_owned(),
            requested_at: later,
            authorized_at: None,
            code: None,
            inserted_at: None,
            card_status: None,
            wechat_status: None,
            wechat_status_at: None,
            updated_at: later,
        })
        .await?;
    assert!(
        store
            .authorize_card_order("order-times", later, vec![])
            .await?
            .is_some()
    );
    store.card_inserted("order-times", Some("code-times"), later).await?;
    store
        .set_card_status("order-times", "INVOICE_REIMBURSE_LOCK", later)
        .await?;
    assert!(
        store
            .record_wechat_card_status("card-times", "code-times", "INVOICE_REIMBURSE_CLOSURE", later)
            .await?
    );

    // Payments we know: a WeChat Pay payment reported, then again (the first
    // record), then with another openid (refused).
    let payment = NewWechatPayment {
        agency_id,
        wechat_order_no: "4200000000202612030000000001".to_owned(),
        wechat_app_id: "wx-oa".to_owned(),
        openid: "o-times".to_owned(),
        total_fen: 12_850,
        paid_at: at(30) + ns(123_456_789),
        issuer_app_id: "his-1".to_owned(),
    };
    let first = store.record_wechat_payment(payment.clone()).await?;
    let PaymentOutcome::Created(held) = first else {
        panic!("a new payment: {first:?}");
    };
    assert_eq!(held.paid_at, payment.paid_at);
    assert_eq!(
        store.record_wechat_payment(payment.clone()).await?,
        PaymentOutcome::Duplicate(held.clone())
    );
    let other = NewWechatPayment {
        openid: "o-someone-else".to_owned(),
        ..payment.clone()
    };
    assert_eq!(
        store.record_wechat_payment(other).await?,
        PaymentOutcome::Conflict(held.clone())
    );
    assert_eq!(
        store.wechat_payment(agency_id, &payment.wechat_order_no).await?,
        Some(held)
    );

    // The message server's inbox: one event handled, one left claimed.
    for key in ["msg-times-1", "msg-times-2"] {
        assert!(
            store
                .record_inbox_event(NewInboxEvent {
                    wechat_app_id: "wx-oa".to_owned(),
                    dedup_key: key.to_owned(),
                    event: "subscribe".to_owned(),
                    payload_sealed: "v1:sealed-event".to_owned(),
                    received_at: later,
                })
                .await?
        );
    }
    let lease = later + ns(60_000_000_000);
    let claimed = store.claim_inbox_events("w-times", later + ns(1), lease, 1).await?;
    assert_eq!(claimed.len(), 1);
    assert!(
        store
            .settle_inbox_event(claimed[0].id, "w-times", claimed[0].attempts, InboxOutcome::Done, later)
            .await?
    );
    assert_eq!(
        store
            .claim_inbox_events("w-times", later + ns(1), lease, 1)
            .await?
            .len(),
        1
    );

    // Reimbursement: a reimburser locks a receipt (state, history, request id).
    let locked = created(
        store
            .insert_receipt(receipt(agency_id, "W000002", "hash-l"), vec![])
            .await?,
    )?;
    store.create_app(app("ins-1", agency_id)).await?;
    store
        .upsert_reimburser(NewReimburser {
            app_id: "ins-1".to_owned(),
            kind: ReimburserKind::CommercialInsurer,
            name: "保险".to_owned(),
            accepted_agencies: vec![],
            personal_fields: vec![],
            claim_within_days: Some(30),
            claim_fields: vec![],
        })
        .await?;
    let lock = store
        .apply_reimbursement(ReimbursementRequest {
            app_id: "ins-1".to_owned(),
            request_id: "req-times".to_owned(),
            fingerprint: "fp-times".to_owned(),
            accepted_agency_ids: vec![agency_id],
            changes: vec![ReimbursementChange {
                key: ReceiptKey {
                    bill_batch_code: locked.bill_batch_code.clone(),
                    bill_no: locked.bill_no.clone(),
                    random: locked.random.clone(),
                },
                action: ReimbursementAction::Lock,
                paid_fen: None,
            }],
            reason: None,
            remote_addr: None,
        })
        .await?;
    assert!(matches!(lock, ReimbursementOutcome::Applied(_)), "{lock:?}");

    // Claims: a payer claims a receipt of their wallet, then withdraws it.
    let claimed = created(
        store
            .insert_receipt(receipt(agency_id, "W000003", "hash-c"), vec![])
            .await?,
    )?;
    assert_eq!(store.add_to_wallet(payer, claimed.id).await?, WalletAdd::Added);
    let claim_id = Uuid::now_v7();
    let submitted = store
        .submit_claim(NewClaim {
            id: claim_id,
            payer_id: payer,
            reimburser_app_id: "ins-1".to_owned(),
            mp_app_id: "wx-wallet".to_owned(),
            receipt_ids: vec![claimed.id],
            consented_fields: vec![],
            personal_sealed: "v1:sealed-personal".to_owned(),
            fields_sealed: None,
            accepted_agency_ids: vec![agency_id],
            issued_after: None,
            scope: None,
            remote_addr: None,
        })
        .await?;
    assert!(matches!(submitted, SubmitOutcome::Submitted(_)), "{submitted:?}");
    let withdrawn = store.withdraw_claim(payer, claim_id, None).await?;
    assert!(matches!(withdrawn, WithdrawOutcome::Withdrawn(_)), "{withdrawn:?}");

    // Reminders: the wallet's receipts are all due, and all close to a deadline.
    let code = store.agency(agency_id).await?.expect("the agency").code;
    let reminded = store
        .send_due_reminders(&ReminderScan {
            now: Timestamp::now(),
            cutoff: Timestamp::now(),
            agency_cutoffs: vec![],
            deadlines: vec![DeadlineWindow {
                agencies: vec![code],
                issued_after: Timestamp::now() - Duration::days(36500),
                issued_until: Timestamp::now(),
            }],
            limit: 10,
        })
        .await?;
    assert!(reminded.recorded >= 2, "both periods: {reminded:?}");
    Ok(())
}

// ----- migration 0004 ---------------------------------------------------------------

/// The forms times took on SQLite before 0004 (sqlx wrote 0, 3, 6 or 9 fractional
/// digits, column defaults 3), and the form 0004 brings each to.
const OLD_FORMS: [(&str, &str); 4] = [
    ("2026-11-23T01:30:00+00:00", "2026-11-23T01:30:00.000000+00:00"),
    ("2026-11-23T01:30:00.5+00:00", "2026-11-23T01:30:00.500000+00:00"),
    ("2026-11-23T01:30:00.123+00:00", "2026-11-23T01:30:00.123000+00:00"),
    (
        "2026-11-23T01:30:00.123456789+00:00",
        "2026-11-23T01:30:00.123456+00:00",
    ),
];

/// The fixed-width form of an RFC 3339 time, truncated to microseconds.
fn fixed_width(text: &str) -> Result<String, Error> {
    let t = DateTime::parse_from_rfc3339(text)?.to_utc().trunc_subsecs(6);
    Ok(t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string())
}

/// The instant an old form names, as the store keeps it.
fn instant(text: &str) -> Result<Timestamp, Error> {
    Ok(DateTime::parse_from_rfc3339(text)?.to_utc().into())
}

/// What the rows written at version 3 are.
struct OldRows {
    agency: Uuid,
    payer: Uuid,
    pending: Uuid,
    delivered: Uuid,
}

/// Writes a row into every table with times, every time in one of [`OLD_FORMS`]
/// (and some left to the column defaults), as a database at version 3 held them.
async fn write_old_rows(conn: &mut SqliteConnection) -> Result<OldRows, Error> {
    let [f0, f1, f2, f3] = OLD_FORMS.map(|(old, _)| old);
    let (agency, payer, pending, delivered) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (reversed, held) = (Uuid::now_v7(), Uuid::now_v7());
    // `updated_at` from the column default (strftime's three digits).
    sqlx::query("INSERT INTO agencies (id, code, name, file_hosts, created_at) VALUES ($1, 'A001', '医院', '[]', $2)")
        .bind(agency)
        .bind(f0)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO apps (app_id, agency_id, kind, name, enabled, created_at, updated_at) \
         VALUES ('his-1', $1, 'issuer', 'HIS', 1, $2, $3)",
    )
    .bind(agency)
    .bind(f1)
    .bind(f2)
    .execute(&mut *conn)
    .await?;
    for (sealed, created_at, retired_at) in [("old", f3, Some(f0)), ("new", f2, None)] {
        sqlx::query(
            "INSERT INTO app_secrets (id, app_id, sealed, created_at, retired_at) VALUES ($1, 'his-1', $2, $3, $4)",
        )
        .bind(Uuid::now_v7())
        .bind(sealed)
        .bind(created_at)
        .bind(retired_at)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "INSERT INTO receipts (id, agency_id, issuer_app_id, bill_batch_code, bill_no, random, bus_no, bus_type, \
         payer_type, issued_at, total_fen, content_hash, payer_sealed, details, received_at, reimbursement_state, \
         red_bill_batch_code, red_bill_no, red_random, reversed_at, reversal_reason, reversal_recorded_at, \
         updated_at) VALUES ($1, $2, 'his-1', '11010125', '0000000001', 'a1b2c3', 'MZ1', '02', '1', $3, 100, 'h1', \
         'v1:sealed', '{}', $4, 'CANCEL', '11010125', '9000000001', 'ffee01', $5, '退费', $6, $7)",
    )
    .bind(reversed)
    .bind(agency)
    .bind(f2)
    .bind(f3)
    .bind(f1)
    .bind(f0)
    .bind(f1)
    .execute(&mut *conn)
    .await?;
    // `updated_at` from the column default.
    sqlx::query(
        "INSERT INTO receipts (id, agency_id, issuer_app_id, bill_batch_code, bill_no, random, bus_no, bus_type, \
         payer_type, issued_at, total_fen, content_hash, payer_sealed, details, received_at) \
         VALUES ($1, $2, 'his-1', '11010125', '0000000002', 'a1b2c3', 'MZ2', '02', '1', $3, 100, 'h2', \
         'v1:sealed', '{}', $4)",
    )
    .bind(held)
    .bind(agency)
    .bind(f0)
    .bind(f1)
    .execute(&mut *conn)
    .await?;
    // Pending, under a lease that has run out; and delivered.
    sqlx::query(
        "INSERT INTO deliveries (id, receipt_id, agency_id, event, channel, target, interface, status, attempts, \
         next_attempt_at, lease_owner, lease_until, created_at, updated_at) VALUES ($1, $2, $3, 'issued', \
         'wechat_template', 'o-1', 'wechat:wx1:template_send', 'pending', 0, $4, 'old-worker', $5, $6, $7)",
    )
    .bind(pending)
    .bind(reversed)
    .bind(agency)
    .bind(f3)
    .bind(f2)
    .bind(f0)
    .bind(f1)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO deliveries (id, receipt_id, agency_id, event, channel, target, interface, status, attempts, \
         next_attempt_at, created_at, updated_at, delivered_at, provider_ref) VALUES ($1, $2, $3, 'issued', \
         'wechat_template', 'o-1', 'wechat:wx1:template_send', 'delivered', 1, $4, $5, $6, $7, 'msg-1')",
    )
    .bind(delivered)
    .bind(reversed)
    .bind(agency)
    .bind(f0)
    .bind(f1)
    .bind(f2)
    .bind(f3)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO delivery_attempts (id, delivery_id, started_at, latency_ms, outcome) \
         VALUES ($1, $2, $3, 10, 'success')",
    )
    .bind(Uuid::now_v7())
    .bind(delivered)
    .bind(f1)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO tracking_stats (minute, scope, key, writer, attempts, successes, latency_buckets) \
         VALUES ($1, 'channel', 'wechat_template', 'w1', 1, 1, '[1, 0]')",
    )
    .bind(f0)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO channels (id, agency_id, kind, wechat_app_id, secret_sealed, template_id, fields, created_at, \
         updated_at) VALUES ($1, $2, 'wechat_template', 'wx1', 'v1:secret', 'tpl-1', '{}', $3, $4)",
    )
    .bind(Uuid::now_v7())
    .bind(agency)
    .bind(f2)
    .bind(f3)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO alerts (id, rule, key, state, message, started_at, last_notified_at, resolved_at) \
         VALUES ($1, 'breaker_open', 'wechat:wx1', 'resolved', 'over', $2, $3, $4)",
    )
    .bind(Uuid::now_v7())
    .bind(f1)
    .bind(f2)
    .bind(f3)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO payers (id, profile_sealed, id_index, name_index, consent_version, consent_at, registered_at, \
         created_at, updated_at) VALUES ($1, 'v1:profile', 'id-1', 'name-1', '2026-11', $2, $3, $4, $5)",
    )
    .bind(payer)
    .bind(f0)
    .bind(f1)
    .bind(f2)
    .bind(f3)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO payer_identities (app_id, openid, payer_id, created_at, last_login_at) \
         VALUES ('wx-wallet', 'o-1', $1, $2, $3)",
    )
    .bind(payer)
    .bind(f3)
    .bind(f0)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO refresh_tokens (id, family_id, payer_id, app_id, token_hash, created_at, expires_at, used_at, \
         revoked_at) VALUES ($1, $2, $3, 'wx-wallet', 'h1', $4, $5, $6, $7)",
    )
    .bind(Uuid::now_v7())
    .bind(Uuid::now_v7())
    .bind(payer)
    .bind(f0)
    .bind(f1)
    .bind(f2)
    .bind(f3)
    .execute(&mut *conn)
    .await?;
    for (receipt_id, issued_at, source, added_at, removed_at) in [
        // Both held by possession: migration 0006 gives back what an unverified
        // identity collected, and this payer is not verified.
        (reversed, f2, "possession", f3, None),
        (held, f0, "possession", f1, Some(f0)),
    ] {
        sqlx::query(
            "INSERT INTO wallet_entries (payer_id, receipt_id, agency_id, issued_at, source, tags, added_at, \
             removed_at) VALUES ($1, $2, $3, $4, $5, '[]', $6, $7)",
        )
        .bind(payer)
        .bind(receipt_id)
        .bind(agency)
        .bind(issued_at)
        .bind(source)
        .bind(added_at)
        .bind(removed_at)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "INSERT INTO subscription_credits (payer_id, app_id, template_id, remaining, long_term, updated_at) \
         VALUES ($1, 'wx-wallet', 'tpl-w', 1, 0, $2)",
    )
    .bind(payer)
    .bind(f1)
    .execute(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO payer_audit (id, payer_id, event, at) VALUES ($1, $2, 'registered', $3)")
        .bind(Uuid::now_v7())
        .bind(payer)
        .bind(f2)
        .execute(&mut *conn)
        .await?;
    Ok(OldRows {
        agency,
        payer,
        pending,
        delivered,
    })
}

/// A database at migration 0003 holding times in every old form: after 0004 each
/// is fixed-width text and reads back as the same instant (to the microsecond).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_0004_makes_stored_times_fixed_width() -> TestResult {
    static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
    assert!(MIGRATOR.version_exists(4), "0004 is the migration under test");
    for (old, new) in OLD_FORMS {
        assert_eq!(fixed_width(old)?, new);
    }

    let db = FreshDatabase::new(Backend::Sqlite).await?;
    let options = SqliteConnectOptions::from_str(&db.url)?.create_if_missing(true);
    if let Some(dir) = options.get_filename().parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut conn = SqliteConnection::connect_with(&options).await?;
    MIGRATOR.run_to(3, &mut conn).await?;
    let rows = write_old_rows(&mut conn).await?;
    let (columns, before) = stored_times(&mut conn).await?;
    // Every time column holds a time; every old form is there.
    for (table, column) in &columns {
        assert!(
            before.iter().any(|((t, c, _), _)| t == table && c == column),
            "nothing written to {table}.{column}"
        );
    }
    for (old, _) in OLD_FORMS {
        assert!(before.iter().any(|(_, text)| text == old), "{old} not written");
    }
    assert!(
        before
            .iter()
            .any(|(_, text)| !is_fixed_width(text) && OLD_FORMS.iter().all(|(old, _)| old != text)),
        "a column default's time is there too"
    );
    // Before 0004, text order is not time order: the delivery due at
    // .123456789 is later, as text, than its own microsecond.
    let (due,): (i64,) = sqlx::query_as("SELECT next_attempt_at <= $1 FROM deliveries WHERE id = $2")
        .bind(instant(OLD_FORMS[3].0)?.sqlite_text())
        .bind(rows.pending)
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(due, 0);
    conn.close().await?;

    // Open the store as a deployment does, and migrate.
    let store = connect(&ConnectOptions::new(db.url.clone(), 4)).await?;
    assert!(!store.migrations_current().await?);
    store.migrate().await?;
    assert!(store.migrations_current().await?);

    let mut conn = SqliteConnection::connect_with(&options).await?;
    let (columns_after, after) = stored_times(&mut conn).await?;
    conn.close().await?;
    // Later migrations may add time columns of their own; the old ones all stay.
    assert!(columns.iter().all(|c| columns_after.contains(c)), "{columns_after:?}");
    let after: Vec<(Place, String)> = after
        .into_iter()
        .filter(|((table, column, _), _)| columns.iter().any(|(t, c)| t == table && c == column))
        .collect();

    assert_eq!(
        after.iter().map(|(place, _)| place).collect::<Vec<_>>(),
        before.iter().map(|(place, _)| place).collect::<Vec<_>>(),
        "NULLs stay NULL, times stay times"
    );
    for ((place, old), (_, new)) in before.iter().zip(&after) {
        assert!(is_fixed_width(new), "{place:?}: {new:?}");
        assert_eq!(*new, fixed_width(old)?, "{place:?} was {old:?}");
    }
    for (old, new) in OLD_FORMS {
        assert!(after.iter().any(|(_, text)| text == new), "{old} did not become {new}");
    }

    // Read back through the store: the same instants, to the microsecond.
    let [f0, f1, f2, f3] = OLD_FORMS.map(|(old, _)| old);
    let (f0, f1, f2, f3) = (instant(f0)?, instant(f1)?, instant(f2)?, instant(f3)?);
    assert_eq!(f3.as_datetime().timestamp_subsec_nanos(), 123_456_000);
    let agency = store.agency(rows.agency).await?.ok_or("agency lost")?;
    assert_eq!(agency.created_at, f0);
    let app = store.app("his-1").await?.ok_or("app lost")?;
    assert_eq!(app.created_at, f1);
    assert_eq!(
        app.secrets
            .iter()
            .map(|s| (s.sealed.as_str(), s.created_at))
            .collect::<Vec<_>>(),
        [("new", f2)]
    );
    let r = store
        .receipt(rows.agency, "11010125", "0000000001")
        .await?
        .ok_or("receipt lost")?;
    assert_eq!((r.issued_at, r.received_at), (f2, f3));
    let reversal = r.reversal.ok_or("reversal lost")?;
    assert_eq!((reversal.reversed_at, reversal.recorded_at), (f1, f0));
    assert_eq!(
        r.deliveries
            .iter()
            .map(|d| (d.id, d.next_attempt_at, d.created_at, d.updated_at, d.delivered_at))
            .collect::<Vec<_>>(),
        [(rows.pending, f3, f0, f1, None), (rows.delivered, f0, f1, f2, Some(f3))]
    );
    let attempts = store.delivery_attempts(rows.delivered).await?;
    assert_eq!(attempts.iter().map(|a| a.started_at).collect::<Vec<_>>(), [f1]);
    let stats = store.stats_since(f0).await?;
    assert_eq!(stats.iter().map(|s| s.minute).collect::<Vec<_>>(), [f0]);
    let channels = store.channels_for_agency(rows.agency).await?;
    assert_eq!(
        channels
            .iter()
            .map(|c| (c.created_at, c.updated_at))
            .collect::<Vec<_>>(),
        [(f2, f3)]
    );
    let alerts = store.list_alerts(10).await?;
    assert_eq!(
        alerts
            .iter()
            .map(|a| (a.started_at, a.last_notified_at, a.resolved_at))
            .collect::<Vec<_>>(),
        [(f1, f2, Some(f3))]
    );
    let payer = store.payer(rows.payer).await?.ok_or("payer lost")?;
    assert_eq!(
        (
            payer.consent_at,
            payer.registered_at,
            payer.created_at,
            payer.updated_at
        ),
        (Some(f0), Some(f1), f2, f3)
    );
    let credits = store.subscription_credits(rows.payer).await?;
    assert_eq!(credits.iter().map(|c| c.updated_at).collect::<Vec<_>>(), [f1]);
    let audit = store.payer_audit(rows.payer).await?;
    assert_eq!(audit.iter().map(|a| a.at).collect::<Vec<_>>(), [f2]);
    let wallet = store
        .wallet_page(&WalletQuery {
            payer_id: rows.payer,
            limit: 10,
            ..WalletQuery::default()
        })
        .await?;
    assert_eq!(
        wallet.iter().map(|w| (w.issued_at, w.added_at)).collect::<Vec<_>>(),
        [(f2, f3)]
    );

    // Now text order is time order: the delivery due at .123456789 is due at its
    // microsecond (and its old lease, to .123, has run out), not before.
    let lease = Timestamp::now() + Duration::seconds(60);
    assert!(
        store
            .claim_deliveries("w", f3 - Duration::microseconds(1), lease, 10)
            .await?
            .is_empty()
    );
    let due = store.claim_deliveries("w", f3, lease, 10).await?;
    assert_eq!(claimed_ids(&due), [rows.pending]);
    Ok(())
}
