//! Which deliveries a receipt event calls for, and what follows a final outcome.
//! Pure functions over the agency's channels.

use piaojia_store::{Channel, ChannelKind, Delivery, DeliveryEvent, DeliveryStatus, NewDelivery};
use serde_json::json;
use uuid::Uuid;

pub use piaojia_core::delivery::{card_interface, webhook_interface, wechat_interface};

/// A card-package delivery of `kind` for the card of `wechat_app_id`.
pub fn card_delivery(
    event: DeliveryEvent,
    kind: ChannelKind,
    wechat_app_id: &str,
    open_id: &str,
    payload: serde_json::Value,
) -> NewDelivery {
    NewDelivery {
        id: Uuid::now_v7(),
        event,
        channel: kind,
        target: open_id.to_owned(),
        interface: card_interface(wechat_app_id, kind),
        payload: Some(payload),
    }
}

/// What follows a delivered card-package call: the PDF uploaded, the card is
/// inserted with its `s_media_id`.
pub fn card_follow_up(finished: &Delivery, provider_ref: Option<&str>) -> Option<NewDelivery> {
    if finished.channel != ChannelKind::CardPdf {
        return None;
    }
    let media_id = provider_ref?;
    let appid = finished.interface.split(':').nth(1).unwrap_or_default();
    Some(card_delivery(
        finished.event,
        ChannelKind::CardInsert,
        appid,
        &finished.target,
        json!({ crate::channels::card::MEDIA_ID: media_id }),
    ))
}

pub struct EventContext<'a> {
    pub event: DeliveryEvent,
    pub open_id: Option<&'a str>,
    /// The WeChat app whose user `open_id` is, when known (a reported payment's):
    /// only its channel can reach that openid. `None`: the agency's preferred one.
    pub open_id_app: Option<&'a str>,
    pub callback_url: Option<&'a str>,
    pub channels: &'a [Channel],
}

pub fn payer_delivery(event: DeliveryEvent, channel: &Channel, open_id: &str, tried: &[ChannelKind]) -> NewDelivery {
    NewDelivery {
        id: Uuid::now_v7(),
        event,
        channel: channel.kind,
        target: open_id.to_owned(),
        interface: wechat_interface(&channel.wechat_app_id, channel.kind),
        payload: Some(json!({ "tried": tried })),
    }
}

fn issuer_webhook(event: DeliveryEvent, url: &str, payload: serde_json::Value) -> NewDelivery {
    NewDelivery {
        id: Uuid::now_v7(),
        event,
        channel: ChannelKind::IssuerWebhook,
        target: url.to_owned(),
        interface: webhook_interface(url),
        payload: Some(payload),
    }
}

/// The enabled payer channel of this kind, if the agency has one.
fn enabled(channels: &[Channel], kind: ChannelKind) -> Option<&Channel> {
    channels.iter().find(|c| c.enabled && c.kind == kind)
}

/// The agency's channel a receipt's openid is announced on (and whose user the
/// openid is taken to be): the first enabled one in order of preference.
pub fn payer_channel(channels: &[Channel]) -> Option<&Channel> {
    ChannelKind::PAYER_PREFERENCE
        .iter()
        .find_map(|kind| enabled(channels, *kind))
}

/// The channel an openid of `app` (or, unknown, of the agency's preferred
/// channel) is announced on: the enabled payer channel of that app.
pub fn payer_channel_of<'a>(channels: &'a [Channel], app: Option<&str>) -> Option<&'a Channel> {
    match app {
        None => payer_channel(channels),
        Some(app) => channels
            .iter()
            .find(|c| c.enabled && c.wechat_app_id == app && ChannelKind::PAYER_PREFERENCE.contains(&c.kind)),
    }
}

/// The first deliveries of an event: the payer's WeChat channel when the receipt
/// carries an openid and the agency has one; otherwise the issuer's status
/// callback says the receipt is held without a push.
pub fn plan(ctx: &EventContext<'_>) -> Vec<NewDelivery> {
    let payer = ctx.open_id.and_then(|open_id| {
        payer_channel_of(ctx.channels, ctx.open_id_app).map(|c| payer_delivery(ctx.event, c, open_id, &[c.kind]))
    });
    match (payer, ctx.callback_url) {
        (Some(d), _) => vec![d],
        (None, Some(url)) => vec![issuer_webhook(
            ctx.event,
            url,
            json!({ "type": format!("receipt.{}", ctx.event.as_str()), "deliveries": [] }),
        )],
        (None, None) => Vec::new(),
    }
}

/// The payer channels a delivery has tried, itself included.
fn tried(finished: &Delivery) -> Vec<ChannelKind> {
    finished
        .payload
        .as_ref()
        .and_then(|p| p.get("tried"))
        .and_then(|t| serde_json::from_value(t.clone()).ok())
        .unwrap_or_else(|| vec![finished.channel])
}

/// The payer channel to try when `finished` cannot reach the payer: the next of
/// the agency's enabled ones not tried yet. The issuer's webhook has none.
pub fn fallback<'a>(finished: &Delivery, channels: &'a [Channel]) -> Option<&'a Channel> {
    if !finished.channel.is_wechat() {
        return None;
    }
    let tried = tried(finished);
    ChannelKind::PAYER_PREFERENCE
        .iter()
        .filter(|k| !tried.contains(k))
        .find_map(|kind| enabled(channels, *kind))
}

/// A payer's message about their own claim: the issuer hears nothing of it.
fn is_claim_message(d: &Delivery) -> bool {
    d.payload.as_ref().and_then(|p| p.get("claimId")).is_some()
}

/// What follows a payer delivery's final outcome: the delivery on the fallback
/// channel when there is one, and the issuer's status webhook.
pub fn follow_ups(
    finished: &Delivery,
    status: DeliveryStatus,
    error: Option<&str>,
    callback_url: Option<&str>,
    fallback: Option<&Channel>,
) -> Vec<NewDelivery> {
    if finished.channel == ChannelKind::IssuerWebhook
        || finished.channel == ChannelKind::ReimburserClaim
        || finished.channel.is_card()
        || is_claim_message(finished)
    {
        return Vec::new();
    }
    let mut out = Vec::new();
    if let Some(next) = fallback {
        let mut all = tried(finished);
        all.push(next.kind);
        out.push(payer_delivery(finished.event, next, &finished.target, &all));
    }
    if let Some(url) = callback_url {
        out.push(issuer_webhook(
            finished.event,
            url,
            json!({
                "type": "delivery.outcome",
                "deliveryId": finished.id,
                "channel": finished.channel,
                "status": status.as_str(),
                "error": error,
            }),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use piaojia_store::Timestamp;

    use super::*;

    fn channel(kind: ChannelKind, enabled: bool) -> Channel {
        Channel {
            id: Uuid::now_v7(),
            agency_id: Some(Uuid::nil()),
            kind,
            wechat_app_id: format!("wx-{}", kind.as_str()),
            secret_sealed: String::new(),
            template_id: "t".into(),
            fields: json!({}),
            page: None,
            message_token_sealed: None,
            encoding_aes_key_sealed: None,
            enabled,
            long_term: false,
            created_at: Timestamp::now(),
            updated_at: Timestamp::now(),
        }
    }

    fn delivered_on(kind: ChannelKind, payload: Option<serde_json::Value>) -> Delivery {
        Delivery {
            id: Uuid::now_v7(),
            receipt_id: Uuid::now_v7(),
            agency_id: Uuid::nil(),
            event: DeliveryEvent::Issued,
            channel: kind,
            target: "o-payer".into(),
            interface: "wechat:wx:template_send".into(),
            payload,
            status: DeliveryStatus::Pending,
            attempts: 0,
            next_attempt_at: Timestamp::now(),
            last_error: None,
            park_reason: None,
            provider_ref: None,
            created_at: Timestamp::now(),
            updated_at: Timestamp::now(),
            delivered_at: None,
        }
    }

    fn ctx<'a>(open_id: Option<&'a str>, callback: Option<&'a str>, channels: &'a [Channel]) -> EventContext<'a> {
        EventContext {
            event: DeliveryEvent::Issued,
            open_id,
            open_id_app: None,
            callback_url: callback,
            channels,
        }
    }

    #[test]
    fn an_openid_goes_to_the_official_account_first() {
        let channels = [
            channel(ChannelKind::WechatSubscribe, true),
            channel(ChannelKind::WechatTemplate, true),
        ];
        let planned = plan(&ctx(Some("o1"), Some("https://his.example/cb"), &channels));
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].channel, ChannelKind::WechatTemplate);
        assert_eq!(planned[0].target, "o1");
        assert_eq!(planned[0].interface, "wechat:wx-wechat_template:template_send");
        assert_eq!(planned[0].payload, Some(json!({ "tried": ["wechat_template"] })));
    }

    #[test]
    fn a_payments_openid_goes_to_the_app_it_was_paid_in() {
        let channels = [
            channel(ChannelKind::WechatTemplate, true),
            channel(ChannelKind::WechatSubscribe, true),
        ];
        let paid_in_mini = EventContext {
            open_id_app: Some("wx-wechat_subscribe"),
            ..ctx(Some("o1"), None, &channels)
        };
        let planned = plan(&paid_in_mini);
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].channel, ChannelKind::WechatSubscribe);
        assert_eq!(planned[0].interface, "wechat:wx-wechat_subscribe:subscribe_send");
        let elsewhere = EventContext {
            open_id_app: Some("wx-not-ours"),
            ..ctx(Some("o1"), Some("https://his.example/cb"), &channels)
        };
        let planned = plan(&elsewhere);
        assert_eq!(
            planned[0].channel,
            ChannelKind::IssuerWebhook,
            "no channel reaches that openid"
        );
    }

    #[test]
    fn a_disabled_channel_is_passed_over() {
        let channels = [
            channel(ChannelKind::WechatTemplate, false),
            channel(ChannelKind::WechatSubscribe, true),
        ];
        let planned = plan(&ctx(Some("o1"), None, &channels));
        assert_eq!(planned[0].channel, ChannelKind::WechatSubscribe);
        assert_eq!(planned[0].interface, "wechat:wx-wechat_subscribe:subscribe_send");
    }

    #[test]
    fn without_a_payer_channel_the_issuer_is_told() {
        let planned = plan(&ctx(None, Some("https://his.example/cb"), &[]));
        assert_eq!(planned.len(), 1);
        assert_eq!(planned[0].channel, ChannelKind::IssuerWebhook);
        assert_eq!(planned[0].interface, "webhook:his.example");
        assert_eq!(
            planned[0].payload.as_ref().expect("test value")["type"],
            "receipt.issued"
        );
        assert!(
            plan(&ctx(None, None, &[])).is_empty(),
            "no channel, no callback: nothing"
        );
    }

    #[test]
    fn fallback_takes_the_next_channel_not_tried() {
        let channels = [
            channel(ChannelKind::WechatTemplate, true),
            channel(ChannelKind::WechatSubscribe, true),
        ];
        let first = delivered_on(
            ChannelKind::WechatTemplate,
            Some(json!({ "tried": ["wechat_template"] })),
        );
        assert_eq!(
            fallback(&first, &channels).map(|c| c.kind),
            Some(ChannelKind::WechatSubscribe)
        );
        let second = delivered_on(
            ChannelKind::WechatSubscribe,
            Some(json!({ "tried": ["wechat_template", "wechat_subscribe"] })),
        );
        assert!(fallback(&second, &channels).is_none(), "both tried");
        let wallet = delivered_on(
            ChannelKind::WalletSubscribe,
            Some(json!({ "tried": ["issuer_webhook", "wechat_template", "wechat_subscribe", "wallet_subscribe"] })),
        );
        assert!(
            fallback(&wallet, &channels).is_none(),
            "a wallet message has no fallback"
        );
        let webhook = delivered_on(ChannelKind::IssuerWebhook, None);
        assert!(fallback(&webhook, &channels).is_none());
    }

    #[test]
    fn follow_ups_carry_the_fallback_and_the_status_webhook() {
        let channels = [channel(ChannelKind::WechatSubscribe, true)];
        let first = delivered_on(
            ChannelKind::WechatTemplate,
            Some(json!({ "tried": ["wechat_template"] })),
        );
        let next = follow_ups(
            &first,
            DeliveryStatus::Failed,
            Some("43101"),
            Some("https://his.example/cb"),
            channels.first(),
        );
        assert_eq!(next.len(), 2);
        assert_eq!(next[0].channel, ChannelKind::WechatSubscribe);
        assert_eq!(next[0].target, "o-payer");
        assert_eq!(
            next[0].payload,
            Some(json!({ "tried": ["wechat_template", "wechat_subscribe"] }))
        );
        assert_eq!(next[1].channel, ChannelKind::IssuerWebhook);
        let body = next[1].payload.as_ref().expect("test value");
        assert_eq!(body["type"], "delivery.outcome");
        assert_eq!(body["status"], "failed");
        assert_eq!(body["channel"], "wechat_template");
        assert_eq!(body["error"], "43101");
    }

    #[test]
    fn a_webhooks_outcome_is_followed_by_nothing() {
        let webhook = delivered_on(ChannelKind::IssuerWebhook, None);
        assert!(
            follow_ups(
                &webhook,
                DeliveryStatus::Parked,
                None,
                Some("https://his.example/cb"),
                None
            )
            .is_empty()
        );
    }
}
