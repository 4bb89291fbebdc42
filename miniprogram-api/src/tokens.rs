//! Payers' credentials: the access JWT (HS256 under a key derived from the master
//! keys, named by `kid` so keys rotate with them), opaque refresh tokens stored as
//! keyed hashes, and signed download links (also JWTs, for another audience).

use piaojia_core::pii::purpose;
use piaojia_web::error::ErrorCode;
use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use piaojia_core::pii::{self, Keyring};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const ISSUER: &str = "piaojia";
const ACCESS_AUDIENCE: &str = "piaojia-miniprogram";
const DOWNLOAD_AUDIENCE: &str = "piaojia-download";
/// Clock differences between gateways; small, since access tokens live minutes.
const LEEWAY_SECS: u64 = 5;

/// Why a token was refused. Only the code reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid")]
    Invalid,
}

impl TokenError {
    pub fn code(self) -> ErrorCode {
        match self {
            TokenError::Expired => ErrorCode::TokenExpired,
            TokenError::Invalid => ErrorCode::TokenInvalid,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct AccessClaims {
    iss: String,
    aud: String,
    sub: Uuid,
    /// The mini-program (WeChat appid) the payer signed in through: its scope.
    app: String,
    iat: i64,
    exp: i64,
    jti: Uuid,
}

#[derive(Debug, Serialize, Deserialize)]
struct DownloadClaims {
    iss: String,
    aud: String,
    sub: Uuid,
    app: String,
    /// The receipt the link is for.
    rid: Uuid,
    iat: i64,
    exp: i64,
}

/// A verified access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessGrant {
    pub payer_id: Uuid,
    pub app_id: String,
}

/// A verified download link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadGrant {
    pub payer_id: Uuid,
    pub app_id: String,
    pub receipt_id: Uuid,
}

struct KeySet {
    kid: String,
    encoding: EncodingKey,
    decoding: HashMap<String, DecodingKey>,
}

impl KeySet {
    fn derive(keyring: &Keyring, purpose: &str) -> Self {
        let keys = keyring.derived_keys(purpose);
        let kid = keys.first().map(|(id, _)| id.clone()).unwrap_or_default();
        let encoding = EncodingKey::from_secret(keys.first().map_or(&[0u8; 32][..], |(_, k)| &k[..]));
        let decoding = keys
            .iter()
            .map(|(id, k)| (id.clone(), DecodingKey::from_secret(k)))
            .collect();
        Self {
            kid,
            encoding,
            decoding,
        }
    }

    fn sign<T: Serialize>(&self, claims: &T) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("HS256 signing of plain claims cannot fail")
    }

    fn verify<T: serde::de::DeserializeOwned>(&self, token: &str, audience: &str) -> Result<T, TokenError> {
        // The header names the key; an unknown kid is a token we did not sign.
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.decoding.get(kid))
            .ok_or(TokenError::Invalid)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_audience(&[audience]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        jsonwebtoken::decode::<T>(token, key, &validation)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })
    }
}

/// The keys payers' tokens and download links are signed with.
pub struct TokenKeys {
    access: KeySet,
    download: KeySet,
}

impl TokenKeys {
    pub fn new(keyring: &Keyring) -> Self {
        Self {
            access: KeySet::derive(keyring, purpose::key::PAYER_ACCESS_JWT),
            download: KeySet::derive(keyring, purpose::key::DOWNLOAD_LINK),
        }
    }

    pub fn issue_access(&self, payer_id: Uuid, app_id: &str, now: DateTime<Utc>, ttl_secs: u64) -> String {
        self.access.sign(&AccessClaims {
            iss: ISSUER.to_owned(),
            aud: ACCESS_AUDIENCE.to_owned(),
            sub: payer_id,
            app: app_id.to_owned(),
            iat: now.timestamp(),
            exp: now.timestamp() + ttl_secs as i64,
            jti: Uuid::now_v7(),
        })
    }

    pub fn verify_access(&self, token: &str) -> Result<AccessGrant, TokenError> {
        let c: AccessClaims = self.access.verify(token, ACCESS_AUDIENCE)?;
        Ok(AccessGrant {
            payer_id: c.sub,
            app_id: c.app,
        })
    }

    pub fn issue_download(&self, grant: &DownloadGrant, now: DateTime<Utc>, ttl_secs: u64) -> String {
        self.download.sign(&DownloadClaims {
            iss: ISSUER.to_owned(),
            aud: DOWNLOAD_AUDIENCE.to_owned(),
            sub: grant.payer_id,
            app: grant.app_id.clone(),
            rid: grant.receipt_id,
            iat: now.timestamp(),
            exp: now.timestamp() + ttl_secs as i64,
        })
    }

    pub fn verify_download(&self, token: &str) -> Result<DownloadGrant, TokenError> {
        let c: DownloadClaims = self.download.verify(token, DOWNLOAD_AUDIENCE)?;
        Ok(DownloadGrant {
            payer_id: c.sub,
            app_id: c.app,
            receipt_id: c.rid,
        })
    }
}

/// A new opaque refresh token (256 random bits) and its keyed hash, which is
/// all the database ever holds.
pub fn new_refresh_token(keyring: &Keyring) -> (String, String) {
    let token = B64URL.encode(pii::random_bytes::<32>());
    let hash = refresh_token_hash(keyring, &token);
    (token, hash)
}

pub fn refresh_token_hash(keyring: &Keyring, token: &str) -> String {
    keyring.keyed_hash(purpose::hash::REFRESH_TOKEN, token.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(keys: &str) -> Keyring {
        Keyring::from_config(keys, None, &pii::generate_key()).expect("keyring")
    }

    #[test]
    fn access_tokens_verify_and_refuse_tampering() {
        let k1 = pii::generate_key();
        let keys = TokenKeys::new(&keyring(&format!("k1:{k1}")));
        let payer = Uuid::now_v7();
        let token = keys.issue_access(payer, "wx1", Utc::now(), 900);
        assert_eq!(
            keys.verify_access(&token),
            Ok(AccessGrant {
                payer_id: payer,
                app_id: "wx1".into()
            })
        );
        // A download link is no access token, nor the reverse.
        assert_eq!(keys.verify_download(&token), Err(TokenError::Invalid));
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = B64URL.encode(
            serde_json::to_vec(&serde_json::json!({"iss":"piaojia","aud":"piaojia-miniprogram","sub":Uuid::now_v7(),"app":"wx1","iat":0,"exp":9_999_999_999_i64,"jti":Uuid::now_v7()}))
                .expect("json"),
        );
        assert_eq!(
            keys.verify_access(&parts.join(".")),
            Err(TokenError::Invalid),
            "altered"
        );
        let old = keys.issue_access(payer, "wx1", Utc::now() - chrono::Duration::hours(1), 900);
        assert_eq!(keys.verify_access(&old), Err(TokenError::Expired));
        // alg none, and a token signed with another key.
        let none = format!(
            "{}.{}.",
            B64URL.encode(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
            parts[1]
        );
        assert_eq!(keys.verify_access(&none), Err(TokenError::Invalid));
        let other = TokenKeys::new(&keyring(&format!("k1:{}", pii::generate_key())));
        assert_eq!(
            keys.verify_access(&other.issue_access(payer, "wx1", Utc::now(), 900)),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn tokens_survive_a_master_key_rotation() {
        let (k1, k2) = (pii::generate_key(), pii::generate_key());
        let before = TokenKeys::new(&keyring(&format!("k1:{k1}")));
        let after = TokenKeys::new(&keyring(&format!("k2:{k2},k1:{k1}")));
        let payer = Uuid::now_v7();
        let token = before.issue_access(payer, "wx1", Utc::now(), 900);
        assert!(after.verify_access(&token).is_ok());
        let dl = DownloadGrant {
            payer_id: payer,
            app_id: "wx1".into(),
            receipt_id: Uuid::now_v7(),
        };
        let link = after.issue_download(&dl, Utc::now(), 60);
        assert_eq!(after.verify_download(&link), Ok(dl));
        assert_eq!(
            before.verify_download(&link),
            Err(TokenError::Invalid),
            "k2 unknown before"
        );
    }
}
