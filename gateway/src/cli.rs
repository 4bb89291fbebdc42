//! The `piaojia` command: one binary, a subcommand per role.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use piaojia_core::parties::ClaimField;
use piaojia_core::settings::{DEFAULTS_TOML, Settings};
use piaojia_core::{pii, signing};
use piaojia_store::AppKind;
use serde::Serialize;

use crate::startup::{Application, Role, open_store};
use crate::{openapi, provisioning, telemetry};

#[derive(Parser)]
#[command(
    name = "piaojia",
    version,
    about = "Delivers fiscal e-receipts from hospitals to payers through WeChat"
)]
pub struct Cli {
    /// Settings file (TOML); also PIAOJIA_CONFIG.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the HTTP gateway (with no configuration: embedded SQLite, sandbox WeChat),
    /// with the delivery workers in-process when `notifier.enabled`.
    Serve,
    /// Run only the delivery workers (with /healthz and /readyz; /metrics on server.metrics_address).
    Notifier,
    /// Apply database migrations and exit.
    Migrate,
    /// Print new master and blind-index keys for the settings.
    Keygen,
    /// Write the OpenAPI spec (or check the committed one).
    Openapi {
        #[arg(long, default_value = "openapi/openapi.json")]
        out: PathBuf,
        /// Fail if the file differs from the code instead of writing it.
        #[arg(long)]
        check: bool,
    },
    /// Print the documented default settings, or check the effective ones.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Agencies (开票单位).
    Agency {
        #[command(subcommand)]
        command: AgencyCommand,
    },
    /// Issuer and reimburser apps and their secrets.
    App {
        #[command(subcommand)]
        command: AppCommand,
    },
    /// Reimbursers (medical insurance, insurers, employers): their app and profile.
    /// Secrets rotate with `piaojia app rotate-secret` like any app's.
    Reimburser {
        #[command(subcommand)]
        command: ReimburserCommand,
    },
    /// WeChat channels of agencies (official account template, mini-program subscribe).
    Channel {
        #[command(subcommand)]
        command: ChannelCommand,
    },
    /// The official account's menu (`menu/create`).
    Menu {
        #[command(subcommand)]
        command: MenuCommand,
    },
    /// WeChat's card package (卡包) for an agency: its card template (`createbillcard`).
    Card {
        #[command(subcommand)]
        command: CardCommand,
    },
    /// Sign and send one request as an app, printing the status and body.
    Call(CallArgs),
    /// The first minute, in the sandbox: provisions a demo hospital with an
    /// official account and a mini-program, pushes a receipt for a WeChat payer
    /// (with their openid) to the running gateway, and prints the sandbox page
    /// that shows what that payer sees in WeChat.
    Demo {
        /// The running gateway (default: `server.public_url`, else
        /// http://127.0.0.1:<server.port>).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum MenuCommand {
    /// Set the account's menu with the "我的票据" entry: a `click` button answered
    /// with a link to the payer's receipts, or with `--view` a `view` button
    /// opening `/h5/{appId}/receipts`. In sandbox mode it calls the simulator of
    /// the running `piaojia serve` (server.port).
    Create {
        /// The official account's WeChat appid (a `wechat_template` channel).
        #[arg(long = "app")]
        app_id: String,
        #[arg(long)]
        view: bool,
    },
}

#[derive(Subcommand)]
pub enum CardCommand {
    /// Enable the card package for an agency: its official account becomes the
    /// platform (`card/invoice/seturl`) and gets the agency's card template
    /// (`createbillcard`, once).
    Enable {
        #[arg(long)]
        agency: String,
        /// The agency's official account (a `wechat_template` channel).
        #[arg(long = "app")]
        app_id: String,
        /// The unit's full name on the card.
        #[arg(long)]
        payee: String,
        /// The logo uploaded to WeChat (an mmbiz.qpic.cn URL).
        #[arg(long)]
        logo_url: String,
    },
    /// Turn the card package off for an agency (cards already taken stay).
    Disable {
        #[arg(long)]
        agency: String,
    },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// The documented defaults (every key).
    Defaults,
    /// Load and validate the effective settings.
    Check,
}

#[derive(Subcommand)]
pub enum AgencyCommand {
    Create {
        #[arg(long)]
        code: String,
        #[arg(long)]
        name: String,
        /// A host receipt files may be fetched from (repeatable).
        #[arg(long = "file-host")]
        file_hosts: Vec<String>,
    },
    List,
}

#[derive(Subcommand)]
pub enum AppCommand {
    /// Create an app; prints its secret once.
    Create {
        #[arg(long)]
        agency: String,
        #[arg(long)]
        app_id: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long, value_parser = ["issuer", "reimburser"], default_value = "issuer")]
        kind: String,
        /// Where signed status callbacks go.
        #[arg(long)]
        callback_url: Option<String>,
    },
    /// New secret; the current one stays valid until `retire-old-secrets` (unless --replace).
    RotateSecret {
        #[arg(long)]
        app_id: String,
        /// Invalidate the current secret at once.
        #[arg(long)]
        replace: bool,
    },
    /// End a rotation: only the newest secret stays valid.
    RetireOldSecrets {
        #[arg(long)]
        app_id: String,
    },
    Disable {
        #[arg(long)]
        app_id: String,
    },
    Enable {
        #[arg(long)]
        app_id: String,
    },
    SetCallback {
        #[arg(long)]
        app_id: String,
        /// Omit to remove the callback.
        #[arg(long)]
        url: Option<String>,
    },
    List {
        #[arg(long)]
        agency: Option<String>,
    },
}

#[derive(Args)]
pub struct ReimburserArgs {
    #[arg(long)]
    pub app_id: String,
    #[arg(long, value_parser = ["medical_insurance", "commercial_insurer", "employer"])]
    pub kind: String,
    #[arg(long)]
    pub name: String,
    /// The organisation's code (统一社会信用代码), [0-9A-Z].
    #[arg(long)]
    pub org_code: String,
    /// Where its Standard Webhooks go.
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// Code of an agency whose receipts it accepts (repeatable).
    #[arg(long = "accept")]
    pub accepted_agencies: Vec<String>,
    /// A personal field payers may share with it (repeatable): name, id_card_no,
    /// phone, email, medical_card_no.
    #[arg(long = "field")]
    pub personal_fields: Vec<String>,
    /// It reimburses a receipt only this many days after its issue (default: no limit).
    #[arg(long)]
    pub claim_within_days: Option<u32>,
    /// A field of the claim's own it asks payers for (repeatable), as
    /// `NAME:LABEL` or `NAME:LABEL:required`, e.g. `bankAccount:收款银行账号:required`.
    #[arg(long = "claim-field", value_parser = ClaimField::parse_spec)]
    pub claim_fields: Vec<ClaimField>,
}

impl From<ReimburserArgs> for provisioning::ReimburserSpec {
    fn from(a: ReimburserArgs) -> Self {
        Self {
            app_id: a.app_id,
            kind: a.kind,
            name: a.name,
            org_code: a.org_code,
            webhook_url: a.webhook_url,
            accepted_agencies: a.accepted_agencies,
            personal_fields: a.personal_fields,
            claim_within_days: a.claim_within_days,
            claim_fields: a.claim_fields,
        }
    }
}

#[derive(Subcommand)]
pub enum ReimburserCommand {
    /// Register a reimburser; prints its app secret once.
    Create(ReimburserArgs),
    /// Replace a reimburser's profile (kind, name, agencies, fields, webhook).
    Update(ReimburserArgs),
    List,
}

#[derive(Subcommand)]
pub enum ChannelCommand {
    /// Create or replace the agency's channel of a kind, or without `--agency`
    /// the platform's shared wallet mini-program (`--kind wallet_subscribe`).
    Set {
        #[arg(long)]
        agency: Option<String>,
        #[arg(long, value_parser = ["wechat_template", "wechat_subscribe", "wallet_subscribe"])]
        kind: String,
        #[arg(long)]
        wechat_app_id: String,
        /// The WeChat app secret (prefer the environment variable).
        #[arg(long, env = "PIAOJIA_WECHAT_SECRET", hide_env_values = true)]
        secret: String,
        #[arg(long)]
        template_id: String,
        /// Template keyword and value, e.g. `thing1={agencyName}` (repeatable).
        #[arg(long = "field")]
        fields: Vec<String>,
        /// Page opened from the message.
        #[arg(long)]
        page: Option<String>,
        /// Message-server token (official account events).
        #[arg(long, env = "PIAOJIA_WECHAT_MESSAGE_TOKEN", hide_env_values = true)]
        message_token: Option<String>,
        /// EncodingAESKey for secure mode (43 characters).
        #[arg(long, env = "PIAOJIA_WECHAT_AES_KEY", hide_env_values = true)]
        encoding_aes_key: Option<String>,
        #[arg(long)]
        disabled: bool,
        /// The subscribe template is long-term (medical accounts).
        #[arg(long)]
        long_term: bool,
    },
    /// The agency's channels, or the platform's without `--agency`.
    List {
        #[arg(long)]
        agency: Option<String>,
    },
}

#[derive(Args)]
pub struct CallArgs {
    /// Base URL of the gateway.
    #[arg(long, env = "PIAOJIA_BASE_URL", default_value = "http://127.0.0.1:8080")]
    pub base_url: String,
    #[arg(long, env = "PIAOJIA_APP_ID")]
    pub app_id: String,
    /// Prefer the environment variable: arguments show in `ps`.
    #[arg(long, env = "PIAOJIA_APP_SECRET", hide_env_values = true)]
    pub secret: String,
    /// HTTP method.
    pub method: String,
    /// Path with query, e.g. /v1/receipts.
    pub path: String,
    /// JSON body file (`-` for stdin).
    #[arg(long)]
    pub body: Option<PathBuf>,
}

/// The WeChat client of a one-off command: WeChat itself in live mode, the
/// simulator of the running `piaojia serve` in sandbox mode.
fn command_wechat_client(settings: &Settings) -> anyhow::Result<piaojia_wechat::client::WechatClient> {
    use piaojia_core::settings::WechatMode;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let base = match settings.wechat.mode {
        WechatMode::Live => settings.wechat.api_base_url.clone(),
        WechatMode::Sandbox => format!("http://127.0.0.1:{}/sandbox/wechat", settings.server.port),
    };
    Ok(piaojia_wechat::client::WechatClient::new(
        &base,
        piaojia_wechat::client::TokenCache::Memory,
    )?)
}

fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Commands that need no settings.
    match &cli.command {
        Command::Keygen => {
            println!("# add to the environment of every piaojia process (keep secret):");
            println!("PIAOJIA_SECURITY__MASTER_KEYS=k1:{}", pii::generate_key());
            println!("PIAOJIA_SECURITY__BLIND_INDEX_KEY={}", pii::generate_key());
            println!("PIAOJIA_OPS__TOKEN={}", pii::generate_secret());
            return Ok(());
        }
        Command::Openapi { out, check } => return write_openapi(out, *check),
        Command::Config {
            command: ConfigCommand::Defaults,
        } => {
            print!("{DEFAULTS_TOML}");
            return Ok(());
        }
        Command::Call(args) => return call(args).await,
        _ => {}
    }

    let settings = Settings::load(cli.config.as_deref())?;
    telemetry::init_tracing(&settings.log);
    match cli.command {
        Command::Serve => {
            let app = Application::build(settings).await?;
            tracing::info!(
                port = app.port(),
                notifier = app.notifier().is_some(),
                "piaojia gateway listening"
            );
            app.run_until_stopped().await?;
        }
        Command::Notifier => {
            let app = Application::build_role(settings, Role::Notifier).await?;
            tracing::info!(port = app.port(), "piaojia notifier running");
            app.run_until_stopped().await?;
        }
        Command::Channel { command } => {
            let store = open_store(&settings).await?;
            let keyring = settings.keyring()?;
            match command {
                ChannelCommand::Set {
                    agency,
                    kind,
                    wechat_app_id,
                    secret,
                    template_id,
                    fields,
                    page,
                    message_token,
                    encoding_aes_key,
                    disabled,
                    long_term,
                } => {
                    let mut map = serde_json::Map::new();
                    for f in fields {
                        let (k, v) = f.split_once('=').context("--field takes keyword=template")?;
                        map.insert(k.trim().to_owned(), serde_json::Value::String(v.to_owned()));
                    }
                    let spec = provisioning::ChannelSpec {
                        agency_code: agency,
                        kind,
                        wechat_app_id,
                        secret,
                        template_id,
                        fields: map,
                        page,
                        message_token,
                        encoding_aes_key,
                        enabled: !disabled,
                        long_term,
                    };
                    print_json(&provisioning::set_channel(store.as_ref(), &keyring, spec).await?)?;
                }
                ChannelCommand::List { agency } => {
                    print_json(&provisioning::list_channels(store.as_ref(), agency.as_deref()).await?)?
                }
            }
        }
        Command::Demo { url } => return demo(&settings, &url).await,
        Command::Menu {
            command: MenuCommand::Create { app_id, view },
        } => {
            let store = open_store(&settings).await?;
            let keyring = settings.keyring()?;
            let wechat = command_wechat_client(&settings)?;
            let menu = crate::menu::create(store.as_ref(), &keyring, &wechat, &settings, &app_id, view).await?;
            print_json(&menu.to_json())?;
        }
        Command::Card { command } => {
            let store = open_store(&settings).await?;
            match command {
                CardCommand::Enable {
                    agency,
                    app_id,
                    payee,
                    logo_url,
                } => {
                    let keyring = settings.keyring()?;
                    let wechat = command_wechat_client(&settings)?;
                    let spec = crate::card_package::EnableCard {
                        agency_code: agency,
                        wechat_app_id: app_id,
                        payee,
                        logo_url,
                    };
                    print_json(&crate::card_package::enable(store.as_ref(), &keyring, &wechat, spec).await?)?;
                }
                CardCommand::Disable { agency } => {
                    print_json(&crate::card_package::disable(store.as_ref(), &agency).await?)?
                }
            }
        }
        Command::Migrate => {
            let mut settings = settings;
            settings.database.migrate_on_start = false;
            let store = open_store(&settings).await?;
            store.migrate().await?;
            print_json(&serde_json::json!({ "migrated": true, "database": store.backend().as_str() }))?;
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            settings.keyring()?;
            print_json(
                &serde_json::json!({ "valid": true, "database": format!("{:?}", settings.store_kind()).to_lowercase(), "redis": settings.redis_url().is_some() }),
            )?;
        }
        Command::Agency { command } => {
            let store = open_store(&settings).await?;
            match command {
                AgencyCommand::Create { code, name, file_hosts } => {
                    print_json(&provisioning::create_agency(store.as_ref(), &code, &name, file_hosts).await?)?
                }
                AgencyCommand::List => print_json(&store.list_agencies().await?)?,
            }
        }
        Command::Reimburser { command } => {
            let store = open_store(&settings).await?;
            let keyring = settings.keyring()?;
            let store = store.as_ref();
            match command {
                ReimburserCommand::Create(args) => {
                    print_json(&provisioning::create_reimburser(store, &keyring, args.into()).await?)?
                }
                ReimburserCommand::Update(args) => {
                    print_json(&provisioning::update_reimburser(store, args.into()).await?)?
                }
                ReimburserCommand::List => print_json(&provisioning::list_reimbursers(store).await?)?,
            }
        }
        Command::App { command } => {
            let store = open_store(&settings).await?;
            let keyring = settings.keyring()?;
            let store = store.as_ref();
            let view = match command {
                AppCommand::Create {
                    agency,
                    app_id,
                    name,
                    kind,
                    callback_url,
                } => {
                    let kind = AppKind::parse(&kind).context("kind")?;
                    provisioning::create_app(store, &keyring, &agency, kind, &app_id, &name, callback_url).await?
                }
                AppCommand::RotateSecret { app_id, replace } => {
                    provisioning::rotate_secret(store, &keyring, &app_id, !replace).await?
                }
                AppCommand::RetireOldSecrets { app_id } => provisioning::retire_old_secrets(store, &app_id).await?,
                AppCommand::Disable { app_id } => provisioning::set_enabled(store, &app_id, false).await?,
                AppCommand::Enable { app_id } => provisioning::set_enabled(store, &app_id, true).await?,
                AppCommand::SetCallback { app_id, url } => provisioning::set_callback(store, &app_id, url).await?,
                AppCommand::List { agency } => {
                    return print_json(&provisioning::list_apps(store, agency.as_deref()).await?);
                }
            };
            print_json(&view)?;
        }
        Command::Keygen
        | Command::Openapi { .. }
        | Command::Call(_)
        | Command::Config {
            command: ConfigCommand::Defaults,
        } => unreachable!("handled above"),
    }
    Ok(())
}

fn write_openapi(out: &PathBuf, check: bool) -> anyhow::Result<()> {
    let spec = openapi::spec_json();
    if check {
        let committed = std::fs::read_to_string(out).with_context(|| format!("reading {}", out.display()))?;
        anyhow::ensure!(
            committed == spec,
            "{} is out of date: run `piaojia openapi`",
            out.display()
        );
        return Ok(());
    }
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, spec)?;
    Ok(())
}

/// Signs and sends one request: the smallest possible issuer client, for trying
/// piaojia without writing HMAC code.
/// The demo hospital of `piaojia demo` and its WeChat apps (the simulator's).
pub mod demo_ids {
    pub const AGENCY: &str = "12110000400000099D";
    pub const ISSUER: &str = "demo-his";
    pub const OFFICIAL_ACCOUNT: &str = "wxd3m0off1c1a1acc0";
    pub const MINI_PROGRAM: &str = "wxd3m0m1n1pr0gram0";
    pub const TEMPLATE: &str = "demo-receipt-issued";
    /// The WeChat user who paid (an openid of the official account).
    pub const PAYER_OPENID: &str = "oDemoPayer0000000000000000Zs";
}

/// Provisions the demo hospital (idempotent), pushes one receipt with the
/// payer's openid and prints where to look.
async fn demo(settings: &Settings, url: &Option<String>) -> anyhow::Result<()> {
    use demo_ids::*;
    anyhow::ensure!(
        settings.wechat.mode == piaojia_core::settings::WechatMode::Sandbox,
        "piaojia demo runs in the sandbox only (wechat.mode = \"sandbox\"): it sends to simulated WeChat users"
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let base = url
        .clone()
        .unwrap_or_else(|| crate::state::base_url(settings, settings.server.port));
    let base = base.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder().no_proxy().build()?;
    // The gateway migrates its store as it starts: wait until it is ready.
    let mut ready = false;
    for _ in 0..300 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    anyhow::ensure!(ready, "no ready gateway at {base}: start `piaojia serve` first");
    let store = open_store(settings).await?;
    let keyring = settings.keyring()?;
    if store.agency_by_code(AGENCY).await?.is_none() {
        provisioning::create_agency(store.as_ref(), AGENCY, "示例市演示医院", Vec::new()).await?;
    }
    // A fresh issuer secret each run: the old one is replaced (it was printed once).
    let view = if store.app(ISSUER).await?.is_some() {
        provisioning::rotate_secret(store.as_ref(), &keyring, ISSUER, false).await?
    } else {
        provisioning::create_app(
            store.as_ref(),
            &keyring,
            AGENCY,
            AppKind::Issuer,
            ISSUER,
            "演示 HIS",
            None,
        )
        .await?
    };
    let secret = view.secret.context("a new secret")?;
    for (kind, appid) in [
        ("wechat_template", OFFICIAL_ACCOUNT),
        ("wechat_subscribe", MINI_PROGRAM),
    ] {
        provisioning::set_channel(
            store.as_ref(),
            &keyring,
            provisioning::ChannelSpec {
                agency_code: Some(AGENCY.to_owned()),
                kind: kind.to_owned(),
                wechat_app_id: appid.to_owned(),
                secret: format!("demo-secret-of-{appid}"),
                template_id: TEMPLATE.to_owned(),
                fields: serde_json::Map::new(),
                page: (kind == "wechat_subscribe").then(|| "pages/receipt/detail".to_owned()),
                // The simulator pushes scans and clicks to our message server.
                message_token: (kind == "wechat_template").then(|| "demo-message-token".to_owned()),
                encoding_aes_key: None,
                enabled: true,
                long_term: false,
            },
        )
        .await?;
    }
    // The running gateway registers new channels with its simulator every 2 s.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let mut receipt: serde_json::Value = serde_json::from_str(include_str!("../../openapi/examples/receipt.json"))?;
    let bill_no = format!("{:010}", chrono::Utc::now().timestamp() % 10_000_000_000);
    receipt["billNo"] = bill_no.clone().into();
    receipt["random"] = pii::random_alnum(6).to_ascii_lowercase().into();
    receipt["openID"] = PAYER_OPENID.into();
    receipt["issuedAt"] = chrono::Utc::now().to_rfc3339().into();
    let body = serde_json::to_vec(&receipt)?;
    let path = "/v1/receipts";
    let timestamp = chrono::Utc::now().timestamp();
    let nonce = pii::random_alnum(24);
    let auth = signing::authorization(ISSUER, &secret, "POST", path, timestamp, &nonce, &body);
    let resp = http
        .post(format!("{base}{path}"))
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .with_context(|| format!("pushing to {base} (is `piaojia serve` running?)"))?;
    let status = resp.status();
    let pushed: serde_json::Value = resp.json().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "the push answered {status}: {pushed}");
    let page = crate::sandbox_payer_page_url(&base, &keyring, OFFICIAL_ACCOUNT, PAYER_OPENID);
    print_json(&serde_json::json!({
        "agency": AGENCY,
        "issuer": { "appId": ISSUER, "secret": secret },
        "officialAccount": OFFICIAL_ACCOUNT,
        "miniProgram": MINI_PROGRAM,
        "payerOpenid": PAYER_OPENID,
        "receipt": { "billBatchCode": receipt["billBatchCode"], "billNo": bill_no, "deliveries": pushed["deliveries"] },
        "whatThePayerSees": page,
    }))?;
    eprintln!("\nOpen {page}\nin a browser: the template message the payer got, and the receipt page it opens.");
    Ok(())
}

async fn call(args: &CallArgs) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let body = match &args.body {
        None => Vec::new(),
        Some(path) if path.as_os_str() == "-" => {
            use std::io::Read as _;
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf)?;
            buf
        }
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    };
    let method = args.method.to_ascii_uppercase();
    let timestamp = chrono::Utc::now().timestamp();
    let nonce = pii::random_alnum(24);
    let auth = signing::authorization(
        &args.app_id,
        &args.secret,
        &method,
        &args.path,
        timestamp,
        &nonce,
        &body,
    );
    let url = format!("{}{}", args.base_url.trim_end_matches('/'), args.path);
    // Direct: never through a proxy named by the environment.
    let mut req = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .request(reqwest::Method::from_bytes(method.as_bytes())?, &url)
        .header("authorization", auth);
    if !body.is_empty() {
        req = req.header("content-type", "application/json").body(body);
    }
    let resp = req.send().await.with_context(|| format!("sending to {url}"))?;
    let status = resp.status();
    let text = resp.text().await?;
    eprintln!("HTTP {status}");
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(json) => print_json(&json)?,
        Err(_) => println!("{text}"),
    }
    anyhow::ensure!(status.is_success(), "the gateway answered {status}");
    Ok(())
}
