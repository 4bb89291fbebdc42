//! Builders and small helpers the chapters share.

use chrono::{Duration, TimeZone, Utc};
use piaojia_core::receipt::PayerType;
use piaojia_store::wallets::{IdentityVerification, NewRefreshToken, Registration};
use piaojia_store::{
    AttemptOutcome, AttemptRecord, ChannelKind, ClaimedDelivery, Completion, Delivery, DeliveryEvent, DeliveryUpdate,
    FileMeta, InsertOutcome, NewAgency, NewApp, NewAppSecret, NewDelivery, NewReceiptRecord, Reversal, Store,
    StoredReceipt, Timestamp,
};
use uuid::Uuid;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type TestResult = Result<(), Error>;

// ----- tenants ---------------------------------------------------------------------

pub fn agency(code: &str) -> NewAgency {
    NewAgency {
        code: code.to_owned(),
        name: format!("医院 {code}"),
        file_hosts: vec!["files.example.org".to_owned()],
    }
}

pub fn secret(sealed: &str) -> NewAppSecret {
    NewAppSecret {
        id: Uuid::now_v7(),
        sealed: sealed.to_owned(),
    }
}

pub fn app(app_id: &str, agency_id: Uuid) -> NewApp {
    NewApp {
        app_id: app_id.to_owned(),
        agency_id,
        kind: piaojia_store::AppKind::Issuer,
        name: format!("HIS {app_id}"),
        callback_url: Some("https://his.example.org/callback".to_owned()),
        secret: secret("sealed-1"),
    }
}

/// Sets up one agency; returns its id.
pub async fn one_agency(store: &dyn Store, code: &str) -> Result<Uuid, Error> {
    Ok(store.create_agency(agency(code)).await?.id)
}

// ----- receipts --------------------------------------------------------------------

/// A whole second, `secs` after a fixed instant.
pub fn at(secs: i64) -> Timestamp {
    Utc.timestamp_opt(1_750_000_000 + secs, 0)
        .single()
        .unwrap_or_default()
        .into()
}

pub fn receipt(agency_id: Uuid, bill_no: &str, content_hash: &str) -> NewReceiptRecord {
    NewReceiptRecord {
        id: Uuid::now_v7(),
        agency_id,
        issuer_app_id: "his-1".to_owned(),
        bill_batch_code: "11010125".to_owned(),
        bill_no: bill_no.to_owned(),
        random: "a1b2c3".to_owned(),
        bus_no: format!("MZ{bill_no}"),
        bus_type: "02".to_owned(),
        payer_type: PayerType::Person,
        // Nanoseconds on purpose: times keep microseconds on both backends.
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
        openid_wallet: None,
        wechat_order_no: None,
    }
}

/// A delivery through `channel`, on the interface `<channel>:test`.
pub fn delivery(event: DeliveryEvent, channel: ChannelKind) -> NewDelivery {
    NewDelivery {
        id: Uuid::now_v7(),
        event,
        channel,
        target: format!("{channel}-target"),
        interface: format!("{channel}:test"),
        payload: None,
    }
}

pub fn issued_deliveries() -> Vec<NewDelivery> {
    vec![
        delivery(DeliveryEvent::Issued, ChannelKind::IssuerWebhook),
        delivery(DeliveryEvent::Issued, ChannelKind::WechatTemplate),
    ]
}

pub fn reversal(reason: &str) -> Reversal {
    Reversal {
        red_bill_batch_code: "11010125".to_owned(),
        red_bill_no: "9000000001".to_owned(),
        red_random: "ffee01".to_owned(),
        reversed_at: at(3600) + Duration::nanoseconds(999),
        reason: reason.to_owned(),
        recorded_at: Timestamp::now(),
    }
}

pub fn created(outcome: InsertOutcome) -> Result<StoredReceipt, Error> {
    match outcome {
        InsertOutcome::Created { receipt: r, .. } => Ok(r),
        other => Err(format!("expected Created, got {other:?}").into()),
    }
}

// ----- the delivery queue ----------------------------------------------------------

/// One receipt per delivery, created in order, so `created_at` follows `prefix`+index.
pub async fn seed(
    store: &dyn Store,
    agency_id: Uuid,
    prefix: &str,
    channels: &[ChannelKind],
) -> Result<Vec<Uuid>, Error> {
    let mut ids = Vec::new();
    for (i, channel) in channels.iter().enumerate() {
        let no = format!("{prefix}{i:06}");
        let stored = created(
            store
                .insert_receipt(
                    receipt(agency_id, &no, &format!("hash-{no}")),
                    vec![delivery(DeliveryEvent::Issued, *channel)],
                )
                .await?,
        )?;
        ids.push(stored.deliveries[0].id);
    }
    Ok(ids)
}

pub fn attempt(outcome: AttemptOutcome, code: Option<i64>) -> AttemptRecord {
    AttemptRecord {
        id: Uuid::now_v7(),
        started_at: Timestamp::now(),
        latency_ms: 42,
        outcome,
        code,
        detail: Some(format!("{outcome:?}")),
    }
}

pub fn claimed_ids(batch: &[ClaimedDelivery]) -> Vec<Uuid> {
    batch.iter().map(|c| c.delivery.id).collect()
}

pub async fn must_delivery(store: &dyn Store, id: Uuid) -> Result<Delivery, Error> {
    Ok(store.delivery(id).await?.ok_or("delivery missing")?)
}

/// Completes one attempt of a leased delivery; whether `owner` still held it.
pub async fn complete(
    store: &dyn Store,
    delivery_id: Uuid,
    owner: &str,
    attempt: AttemptRecord,
    update: DeliveryUpdate,
    follow_ups: Vec<NewDelivery>,
) -> Result<bool, Error> {
    let done = store
        .complete_attempts(
            owner,
            &[Completion {
                delivery_id,
                attempt,
                update,
                follow_ups,
            }],
        )
        .await?;
    match done[..] {
        [held] => Ok(held),
        _ => Err(format!("one completion, {} results", done.len()).into()),
    }
}

/// Claims everything due and completes each claimed delivery with `update(index in ids)`.
pub async fn settle(store: &dyn Store, ids: &[Uuid], update: impl Fn(usize) -> DeliveryUpdate) -> TestResult {
    let now = Timestamp::now() + Duration::seconds(1);
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
        let done = complete(
            store,
            c.delivery.id,
            "settler",
            attempt(outcome, None),
            update(i),
            vec![],
        )
        .await?;
        assert!(done, "settler lost its lease");
    }
    Ok(())
}

// ----- the wallet ------------------------------------------------------------------

/// A registration whose name and ID number WeChat's real-name check verified.
pub fn registration(id_index: &str, name_index: &str, phone: Option<(&str, bool)>) -> Registration {
    Registration {
        profile_sealed: "v1:sealed-profile".to_owned(),
        id_index: id_index.to_owned(),
        name_index: name_index.to_owned(),
        phone_index: phone.map(|(p, _)| p.to_owned()),
        phone_verified: phone.is_some_and(|(_, v)| v),
        verified_via: Some(IdentityVerification::WechatRealname),
        consent_version: "2026-11".to_owned(),
        consent_at: at(5),
    }
}

pub fn person_receipt(agency_id: Uuid, bill_no: &str, id_index: &str, name_index: &str) -> NewReceiptRecord {
    NewReceiptRecord {
        payer_id_index: Some(id_index.to_owned()),
        payer_name_index: Some(name_index.to_owned()),
        payer_phone_index: None,
        ..receipt(agency_id, bill_no, &format!("hash-{bill_no}"))
    }
}

pub fn refresh(payer_id: Uuid, family_id: Uuid, hash: &str) -> NewRefreshToken {
    NewRefreshToken {
        id: Uuid::now_v7(),
        family_id,
        payer_id,
        app_id: "wx-wallet".to_owned(),
        token_hash: hash.to_owned(),
        expires_at: Timestamp::now() + Duration::days(30),
    }
}
