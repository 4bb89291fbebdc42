//! The sandbox: WeChat played by the built-in simulator (`tests/wechat-sim`),
//! served by this process at `/sandbox/wechat` so a newcomer sees receipts
//! delivered without a WeChat account. Compiled only with the `sandbox` feature
//! (on by default, off in the container image): a production build has no
//! simulator in it. It serves on a loopback `server.host` only unless
//! `wechat.sandbox_allow_public` says otherwise (checked with the settings), and
//! its admin API (`/sandbox/wechat/sim/…`, which mints logins for any openid)
//! needs the operator token.

use std::sync::Arc;
use std::time::Duration;

use actix_web::body::EitherBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{ResponseError, web};
use piaojia_core::pii::Keyring;
use piaojia_store::{Channel, ChannelKind, Store};
pub use piaojia_wechat_sim::Simulator as Sandbox;
use piaojia_wechat_sim::{AppKind, MessageServer, SimApp, SimConfig};

/// Where the gateway mounts the simulator.
pub const MOUNT: &str = "/sandbox/wechat";

/// A new simulator, and the base URL the WeChat client calls it at.
pub fn start(own_port: u16) -> (Sandbox, String) {
    (
        Sandbox::new(SimConfig::default()),
        format!("http://127.0.0.1:{own_port}{MOUNT}"),
    )
}

/// Mounts the simulator; its `/sim/…` admin routes ask for the operator token.
pub fn mount(cfg: &mut web::ServiceConfig, sim: &Sandbox) {
    cfg.service(
        web::scope(MOUNT)
            .wrap(from_fn(admin_needs_operator))
            .configure(|c| sim.configure(c)),
    );
}

async fn admin_needs_operator(
    req: ServiceRequest,
    next: Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl actix_web::body::MessageBody>>, actix_web::Error> {
    let admin = req
        .path()
        .strip_prefix(MOUNT)
        .is_some_and(|rest| rest.starts_with("/sim/") || rest == "/sim");
    if admin && let Err(refused) = crate::auth::operator::check(req.request()).await {
        let response = refused.error_response();
        return Ok(req.into_response(response).map_into_right_body());
    }
    next.call(req).await.map(ServiceResponse::map_into_left_body)
}

/// Keeps the simulator's apps in step with the configured channels, so a channel
/// added from the command line works in the sandbox without a restart.
pub fn spawn_sync(sim: Sandbox, store: Arc<dyn Store>, keyring: Arc<Keyring>, own_port: u16) {
    tokio::spawn(async move {
        loop {
            let mut channels = store.platform_channels().await.unwrap_or_default();
            for agency in store.list_agencies().await.unwrap_or_default() {
                channels.extend(store.channels_for_agency(agency.id).await.unwrap_or_default());
            }
            for channel in channels {
                register(&sim, &keyring, own_port, &channel);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}

/// Registers a channel's app (and long-term template) with the simulator.
fn register(sim: &Sandbox, keyring: &Keyring, own_port: u16, channel: &Channel) {
    if channel.long_term {
        sim.grant_long_term(&channel.wechat_app_id, &channel.template_id);
    }
    if sim.app(&channel.wechat_app_id).is_some() {
        return;
    }
    let purpose = piaojia_core::pii::purpose::wechat_app(&channel.wechat_app_id);
    let Ok(secret) = keyring.open(&channel.secret_sealed, &purpose) else {
        return;
    };
    let secret = String::from_utf8_lossy(&secret).into_owned();
    let kind = if channel.kind == ChannelKind::WechatTemplate {
        AppKind::OfficialAccount
    } else {
        AppKind::MiniProgram
    };
    let mut app = SimApp::new(&channel.wechat_app_id, &secret, kind);
    let open = |sealed: &Option<String>| {
        sealed
            .as_ref()
            .and_then(|t| keyring.open(t, &purpose).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    if let Some(token) = open(&channel.message_token_sealed) {
        app.message_server = Some(MessageServer {
            url: format!("http://127.0.0.1:{own_port}/v1/wechat/{}/events", channel.wechat_app_id),
            token,
            encoding_aes_key: open(&channel.encoding_aes_key_sealed),
        });
    }
    sim.add_app(app);
}
