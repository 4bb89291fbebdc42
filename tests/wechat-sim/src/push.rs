//! Pushing events to an app's message server the way WeChat does: signed query, plain or
//! secure-mode XML, a 5 s wait per attempt and up to three attempts.

use std::time::{Duration, Instant};

use crate::Simulator;
use crate::config::{MessageServer, SimApp};
use crate::ids;
use crate::record::{PushAttempt, PushedEvent};
use crate::reply::{self, Answer};
use crate::secure;
use crate::state::push_bounded;

pub(crate) struct PushJob {
    pub appid: String,
    pub original_id: String,
    pub server: MessageServer,
    pub openid: Option<String>,
    pub event: String,
    pub xml: String,
    pub delay: Option<Duration>,
}

impl PushJob {
    pub fn new(
        app: &SimApp,
        server: &MessageServer,
        openid: Option<&str>,
        event: &str,
        xml: String,
        delay: Option<Duration>,
    ) -> Self {
        Self {
            appid: app.appid.clone(),
            original_id: app.original_id.clone(),
            server: server.clone(),
            openid: openid.map(str::to_owned),
            event: event.to_owned(),
            xml,
            delay,
        }
    }
}

pub(crate) fn cdata(s: &str) -> String {
    format!("<![CDATA[{}]]>", s.replace("]]>", "]]]]><![CDATA[>"))
}

fn event_head(to: &str, from: &str, create_time: i64, event: &str) -> String {
    format!(
        "<xml><ToUserName>{}</ToUserName><FromUserName>{}</FromUserName><CreateTime>{create_time}</CreateTime>\
         <MsgType><![CDATA[event]]></MsgType><Event>{}</Event>",
        cdata(to),
        cdata(from),
        cdata(event)
    )
}

pub(crate) fn template_finish_xml(to: &str, openid: &str, create_time: i64, msgid: u64, status: &str) -> String {
    format!(
        "{}<MsgID>{msgid}</MsgID><Status>{}</Status></xml>",
        event_head(to, openid, create_time, "TEMPLATESENDJOBFINISH"),
        cdata(status)
    )
}

/// `subscribe` with `qrscene_<scene>` for a new follower, `SCAN` with `<scene>` otherwise.
pub(crate) fn scan_xml(
    to: &str,
    openid: &str,
    create_time: i64,
    new_follower: bool,
    scene: &str,
    ticket: &str,
) -> String {
    let (event, key) = if new_follower {
        ("subscribe", format!("qrscene_{scene}"))
    } else {
        ("SCAN", scene.to_owned())
    };
    format!(
        "{}<EventKey>{}</EventKey><Ticket>{}</Ticket></xml>",
        event_head(to, openid, create_time, event),
        cdata(&key),
        cdata(ticket)
    )
}

/// `subscribe` without a scene, `unsubscribe`, or `CLICK` with its key.
pub(crate) fn user_event_xml(to: &str, openid: &str, create_time: i64, event: &str, key: Option<&str>) -> String {
    let key = key
        .map(|k| format!("<EventKey>{}</EventKey>", cdata(k)))
        .unwrap_or_default();
    format!("{}{key}</xml>", event_head(to, openid, create_time, event))
}

/// `user_authorize_invoice`: the payer agreed to take an order's receipt.
pub(crate) fn authorize_invoice_xml(
    to: &str,
    openid: &str,
    create_time: i64,
    succ_order_id: &str,
    fail_order_id: &str,
    authorize_appid: &str,
    source: &str,
) -> String {
    format!(
        "{}<SuccOrderId>{}</SuccOrderId><FailOrderId>{}</FailOrderId><AuthorizeAppId>{}</AuthorizeAppId>\
         <Source>{}</Source></xml>",
        event_head(to, openid, create_time, "user_authorize_invoice"),
        cdata(succ_order_id),
        cdata(fail_order_id),
        cdata(authorize_appid),
        cdata(source)
    )
}

/// `update_invoice_status`: a reimburser changed a card.
pub(crate) fn invoice_status_xml(
    to: &str,
    openid: &str,
    create_time: i64,
    status: &str,
    card_id: &str,
    code: &str,
) -> String {
    format!(
        "{}<Status>{}</Status><CardId>{}</CardId><Code>{}</Code></xml>",
        event_head(to, openid, create_time, "update_invoice_status"),
        cdata(status),
        cdata(card_id),
        cdata(code)
    )
}

/// The `Event` of an event XML, for records.
pub(crate) fn event_name(xml: &str) -> String {
    let Some(start) = xml.find("<Event>") else {
        return String::new();
    };
    let rest = &xml[start + "<Event>".len()..];
    let inner = rest.split("</Event>").next().unwrap_or_default();
    inner
        .trim()
        .trim_start_matches("<![CDATA[")
        .trim_end_matches("]]>")
        .to_owned()
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Simulator {
    pub(crate) async fn deliver(&self, job: PushJob) -> PushedEvent {
        if let Some(d) = job.delay {
            tokio::time::sleep(d).await;
        }
        let (timeout, attempts) = self.with_state(|st| (st.cfg.push_timeout, st.cfg.push_attempts.max(1)));
        let at = self.now();
        let token = &job.server.token;
        let timestamp = at.timestamp().to_string();
        let nonce = ids::nonce();
        let mut query = vec![
            ("signature", secure::signature(token, &timestamp, &nonce)),
            ("timestamp", timestamp.clone()),
            ("nonce", nonce.clone()),
        ];
        if let Some(o) = &job.openid {
            query.push(("openid", o.clone()));
        }
        let mut event = PushedEvent {
            at,
            appid: job.appid.clone(),
            event: job.event.clone(),
            xml: job.xml.clone(),
            secure: job.server.encoding_aes_key.is_some(),
            url: job.server.url.clone(),
            attempts: Vec::new(),
            delivered: false,
            acknowledged: false,
            openid: job.openid.clone(),
            reply: None,
        };
        let body = match &job.server.encoding_aes_key {
            None => Some(job.xml.clone()),
            Some(key) => secure::seal(key, &job.appid, &job.xml).map(|enc| {
                query.push(("encrypt_type", "aes".to_owned()));
                query.push(("msg_signature", secure::msg_signature(token, &timestamp, &nonce, &enc)));
                format!(
                    "<xml><ToUserName>{}</ToUserName><Encrypt>{}</Encrypt></xml>",
                    cdata(&job.original_id),
                    cdata(&enc)
                )
            }),
        };
        let url = url::Url::parse_with_params(&job.server.url, &query);
        match (body, url) {
            (Some(body), Ok(url)) => {
                event.url = url.to_string();
                for _ in 0..attempts {
                    let started = Instant::now();
                    let at = self.now();
                    let sent = self
                        .inner
                        .http
                        .post(url.clone())
                        .header("content-type", "text/xml")
                        .body(body.clone())
                        .timeout(timeout)
                        .send()
                        .await;
                    let (status, text, error) = match sent {
                        Ok(resp) => {
                            let status = resp.status();
                            match resp.text().await {
                                Ok(t) => (Some(status), Some(t), None),
                                Err(e) => (Some(status), None, Some(e.to_string())),
                            }
                        }
                        Err(e) => (None, None, Some(e.to_string())),
                    };
                    let ok = error.is_none() && status.is_some_and(|s| s.is_success());
                    event.attempts.push(PushAttempt {
                        at,
                        http_status: status.map(|s| s.as_u16()),
                        body: text.clone(),
                        error,
                        latency_ms: millis(started),
                    });
                    if !ok {
                        continue;
                    }
                    event.delivered = true;
                    // `success`/empty or a valid passive reply ends it; anything else is
                    // retried like a timeout (WeChat shows the user an error meanwhile).
                    match reply::read_answer(text.as_deref().unwrap_or_default(), &job) {
                        Answer::Ack => {
                            event.acknowledged = true;
                            event.reply = None;
                            break;
                        }
                        Answer::Reply(r) => {
                            let valid = r.valid;
                            event.reply = Some(*r);
                            if valid {
                                event.acknowledged = true;
                                break;
                            }
                        }
                    }
                }
            }
            (None, _) => event
                .attempts
                .push(failed(at, "EncodingAESKey must be 43 base64 characters")),
            (_, Err(e)) => event.attempts.push(failed(at, &format!("bad message server URL: {e}"))),
        }
        tracing::debug!(appid = %event.appid, event = %event.event, delivered = event.delivered, "wechat-sim push");
        self.with_state(|st| {
            let limit = st.cfg.record_limit;
            push_bounded(&mut st.pushes, event.clone(), limit);
        });
        event
    }
}

fn failed(at: chrono::DateTime<chrono::Utc>, error: &str) -> PushAttempt {
    PushAttempt {
        at,
        http_status: None,
        body: None,
        error: Some(error.to_owned()),
        latency_ms: 0,
    }
}
