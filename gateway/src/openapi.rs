//! The OpenAPI spec, generated from the handlers and types. `piaojia openapi`
//! writes it to `openapi/openapi.json`; a test fails when the committed copy drifts.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{FieldProblem, Problem};
use crate::issuer::routes as issuer;
use crate::message_server;
use crate::operator::routes as ops;
use crate::pages::routes as pages;
use crate::reimburser::routes as reimburser;
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
        issuer::reimbursement_history,
        reimburser::verify,
        reimburser::lock,
        reimburser::close,
        reimburser::unlock,
        reimburser::reject,
        reimburser::batch,
        reimburser::history,
        crate::reimburser::claims::feed,
        crate::reimburser::claims::detail,
        crate::reimburser::claims::acknowledge,
        crate::reimburser::claims::file,
        issuer::receipt_qrcode,
        crate::issuer::payments::report_payment,
        pages::stylesheet,
        pages::oauth_callback,
        pages::list,
        pages::detail,
        pages::download,
        pages::paper,
        pages::add_to_wallet,
        crate::pages::claims::form,
        crate::pages::claims::submit,
        crate::pages::claims::list,
        crate::pages::claims::withdraw,
        health::healthz,
        health::readyz,
        ops::channels,
        ops::interfaces,
        ops::alerts,
        ops::deliveries,
        ops::redrive,
        ops::reimbursement_history,
        ops::receipt_claims,
        ops::claim,
        ops::wechat_inbox,
        ops::retry_inbox_event,
        ops::retry_failed_inbox_events,
        message_server::verify,
        message_server::receive,
        crate::card_package::take_card,
    ),
    components(schemas(Problem, FieldProblem)),
    modifiers(&Security),
    tags(
        (name = "issuer", description = "Hospital billing and receipt systems push receipts and reversals"),
        (name = "reimburser", description = "Medical insurance, insurers and employers: verify receipts (查验), lock, close, unlock and reject them; a receipt is reimbursed at most once"),
        (name = "pages", description = "The official account's pages inside WeChat (H5, HTML in Chinese): payers sign in by web OAuth (snsapi_base) and see the receipts in their wallet, claim reimbursement (申请报销) and follow or withdraw their claims (我的报销); every failure is an error page"),
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

#[cfg(test)]
mod tests {
    use piaojia_web::codes::ErrorCode;
    use serde_json::Value;
    use std::collections::BTreeSet;

    fn spec_value() -> Value {
        serde_json::from_str(&super::spec_json()).expect("the spec is JSON")
    }

    #[test]
    fn problem_code_lists_every_error_code() {
        let spec = spec_value();
        let listed: Vec<&str> = spec["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .expect("ErrorCode is a string enum in the spec")
            .iter()
            .map(|v| v.as_str().expect("a code is a string"))
            .collect();
        let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(listed, all);
        assert_eq!(
            spec["components"]["schemas"]["Problem"]["properties"]["code"]["$ref"],
            "#/components/schemas/ErrorCode"
        );
    }

    // Every code a response description names must exist and carry that status, so
    // the per-route docs cannot promise a code the server never sends.
    #[test]
    fn response_descriptions_name_real_codes_with_their_status() {
        let spec = spec_value();
        let known: std::collections::HashMap<&str, u16> = ErrorCode::ALL
            .iter()
            .map(|c| (c.as_str(), c.status().as_u16()))
            .collect();
        let mut named = BTreeSet::new();
        let mut wrong = Vec::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                let Some(responses) = op.get("responses").and_then(Value::as_object) else {
                    continue;
                };
                for (status, response) in responses {
                    let Ok(status) = status.parse::<u16>() else { continue };
                    // The official account's pages answer error pages (HTML), not problems.
                    if status < 400 || response["content"].get("text/html").is_some() {
                        continue;
                    }
                    let description = response["description"].as_str().unwrap_or_default();
                    // The leading backticked words of a description are the codes it answers.
                    for token in description.split('`').skip(1).step_by(2) {
                        match known.get(token) {
                            Some(&s) if s == status => {
                                named.insert(token.to_owned());
                            }
                            Some(&s) => wrong.push(format!("{method} {path} {status}: `{token}` is a {s}")),
                            None => {}
                        }
                    }
                    if !description.split('`').skip(1).step_by(2).any(|t| known.contains_key(t)) {
                        wrong.push(format!("{method} {path} {status}: names no error code"));
                    }
                }
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
        assert!(named.len() > 30, "only {} codes documented per route", named.len());
    }

    #[test]
    fn readme_error_table_is_the_codes() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(path).expect("README.md");
        let begin = "<!-- error-codes:begin -->\n";
        let start = readme.find(begin).expect("README marks the error table") + begin.len();
        let end = readme
            .find("<!-- error-codes:end -->")
            .expect("README ends the error table");
        let table = ErrorCode::markdown_table();
        assert!(
            readme[start..end] == table,
            "the README's error table differs from ErrorCode::ALL; it must read:\n{table}"
        );
    }
}
