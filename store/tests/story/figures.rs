//! Figures: the backlog, per-minute tracking figures, alerts.

use chrono::Duration;
use piaojia_store::{Alert, AlertState, ChannelKind, DeliveryUpdate, StatsRow, Timestamp};
use uuid::Uuid;

use crate::Fixture;
use crate::support::{Error, TestResult, at, must_delivery, one_agency, seed, settle};

chapters!(backlog_by_channel_and_interface, tracking_stats, alerts);

async fn backlog_by_channel_and_interface(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    assert!(store.backlog().await?.is_empty());
    let a = one_agency(&*store, "A001").await?;
    let t = ChannelKind::WechatTemplate;
    let w = ChannelKind::IssuerWebhook;
    let d = seed(&*store, a, "B", &[t, w, t, w, t]).await?;
    settle(&*store, &d, |i| match i {
        0 => DeliveryUpdate::Delivered { provider_ref: None },
        _ => DeliveryUpdate::Retry {
            at: Timestamp::now(),
            error: "busy".to_owned(),
        },
    })
    .await?;
    let created = async |id: Uuid| -> Result<Timestamp, Error> { Ok(must_delivery(&*store, id).await?.created_at) };

    let rows = store.backlog().await?;
    let summary: Vec<_> = rows
        .iter()
        .map(|r| (r.channel, r.interface.as_str(), r.pending, r.oldest_created_at))
        .collect();
    assert_eq!(
        summary,
        [
            (w, "issuer_webhook:test", 2, Some(created(d[1]).await?)),
            (t, "wechat_template:test", 2, Some(created(d[2]).await?)),
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

async fn alerts(fx: &Fixture) -> TestResult {
    let store = fx.migrated().await?;
    let firing = |rule: &str, key: &str, started: Timestamp| Alert {
        id: Uuid::now_v7(),
        rule: rule.to_owned(),
        key: key.to_owned(),
        state: AlertState::Firing,
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
    assert!(matches!(
        store.save_alert(&twin).await,
        Err(piaojia_store::StoreError::Conflict(_))
    ));
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
    first.state = AlertState::Resolved;
    first.resolved_at = Some(at(200));
    store.save_alert(&first).await?;
    assert!(store.firing_alert("breaker_open", "wechat:wx1").await?.is_none());
    // A new incident may open now.
    let reopened = firing("breaker_open", "wechat:wx1", at(300));
    store.save_alert(&reopened).await?;

    let listed = store.list_alerts(10).await?;
    assert_eq!(
        listed.iter().map(|x| x.started_at).collect::<Vec<_>>(),
        [at(300), at(30), at(20), first.started_at]
    );
    let resolved = listed.last().ok_or("no alerts")?;
    assert_eq!(resolved.state, AlertState::Resolved);
    assert_eq!(resolved.resolved_at, Some(at(200)));
    assert_eq!(store.list_alerts(2).await?.len(), 2);
    Ok(())
}
