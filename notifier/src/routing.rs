//! Which deliveries a receipt event calls for, and what follows an outcome.

use piaojia_store::{Channel, DeliveryEvent, DeliveryStatus, NewDelivery};
use serde_json::json;
use uuid::Uuid;

pub const ISSUER_WEBHOOK: &str = "issuer_webhook";
pub const WECHAT_TEMPLATE: &str = "wechat_template";
pub const WECHAT_SUBSCRIBE: &str = "wechat_subscribe";
/// The platform's shared wallet mini-program (a channel of no agency).
pub const WALLET_SUBSCRIBE: &str = "wallet_subscribe";

/// Payer channels in order of preference: the hospital's own official account
/// (where a WeChat payment usually happens), then the mini-program.
const PAYER_CHANNELS: [&str; 2] = [WECHAT_TEMPLATE, WECHAT_SUBSCRIBE];

pub fn wechat_interface(wechat_app_id: &str, kind: &str) -> String {
    let api = if kind == WECHAT_TEMPLATE {
        "template_send"
    } else {
        "subscribe_send"
    };
    format!("wechat:{wechat_app_id}:{api}")
}

/// Webhooks are tracked and broken per target host.
pub fn webhook_interface(url: &str) -> String {
    let host = url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    format!("webhook:{host}")
}

pub struct EventContext<'a> {
    pub event: DeliveryEvent,
    pub open_id: Option<&'a str>,
    pub callback_url: Option<&'a str>,
    pub channels: &'a [Channel],
}

fn payer_delivery(event: DeliveryEvent, channel: &Channel, open_id: &str, tried: &[&str]) -> NewDelivery {
    NewDelivery {
        id: Uuid::now_v7(),
        event,
        channel: channel.kind.clone(),
        target: open_id.to_owned(),
        interface: wechat_interface(&channel.wechat_app_id, &channel.kind),
        payload: Some(json!({ "tried": tried })),
    }
}

fn issuer_webhook(event: DeliveryEvent, url: &str, payload: serde_json::Value) -> NewDelivery {
    NewDelivery {
        id: Uuid::now_v7(),
        event,
        channel: ISSUER_WEBHOOK.to_owned(),
        target: url.to_owned(),
        interface: webhook_interface(url),
        payload: Some(payload),
    }
}

/// The first deliveries of an event: the payer's WeChat channel when the receipt
/// carries an openid and the agency has one; otherwise the issuer's status
/// callback says the receipt is held without a push.
pub fn plan(ctx: &EventContext<'_>) -> Vec<NewDelivery> {
    let payer = ctx.open_id.and_then(|open_id| {
        PAYER_CHANNELS
            .iter()
            .find_map(|kind| ctx.channels.iter().find(|c| c.enabled && c.kind == *kind))
            .map(|c| payer_delivery(ctx.event, c, open_id, &[c.kind.as_str()]))
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

/// What follows a payer delivery's final outcome: a fallback to another payer
/// channel not yet tried when it failed, and the issuer's status webhook.
pub fn follow_ups(
    event: DeliveryEvent,
    finished: &piaojia_store::Delivery,
    status: DeliveryStatus,
    error: Option<&str>,
    callback_url: Option<&str>,
    channels: &[Channel],
) -> Vec<NewDelivery> {
    if finished.channel == ISSUER_WEBHOOK {
        return Vec::new();
    }
    let mut out = Vec::new();
    let tried: Vec<String> = finished
        .payload
        .as_ref()
        .and_then(|p| p.get("tried"))
        .and_then(|t| serde_json::from_value(t.clone()).ok())
        .unwrap_or_else(|| vec![finished.channel.clone()]);
    if status == DeliveryStatus::Failed
        && let Some(next) = PAYER_CHANNELS
            .iter()
            .filter(|k| !tried.iter().any(|t| t == *k))
            .find_map(|kind| channels.iter().find(|c| c.enabled && c.kind == *kind))
    {
        let mut all: Vec<&str> = tried.iter().map(String::as_str).collect();
        all.push(next.kind.as_str());
        out.push(payer_delivery(event, next, &finished.target, &all));
    }
    if let Some(url) = callback_url {
        out.push(issuer_webhook(
            event,
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
