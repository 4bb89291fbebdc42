//! The words of delivery: which channel a delivery goes through, what it is
//! about, where it stands, and why it waits. Strings only at the serde and SQL
//! edges (`as_str` / `parse`).

use serde::{Deserialize, Serialize};

/// Generates `ALL`, `as_str` and `parse` for a word list (the spelling is the
/// stored and serialised one).
macro_rules! spelled {
    ($ty:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $s),+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($s => Some($ty::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use spelled;

/// How a delivery reaches its recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// The issuer's status callback (Standard Webhooks).
    IssuerWebhook,
    /// The agency's official account: a template message.
    WechatTemplate,
    /// The agency's own mini-program: a subscribe message.
    WechatSubscribe,
    /// The platform's shared wallet mini-program (a channel of no agency).
    WalletSubscribe,
    /// The card package: a receipt's PDF uploaded (`setpdf`) after the payer agreed.
    CardPdf,
    /// The card package: the card put into the payer's package (`insertbill`).
    CardInsert,
    /// The card package: the card's status set (`updatestatus`: CANCEL on a
    /// reversal, LOCK and CLOSURE mirrored from reimbursers).
    CardStatus,
    /// A reimburser's claim webhook (Standard Webhooks): a new claim, a withdrawn
    /// or cancelled one.
    ReimburserClaim,
}

spelled!(ChannelKind {
    IssuerWebhook => "issuer_webhook",
    WechatTemplate => "wechat_template",
    WechatSubscribe => "wechat_subscribe",
    WalletSubscribe => "wallet_subscribe",
    CardPdf => "card_pdf",
    CardInsert => "card_insert",
    CardStatus => "card_status",
    ReimburserClaim => "reimburser_claim",
});

impl ChannelKind {
    /// Channels that reach a payer in WeChat, in order of preference when a
    /// receipt carries the payer's openid: the hospital's own official account
    /// (where a WeChat payment usually happens), then its mini-program.
    pub const PAYER_PREFERENCE: [ChannelKind; 2] = [ChannelKind::WechatTemplate, ChannelKind::WechatSubscribe];

    /// True for the WeChat channels configured per app (`channel set`) that
    /// reach a payer with a message.
    pub fn is_wechat(self) -> bool {
        matches!(
            self,
            ChannelKind::WechatTemplate | ChannelKind::WechatSubscribe | ChannelKind::WalletSubscribe
        )
    }

    /// True for the card package's calls (DOMAIN.md §7), made for agencies that enable it.
    pub fn is_card(self) -> bool {
        matches!(
            self,
            ChannelKind::CardPdf | ChannelKind::CardInsert | ChannelKind::CardStatus
        )
    }

    /// True for channels configured without an agency (the platform's own).
    pub fn is_platform(self) -> bool {
        matches!(self, ChannelKind::WalletSubscribe)
    }

    /// True for mini-program subscribe messages (one-time or long-term consents).
    pub fn is_subscribe(self) -> bool {
        matches!(self, ChannelKind::WechatSubscribe | ChannelKind::WalletSubscribe)
    }
}

/// What happened to the receipt that a delivery tells of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryEvent {
    Issued,
    Reversed,
}

spelled!(DeliveryEvent {
    Issued => "issued",
    Reversed => "reversed",
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    /// Ended by an outcome retrying cannot fix (recorded, not an outage).
    Failed,
    /// Waits for an operator (or, parked for an outage, for the interface).
    Parked,
    /// Never to be sent: its recipient erased their account.
    Cancelled,
}

spelled!(DeliveryStatus {
    Pending => "pending",
    Delivered => "delivered",
    Failed => "failed",
    Parked => "parked",
    Cancelled => "cancelled",
});

impl DeliveryStatus {
    /// True once nothing more will happen to the delivery by itself.
    pub fn is_final(self) -> bool {
        !matches!(self, DeliveryStatus::Pending)
    }
}

/// Why a delivery is parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParkReason {
    /// Every retry of the schedule failed.
    Exhausted,
    /// Retries ran out while the interface itself was failing: released again
    /// automatically when it recovers.
    Outage,
    /// The interface's daily quota is used up (45009).
    Quota,
}

spelled!(ParkReason {
    Exhausted => "exhausted",
    Outage => "outage",
    Quota => "quota",
});

/// How one attempt went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    Success,
    /// Failed in a way a later attempt may fix (timeouts, 5xx, WeChat busy).
    Retryable,
    /// Failed in a way retrying cannot fix (43101, 40003, 47003, a webhook's 4xx).
    Permanent,
}

spelled!(AttemptOutcome {
    Success => "success",
    Retryable => "retryable",
    Permanent => "permanent",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip_and_match_serde() {
        for k in ChannelKind::ALL {
            assert_eq!(ChannelKind::parse(k.as_str()), Some(*k));
            assert_eq!(serde_json::to_value(k).expect("test value"), k.as_str());
        }
        for s in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(s.as_str()), Some(*s));
            assert_eq!(serde_json::to_value(s).expect("test value"), s.as_str());
        }
        for r in ParkReason::ALL {
            assert_eq!(ParkReason::parse(r.as_str()), Some(*r));
            assert_eq!(serde_json::to_value(r).expect("test value"), r.as_str());
        }
        assert_eq!(ChannelKind::parse("sms"), None);
    }
}

/// The outside interface a WeChat channel's sends call (breakers, figures, and the
/// follower check of a claim): `wechat:{appid}:{api}`.
pub fn wechat_interface(wechat_app_id: &str, kind: ChannelKind) -> String {
    let api = if kind == ChannelKind::WechatTemplate {
        "template_send"
    } else {
        "subscribe_send"
    };
    format!("wechat:{wechat_app_id}:{api}")
}

/// The outside interface a card-package delivery calls (breakers and figures).
pub fn card_interface(wechat_app_id: &str, kind: ChannelKind) -> String {
    let api = match kind {
        ChannelKind::CardPdf => "setpdf",
        ChannelKind::CardInsert => "insertbill",
        _ => "updatestatus",
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

/// The WeChat appid of an interface made by [`wechat_interface`] or [`card_interface`].
pub fn interface_app(interface: &str) -> Option<&str> {
    let mut parts = interface.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("wechat"), Some(app), Some(_)) if !app.is_empty() => Some(app),
        _ => None,
    }
}

#[cfg(test)]
mod interface_tests {
    use super::*;

    #[test]
    fn the_appid_is_read_back_from_an_interface() {
        let template = wechat_interface("wx1234", ChannelKind::WechatTemplate);
        assert_eq!(interface_app(&template), Some("wx1234"));
        assert_eq!(interface_app(&card_interface("wx9", ChannelKind::CardPdf)), Some("wx9"));
        assert_eq!(interface_app("webhook:https://x"), None);
        assert_eq!(interface_app("wechat::template_send"), None);
    }
}
