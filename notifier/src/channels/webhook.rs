//! Signed webhooks (Standard Webhooks: issuers' status webhooks, reimbursers' claim webhooks): `webhook-id`, `webhook-timestamp`
//! and `webhook-signature: v1,<base64 HMAC-SHA256(secret, id.timestamp.body)>`,
//! one signature per active secret of the issuer app, so a rotation never breaks
//! verification. The HMAC key is the app secret's UTF-8 bytes: the app's
//! `webhookSecret`, printed at creation and rotation as `whsec_<base64 of those
//! bytes>` (`piaojia_core::signing::standard_webhook_secret`), is what Standard
//! Webhooks libraries verify with as printed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use piaojia_core::pii::Keyring;
use piaojia_store::{ChannelKind, ClaimedDelivery, Store};
use ring::hmac;
use serde_json::json;

use super::{ChannelAdapter, SendResult};

pub struct WebhookChannel {
    store: Arc<dyn Store>,
    keyring: Arc<Keyring>,
    http: reqwest::Client,
}

impl WebhookChannel {
    pub fn new(store: Arc<dyn Store>, keyring: Arc<Keyring>, timeout: Duration) -> anyhow::Result<Self> {
        // Direct: never through a proxy named by the environment.
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { store, keyring, http })
    }
}

/// The app whose secrets sign the webhook: the issuer's for its status webhook,
/// the reimburser's for a claim.
fn signer(job: &ClaimedDelivery) -> &str {
    let reimburser = job
        .delivery
        .payload
        .as_ref()
        .and_then(|p| p.get("reimburser"))
        .and_then(|a| a.as_str());
    match reimburser {
        Some(app) if job.delivery.channel == ChannelKind::ReimburserClaim => app,
        _ => &job.receipt.issuer_app_id,
    }
}

/// `v1,<sig>` for each secret, space-separated.
pub fn signature_header(secrets: &[String], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| {
            let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
            let mut ctx = hmac::Context::with_key(&key);
            ctx.update(format!("{id}.{timestamp}.").as_bytes());
            ctx.update(body);
            format!("v1,{}", B64.encode(ctx.sign().as_ref()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[async_trait]
impl ChannelAdapter for WebhookChannel {
    async fn channel_key(&self, job: &ClaimedDelivery) -> String {
        format!("{}:{}", job.delivery.channel, signer(job))
    }

    async fn send(&self, job: &ClaimedDelivery) -> SendResult {
        let app = match self.store.app(signer(job)).await {
            Ok(Some(app)) => app,
            Ok(None) => {
                return SendResult::Permanent {
                    code: None,
                    error: "the app the webhook is signed for no longer exists".into(),
                };
            }
            Err(e) => {
                // Our own database, not the webhook's fault.
                return SendResult::Retryable {
                    code: None,
                    error: format!("loading the issuer app: {e}"),
                    retry_after: None,
                    interface_failure: false,
                };
            }
        };
        let purpose = piaojia_core::pii::purpose::app_secret(&app.app_id);
        let secrets: Vec<String> = app
            .secrets
            .iter()
            .filter_map(|s| self.keyring.open(&s.sealed, &purpose).ok())
            .filter_map(|b| String::from_utf8(b).ok())
            .collect();
        let d = &job.delivery;
        let r = &job.receipt;
        let mut data = if d.channel == ChannelKind::ReimburserClaim {
            // A claim's webhook names the claim; its receipts are read with the claim.
            json!({})
        } else {
            json!({
                "receiptId": r.id,
                "billBatchCode": r.bill_batch_code,
                "billNo": r.bill_no,
                "event": d.event.as_str(),
            })
        };
        if let (Some(obj), Some(serde_json::Value::Object(extra))) = (data.as_object_mut(), d.payload.as_ref()) {
            for (k, v) in extra {
                obj.insert(k.clone(), v.clone());
            }
        }
        let kind = d
            .payload
            .as_ref()
            .and_then(|p| p.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or("receipt.status")
            .to_owned();
        let body = serde_json::to_vec(&json!({
            "type": kind,
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "data": data,
        }))
        .expect("webhook body serializes");
        let id = format!("msg_{}", d.id.simple());
        let ts = chrono::Utc::now().timestamp();
        let resp = self
            .http
            .post(&d.target)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature_header(&secrets, &id, ts, &body))
            .body(body)
            .send()
            .await;
        match resp {
            Ok(resp) if resp.status().is_success() => SendResult::Delivered { provider_ref: None },
            Ok(resp) => {
                let status = resp.status().as_u16();
                let error = format!("the webhook answered HTTP {status}");
                match status {
                    429 => SendResult::Retryable {
                        code: Some(i64::from(status)),
                        error,
                        retry_after: retry_after(&resp),
                        interface_failure: false,
                    },
                    408 | 500..=599 => SendResult::Retryable {
                        code: Some(i64::from(status)),
                        error,
                        retry_after: retry_after(&resp),
                        interface_failure: true,
                    },
                    _ => SendResult::Permanent {
                        code: Some(i64::from(status)),
                        error,
                    },
                }
            }
            Err(e) => SendResult::Retryable {
                code: None,
                error: if e.is_timeout() {
                    "the webhook timed out".to_owned()
                } else {
                    format!("the webhook could not be reached: {}", e.without_url())
                },
                retry_after: None,
                interface_failure: true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_signature() {
        // Recomputed with Python: base64(hmac.new(b"s3cret", b"msg_1.1700000000.{}", sha256).digest())
        let one = signature_header(&["s3cret".into()], "msg_1", 1_700_000_000, b"{}");
        assert_eq!(one, "v1,uNtIplUOMTIs6G1RRPpb6NsRUZZLxUiBZsZiXV3ycuM=");
        let two = signature_header(&["s3cret".into(), "other".into()], "msg_1", 1_700_000_000, b"{}");
        let parts: Vec<&str> = two.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], one);
    }
}
