//! The OpenAPI spec, generated from the handlers and types. `piaojia openapi`
//! writes it to `openapi/openapi.json`; a test fails when the committed copy drifts.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{FieldProblem, Problem};
use crate::issuer::routes as issuer;
use crate::message_server;
use crate::operator::routes as ops;
use crate::service::health;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "piaojia",
        description = "Delivers China's fiscal electronic receipts (财政电子票据) from issuers (hospital billing systems) to payers through WeChat, and on to reimbursers.\n\nIssuer and reimburser calls are signed with PJ1-HMAC-SHA256: `Authorization: PJ1-HMAC-SHA256 appId=<appId>, timestamp=<unix seconds>, nonce=<16-64 [A-Za-z0-9]>, signature=<base64>` where signature = base64(HMAC-SHA256(secret, METHOD \\n PATH_WITH_QUERY \\n timestamp \\n nonce \\n hex(SHA-256(body)))). Requests more than 300 s off the server clock or reusing a nonce within 600 s are refused; an unknown appId and a wrong signature get the same answer (`401 auth_bad_signature`).\n\nRequest bodies are bounded per scope and refused with `413 payload_too_large` before they are read: issuer pushes and reversals up to `server.body_limit_bytes` (8 MiB), the WeChat message server 256 KiB, every other request (mini-program, operator, reimburser) `server.json_body_limit_bytes` (64 KiB).\n\nEvery error is RFC 9457 `application/problem+json` with a stable `code`.",
        license(name = "Apache-2.0"),
        version = "1"
    ),
    paths(
        issuer::push_receipt,
        issuer::get_receipt,
        issuer::reverse_receipt,
        health::healthz,
        health::readyz,
        ops::channels,
        ops::interfaces,
        ops::alerts,
        ops::deliveries,
        ops::redrive,
        message_server::verify,
        message_server::receive,
        crate::card_package::take_card,
    ),
    components(schemas(Problem, FieldProblem)),
    modifiers(&Security),
    tags(
        (name = "issuer", description = "Hospital billing and receipt systems push receipts and reversals"),
        (name = "wechat", description = "Our message server: the callback URL configured in an official account"),
        (name = "operations", description = "Health, readiness, and the operator API: channel and interface health, alerts, re-drive. Prometheus metrics are served on their own listener (`server.metrics_address`, loopback by default), not here."),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "pj1_hmac",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "PJ1-HMAC-SHA256 appId=…, timestamp=…, nonce=…, signature=… (see the description above)",
            ))),
        );
        components.add_security_scheme(
            "operator_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub fn spec() -> utoipa::openapi::OpenApi {
    let mut spec = ApiDoc::openapi();
    spec.merge(piaojia_miniprogram_api::ApiDoc::openapi());
    spec
}

/// The spec as committed: pretty JSON with a trailing newline.
pub fn spec_json() -> String {
    let mut json = spec().to_pretty_json().expect("the OpenAPI document serializes");
    json.push('\n');
    json
}
