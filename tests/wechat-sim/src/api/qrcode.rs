//! `POST /cgi-bin/qrcode/create`: parametric QR codes.

use serde_json::{Value, json};

use super::{Call, Reply, WxErr, authorize, field};
use crate::config::AppKind;
use crate::ids;
use crate::record::QrCode;
use crate::state::{State, push_bounded};

const MAX_EXPIRE: u64 = 2_592_000;

fn invalid_args() -> WxErr {
    WxErr::new(40097, "invalid args")
}

pub(super) fn create(st: &mut State, call: &Call) -> Result<Reply, WxErr> {
    let appid = authorize(st, call, AppKind::OfficialAccount)?;
    let body = call.object()?;
    let action = field(body, "action_name").ok_or_else(invalid_args)?;
    let scene = body.get("action_info").and_then(|a| a.get("scene"));
    let scene_id = || scene.and_then(|s| s.get("scene_id")).and_then(Value::as_u64);
    let scene_str = || {
        scene
            .and_then(|s| s.get("scene_str"))
            .and_then(Value::as_str)
            .filter(|s| (1..=64).contains(&s.chars().count()))
            .map(str::to_owned)
    };
    let (scene, temporary) = match action {
        "QR_SCENE" => (
            scene_id()
                .filter(|&id| id > 0 && id <= u64::from(u32::MAX))
                .map(|id| id.to_string()),
            true,
        ),
        "QR_LIMIT_SCENE" => (
            scene_id()
                .filter(|&id| (1..=100_000).contains(&id))
                .map(|id| id.to_string()),
            false,
        ),
        "QR_STR_SCENE" => (scene_str(), true),
        "QR_LIMIT_STR_SCENE" => (scene_str(), false),
        _ => (None, false),
    };
    let scene = scene.ok_or_else(invalid_args)?;
    let expire_seconds = temporary.then(|| {
        body.get("expire_seconds")
            .and_then(Value::as_u64)
            .unwrap_or(60)
            .clamp(1, MAX_EXPIRE)
    });
    let ticket = ids::ticket();
    let url = ids::qr_url();
    let qr = QrCode {
        at: st.now(),
        appid,
        ticket: ticket.clone(),
        url: url.clone(),
        action_name: action.to_owned(),
        scene,
        expire_seconds,
    };
    let limit = st.cfg.record_limit;
    push_bounded(&mut st.qrcodes, qr, limit);
    Ok(Reply::json(match expire_seconds {
        Some(e) => json!({ "ticket": ticket, "expire_seconds": e, "url": url }),
        None => json!({ "ticket": ticket, "url": url }),
    }))
}
