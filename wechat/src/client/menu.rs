//! The official account's custom menu (`POST /cgi-bin/menu/create`).
//!
//! WeChat validates the menu (1-3 buttons, 1-5 sub-buttons, name, key and URL sizes) and
//! answers 40016-40027 when a rule is broken; these types only make the shape right.

use reqwest::Method;
use serde_json::{Value, json};

use super::{AppCredentials, CallError, PATH_MENU_CREATE, WechatClient};

/// What pressing a button does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ButtonAction {
    /// Pushes a `CLICK` event with `key` (1-128 bytes) to the message server.
    Click { key: String },
    /// Opens `url` (1-1024 bytes).
    View { url: String },
    /// Opens a linked mini-program page; `url` is the fallback for clients without mini-programs.
    MiniProgram {
        appid: String,
        pagepath: String,
        url: String,
    },
}

/// A button inside a top-level group (name 1-60 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubButton {
    pub name: String,
    pub action: ButtonAction,
}

/// A top-level button (name 1-16 bytes): an action, or a group of 1-5 sub-buttons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MenuButton {
    Action { name: String, action: ButtonAction },
    Group { name: String, sub_buttons: Vec<SubButton> },
}

/// The whole menu: 1-3 top-level buttons.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Menu {
    pub buttons: Vec<MenuButton>,
}

fn button_json(name: &str, action: &ButtonAction) -> Value {
    match action {
        ButtonAction::Click { key } => json!({ "type": "click", "name": name, "key": key }),
        ButtonAction::View { url } => json!({ "type": "view", "name": name, "url": url }),
        ButtonAction::MiniProgram { appid, pagepath, url } => {
            json!({ "type": "miniprogram", "name": name, "url": url, "appid": appid, "pagepath": pagepath })
        }
    }
}

impl Menu {
    /// The wire body.
    pub fn to_json(&self) -> Value {
        let buttons: Vec<Value> = self
            .buttons
            .iter()
            .map(|b| match b {
                MenuButton::Action { name, action } => button_json(name, action),
                MenuButton::Group { name, sub_buttons } => json!({
                    "name": name,
                    "sub_button": sub_buttons.iter().map(|s| button_json(&s.name, &s.action)).collect::<Vec<_>>(),
                }),
            })
            .collect();
        json!({ "button": buttons })
    }
}

impl WechatClient {
    /// Replaces the official account's menu.
    pub async fn create_menu(&self, app: &AppCredentials, menu: &Menu) -> Result<(), CallError> {
        let _: Value = self
            .call_json(app, Method::POST, PATH_MENU_CREATE, &menu.to_json())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shape() {
        let menu = Menu {
            buttons: vec![
                MenuButton::Action {
                    name: "我的票据".into(),
                    action: ButtonAction::Click {
                        key: "MY_RECEIPTS".into(),
                    },
                },
                MenuButton::Group {
                    name: "服务".into(),
                    sub_buttons: vec![
                        SubButton {
                            name: "查验".into(),
                            action: ButtonAction::View {
                                url: "https://piaojia.example/verify".into(),
                            },
                        },
                        SubButton {
                            name: "票夹".into(),
                            action: ButtonAction::MiniProgram {
                                appid: "wxmini".into(),
                                pagepath: "pages/index".into(),
                                url: "https://piaojia.example".into(),
                            },
                        },
                    ],
                },
            ],
        };
        let v = menu.to_json();
        assert_eq!(
            v["button"][0],
            json!({"type": "click", "name": "我的票据", "key": "MY_RECEIPTS"})
        );
        assert!(v["button"][1].get("type").is_none());
        assert_eq!(v["button"][1]["sub_button"][0]["type"], "view");
        assert_eq!(v["button"][1]["sub_button"][1]["pagepath"], "pages/index");
        assert_eq!(v["button"][1]["sub_button"][1]["appid"], "wxmini");
    }
}
