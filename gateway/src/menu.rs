//! The official account's menu (`piaojia menu create --app <appId>`): one entry,
//! "我的票据", as a `click` button (`wechat.menu_receipts_key`; the message server
//! answers it with a link to the payer's receipts) or, with `--view`, a `view`
//! button opening `/h5/{appId}/receipts` directly.

use piaojia_core::pii::{Keyring, purpose};
use piaojia_core::settings::Settings;
use piaojia_store::{ChannelKind, Store};
use piaojia_wechat::client::{AppCredentials, ButtonAction, Menu, MenuButton, WechatClient};
use secrecy::SecretString;

/// The menu `menu create` sets.
pub fn receipts_menu(settings: &Settings, appid: &str, view: bool) -> Menu {
    let action = if view {
        ButtonAction::View {
            url: format!(
                "{}/h5/{appid}/receipts",
                settings.server.public_url.trim_end_matches('/')
            ),
        }
    } else {
        ButtonAction::Click {
            key: settings.wechat.menu_receipts_key.clone(),
        }
    };
    Menu {
        buttons: vec![MenuButton::Action {
            name: "我的票据".to_owned(),
            action,
        }],
    }
}

/// Sets the official account's menu (`menu/create`) with the "我的票据" entry; the
/// app must be a configured `wechat_template` channel.
pub async fn create(
    store: &dyn Store,
    keyring: &Keyring,
    wechat: &WechatClient,
    settings: &Settings,
    appid: &str,
    view: bool,
) -> anyhow::Result<Menu> {
    let channels = store.channel_by_wechat_app(appid).await?;
    let channel = channels
        .iter()
        .find(|c| c.kind == ChannelKind::WechatTemplate)
        .ok_or_else(|| {
            anyhow::anyhow!("{appid} is not an official account's channel (channel set --kind wechat_template)")
        })?;
    let secret = keyring
        .open(&channel.secret_sealed, &purpose::wechat_app(appid))
        .map_err(|e| anyhow::anyhow!("the channel secret cannot be opened: {e}"))?;
    let app = AppCredentials {
        appid: appid.to_owned(),
        secret: SecretString::from(String::from_utf8_lossy(&secret).into_owned()),
    };
    let menu = receipts_menu(settings, appid, view);
    wechat.create_menu(&app, &menu).await?;
    Ok(menu)
}
