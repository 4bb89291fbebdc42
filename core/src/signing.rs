//! The PJ1-HMAC-SHA256 request signature that issuers and reimbursers put on every
//! call (DOMAIN.md §3). The server side parses and verifies; [`authorization`]
//! builds the header for clients, the `piaojia sign` helper and the tests.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{digest, hmac};

pub const SCHEME: &str = "PJ1-HMAC-SHA256";

/// The parameters of an `Authorization: PJ1-HMAC-SHA256 …` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthParams {
    pub app_id: String,
    pub timestamp: i64,
    pub nonce: String,
    pub signature: Vec<u8>,
}

/// Why a header could not be parsed. Each maps to a stable error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the Authorization header does not use the PJ1-HMAC-SHA256 scheme")]
    WrongScheme,
    #[error("the Authorization header is malformed: {0}")]
    Malformed(&'static str),
}

/// Parses `PJ1-HMAC-SHA256 appId=…, timestamp=…, nonce=…, signature=…`
/// (parameters in any order, commas with optional spaces).
pub fn parse_authorization(header: &str) -> Result<AuthParams, HeaderError> {
    let rest = header.trim().strip_prefix(SCHEME).ok_or(HeaderError::WrongScheme)?;
    if !rest.starts_with(' ') {
        return Err(HeaderError::WrongScheme);
    }
    let (mut app_id, mut timestamp, mut nonce, mut signature) = (None, None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (key, value) = part
            .split_once('=')
            .ok_or(HeaderError::Malformed("a parameter has no '='"))?;
        let slot = match key.trim() {
            "appId" => &mut app_id,
            "timestamp" => &mut timestamp,
            "nonce" => &mut nonce,
            // The base64 signature may itself end in '=': split_once keeps them in `value`.
            "signature" => &mut signature,
            _ => return Err(HeaderError::Malformed("unknown parameter")),
        };
        if slot.replace(value.trim()).is_some() {
            return Err(HeaderError::Malformed("a parameter is repeated"));
        }
    }
    let app_id = app_id.ok_or(HeaderError::Malformed("appId is missing"))?;
    if app_id.is_empty()
        || app_id.len() > 64
        || !app_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(HeaderError::Malformed("appId is not 1-64 characters [A-Za-z0-9_-]"));
    }
    let timestamp = timestamp.ok_or(HeaderError::Malformed("timestamp is missing"))?;
    if timestamp.is_empty() || timestamp.len() > 12 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeaderError::Malformed("timestamp is not unix seconds"));
    }
    let timestamp: i64 = timestamp
        .parse()
        .map_err(|_| HeaderError::Malformed("timestamp is not unix seconds"))?;
    let nonce = nonce.ok_or(HeaderError::Malformed("nonce is missing"))?;
    if !(16..=64).contains(&nonce.len()) || !nonce.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(HeaderError::Malformed("nonce is not 16-64 characters [A-Za-z0-9]"));
    }
    let signature = signature.ok_or(HeaderError::Malformed("signature is missing"))?;
    let signature = B64
        .decode(signature)
        .map_err(|_| HeaderError::Malformed("signature is not base64"))?;
    if signature.len() != digest::SHA256_OUTPUT_LEN {
        return Err(HeaderError::Malformed("signature is not an HMAC-SHA256"));
    }
    Ok(AuthParams {
        app_id: app_id.to_owned(),
        timestamp,
        nonce: nonce.to_owned(),
        signature,
    })
}

/// `METHOD \n PATH_WITH_QUERY \n timestamp \n nonce \n hex(sha256(body))`.
/// The app's webhook signing secret in the Standard Webhooks form,
/// `whsec_<base64 of the key>`: the libraries' `Webhook("whsec_…").verify(body,
/// headers)` takes it as printed. The key is the app secret's UTF-8 bytes, which
/// is what piaojia's webhooks are signed with (one signature per active secret, so
/// both verify during a rotation).
pub fn standard_webhook_secret(app_secret: &str) -> String {
    format!("whsec_{}", B64.encode(app_secret.as_bytes()))
}

pub fn string_to_sign(method: &str, path_with_query: &str, timestamp: i64, nonce: &str, body: &[u8]) -> String {
    let body_hash = hex::encode(digest::digest(&digest::SHA256, body));
    format!("{method}\n{path_with_query}\n{timestamp}\n{nonce}\n{body_hash}")
}

/// The base64 signature of a request under `secret`.
pub fn sign(secret: &str, method: &str, path_with_query: &str, timestamp: i64, nonce: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let tag = hmac::sign(
        &key,
        string_to_sign(method, path_with_query, timestamp, nonce, body).as_bytes(),
    );
    B64.encode(tag.as_ref())
}

/// Verifies in constant time (ring's `hmac::verify`).
pub fn verify(secret: &str, params: &AuthParams, method: &str, path_with_query: &str, body: &[u8]) -> bool {
    let body_hash = hex::encode(digest::digest(&digest::SHA256, body));
    verify_body_hash(secret, params, method, path_with_query, &body_hash)
}

/// [`verify`] for a body hashed as it streamed in (lower-case hex SHA-256), so
/// that a body need not be kept to check its signature.
pub fn verify_body_hash(
    secret: &str,
    params: &AuthParams,
    method: &str,
    path_with_query: &str,
    body_sha256_hex: &str,
) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let msg = format!(
        "{method}\n{path_with_query}\n{}\n{}\n{body_sha256_hex}",
        params.timestamp, params.nonce
    );
    hmac::verify(&key, msg.as_bytes(), &params.signature).is_ok()
}

/// A complete `Authorization` header value for a request.
pub fn authorization(
    app_id: &str,
    secret: &str,
    method: &str,
    path_with_query: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
) -> String {
    let signature = sign(secret, method, path_with_query, timestamp, nonce, body);
    format!("{SCHEME} appId={app_id}, timestamp={timestamp}, nonce={nonce}, signature={signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: &str = "abcdef0123456789";

    #[test]
    fn round_trip_any_parameter_order() {
        let header = authorization(
            "hosp01",
            "s3cret",
            "POST",
            "/v1/receipts?x=1",
            1_763_861_400,
            NONCE,
            b"{}",
        );
        let parsed = parse_authorization(&header).expect("parses");
        assert!(verify("s3cret", &parsed, "POST", "/v1/receipts?x=1", b"{}"));
        assert!(!verify("other", &parsed, "POST", "/v1/receipts?x=1", b"{}"));
        assert!(!verify("s3cret", &parsed, "POST", "/v1/receipts", b"{}"));
        assert!(!verify("s3cret", &parsed, "POST", "/v1/receipts?x=1", b"{ }"));

        let sig = sign("s3cret", "POST", "/v1/receipts?x=1", 1_763_861_400, NONCE, b"{}");
        let shuffled = format!("{SCHEME} signature={sig},nonce={NONCE} ,  timestamp=1763861400,appId=hosp01");
        assert_eq!(parse_authorization(&shuffled).expect("parses"), parsed);
    }

    #[test]
    fn known_vector() {
        // Computed independently with Python's hmac module.
        let sig = sign(
            "secret",
            "GET",
            "/v1/receipts/11060124/0000000001",
            1_700_000_000,
            NONCE,
            b"",
        );
        assert_eq!(
            string_to_sign("GET", "/x", 1, NONCE, b""),
            "GET\n/x\n1\nabcdef0123456789\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(sig, "W92kFPOE/UzHeM2GMY+Z5MdIgGdRgwoFL5Rx6+YmajA=");
    }

    #[test]
    fn rejects_malformed_headers() {
        let ok_sig = sign("s", "GET", "/", 1, NONCE, b"");
        for (header, expect) in [
            ("Bearer abc".to_owned(), HeaderError::WrongScheme),
            (
                format!("PJ1-HMAC-SHA256X appId=a, timestamp=1, nonce={NONCE}, signature={ok_sig}"),
                HeaderError::WrongScheme,
            ),
            (
                format!("{SCHEME} timestamp=1, nonce={NONCE}, signature={ok_sig}"),
                HeaderError::Malformed("appId is missing"),
            ),
            (
                format!("{SCHEME} appId=a, timestamp=-1, nonce={NONCE}, signature={ok_sig}"),
                HeaderError::Malformed("timestamp is not unix seconds"),
            ),
            (
                format!("{SCHEME} appId=a, timestamp=1, nonce=short, signature={ok_sig}"),
                HeaderError::Malformed("nonce is not 16-64 characters [A-Za-z0-9]"),
            ),
            (
                format!("{SCHEME} appId=a, timestamp=1, nonce={NONCE}, signature=!!"),
                HeaderError::Malformed("signature is not base64"),
            ),
            (
                format!("{SCHEME} appId=a, appId=b, timestamp=1, nonce={NONCE}, signature={ok_sig}"),
                HeaderError::Malformed("a parameter is repeated"),
            ),
        ] {
            assert_eq!(parse_authorization(&header), Err(expect), "{header}");
        }
    }
}
