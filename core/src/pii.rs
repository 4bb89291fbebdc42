//! Personal data and secrets at rest: AES-256-GCM sealing under a keyring whose key
//! ids allow rotation, keyed blind indexes for matching without decrypting, and
//! CSPRNG-generated secrets.
//!
//! A sealed value is text: `v1.<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`, so it
//! stores the same way in PostgreSQL and SQLite and names the key that opens it.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("no master key is configured")]
    NoKeys,
    #[error("master key entry {0:?} is not `<id>:<base64 of 32 bytes>`")]
    BadEntry(String),
    #[error("key id {0:?} is listed twice")]
    DuplicateId(String),
    #[error("the active key id {0:?} is not among the master keys")]
    UnknownActive(String),
    #[error("the blind index key is not base64 of at least 32 bytes")]
    BadBlindKey,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed under unknown key id {0:?}")]
    UnknownKey(String),
    #[error("sealed value failed authentication")]
    Tampered,
    #[error("sealed value is not the expected JSON")]
    Json,
}

/// Keys for sealing and blind indexes. Cheap to share behind an `Arc`.
pub struct Keyring {
    active: usize,
    keys: Vec<(String, LessSafeKey)>,
    /// Master key material, only ever used to derive purpose keys (HMAC-SHA256).
    material: Vec<hmac::Key>,
    blind: hmac::Key,
    rng: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Keyring")
            .field("active", &self.keys[self.active].0)
            .field("key_ids", &ids)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// `master_keys`: comma-separated `<id>:<base64 32 bytes>`; the active key is
    /// `active_id` or, when absent, the first listed (new keys go first).
    pub fn from_config(master_keys: &str, active_id: Option<&str>, blind_index_key: &str) -> Result<Self, KeyError> {
        let mut keys: Vec<(String, LessSafeKey)> = Vec::new();
        let mut derivation = Vec::new();
        for entry in master_keys.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, material) = entry
                .split_once(':')
                .ok_or_else(|| KeyError::BadEntry(redact_entry(entry)))?;
            let id = id.trim();
            let valid_id = !id.is_empty()
                && id.len() <= 16
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            let bytes = B64.decode(material.trim()).ok().filter(|b| b.len() == 32);
            let (true, Some(bytes)) = (valid_id, bytes) else {
                return Err(KeyError::BadEntry(redact_entry(entry)));
            };
            if keys.iter().any(|(k, _)| k == id) {
                return Err(KeyError::DuplicateId(id.to_owned()));
            }
            let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| KeyError::BadEntry(redact_entry(entry)))?;
            keys.push((id.to_owned(), LessSafeKey::new(key)));
            derivation.push(hmac::Key::new(hmac::HMAC_SHA256, &bytes));
        }
        if keys.is_empty() {
            return Err(KeyError::NoKeys);
        }
        let active = match active_id {
            Some(want) if !want.is_empty() => keys
                .iter()
                .position(|(id, _)| id == want)
                .ok_or_else(|| KeyError::UnknownActive(want.to_owned()))?,
            _ => 0,
        };
        let blind = B64
            .decode(blind_index_key.trim())
            .ok()
            .filter(|b| b.len() >= 32)
            .ok_or(KeyError::BadBlindKey)?;
        Ok(Self {
            active,
            keys,
            material: derivation,
            blind: hmac::Key::new(hmac::HMAC_SHA256, &blind),
            rng: SystemRandom::new(),
        })
    }

    pub fn active_key_id(&self) -> &str {
        &self.keys[self.active].0
    }

    /// Keys for one purpose (token signing, download links), derived from each
    /// master key so they rotate with it: `(key id, 32 bytes)`, the active key's
    /// first. Signing uses the first; verification accepts any, found by key id.
    pub fn derived_keys(&self, purpose: &str) -> Vec<(String, [u8; 32])> {
        let mut order: Vec<usize> = vec![self.active];
        order.extend((0..self.keys.len()).filter(|i| *i != self.active));
        order
            .into_iter()
            .map(|i| {
                let tag = hmac::sign(&self.material[i], format!("piaojia derived key\0{purpose}").as_bytes());
                let mut out = [0u8; 32];
                out.copy_from_slice(&tag.as_ref()[..32]);
                (self.keys[i].0.clone(), out)
            })
            .collect()
    }

    /// Encrypts `plaintext`; `purpose` is bound as associated data so a value sealed
    /// for one use cannot be replayed as another.
    pub fn seal(&self, plaintext: &[u8], purpose: &str) -> String {
        let (id, key) = &self.keys[self.active];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).expect("the system CSPRNG is available");
        let mut buf = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(purpose.as_bytes()),
            &mut buf,
        )
        .expect("AES-GCM sealing of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        format!("v1.{id}.{}", B64URL.encode(out))
    }

    pub fn open(&self, sealed: &str, purpose: &str) -> Result<Vec<u8>, OpenError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some("v1"), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(OpenError::Malformed);
        };
        let key = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, key)| key)
            .ok_or_else(|| OpenError::UnknownKey(id.to_owned()))?;
        let mut raw = B64URL.decode(body).map_err(|_| OpenError::Malformed)?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(OpenError::Malformed);
        }
        let mut ciphertext = raw.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&raw).map_err(|_| OpenError::Malformed)?;
        let plain = key
            .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut ciphertext)
            .map_err(|_| OpenError::Tampered)?;
        Ok(plain.to_vec())
    }

    pub fn seal_json<T: Serialize>(&self, value: &T, purpose: &str) -> String {
        let bytes = serde_json::to_vec(value).expect("serializing a plain struct to JSON cannot fail");
        self.seal(&bytes, purpose)
    }

    pub fn open_json<T: DeserializeOwned>(&self, sealed: &str, purpose: &str) -> Result<T, OpenError> {
        serde_json::from_slice(&self.open(sealed, purpose)?).map_err(|_| OpenError::Json)
    }

    /// Keyed hash of a normalized value for equality matching. `domain` separates
    /// uses (`id_card`, `phone`, `name`) so equal strings in different fields differ.
    pub fn blind_index(&self, domain: &str, value: &str) -> String {
        let normalized: String = value
            .chars()
            .filter(|c| !c.is_whitespace())
            .flat_map(char::to_uppercase)
            .collect();
        let mut ctx = hmac::Context::with_key(&self.blind);
        ctx.update(domain.as_bytes());
        ctx.update(&[0]);
        ctx.update(normalized.as_bytes());
        hex::encode(ctx.sign().as_ref())
    }
}

impl Keyring {
    /// Keyed hash of exact bytes (no normalization), e.g. a receipt's canonical
    /// content: stored beside plain-text details, an unkeyed hash would let anyone
    /// holding a dump confirm guesses of the personal data it covers.
    pub fn keyed_hash(&self, domain: &str, bytes: &[u8]) -> String {
        let mut ctx = hmac::Context::with_key(&self.blind);
        ctx.update(domain.as_bytes());
        ctx.update(&[0]);
        ctx.update(bytes);
        hex::encode(ctx.sign().as_ref())
    }
}

fn redact_entry(entry: &str) -> String {
    // Name the key id, never the key material.
    entry.split(':').next().unwrap_or("").chars().take(16).collect()
}

/// A new random secret for an app: 32 CSPRNG bytes as 43 base64url characters.
/// Every purpose a value is sealed under (bound as AES-GCM associated data, so a
/// value sealed for one purpose never opens as another), every blind-index and
/// keyed-hash domain, and every derived-key purpose: one name each, here, so
/// the side that seals and the side that opens can never drift apart.
pub mod purpose {
    /// A receipt's personal data (name, ID number, phone, …).
    pub const PAYER: &str = "payer";
    /// A payer's registered profile.
    pub const PAYER_PROFILE: &str = "payer-profile";
    /// A payer's own note on a wallet entry.
    pub const WALLET_NOTE: &str = "wallet-note";

    /// A claim's consented personal data, sealed for the one reimburser it goes to.
    pub fn claim_personal(reimburser_app_id: &str) -> String {
        format!("claim-personal:{reimburser_app_id}")
    }

    /// A claim's own fields (bank account, reference), sealed for its reimburser.
    pub fn claim_fields(reimburser_app_id: &str) -> String {
        format!("claim-fields:{reimburser_app_id}")
    }

    /// The HMAC secret of an issuer or reimburser app (also what signs its webhooks).
    pub fn app_secret(app_id: &str) -> String {
        format!("app-secret:{app_id}")
    }

    /// A WeChat app's secret, message token and EncodingAESKey.
    pub fn wechat_app(wechat_app_id: &str) -> String {
        format!("wechat-secret:{wechat_app_id}")
    }

    /// An event WeChat pushed to an app's message server, kept in the inbox.
    pub fn wechat_inbox(wechat_app_id: &str) -> String {
        format!("wechat-inbox:{wechat_app_id}")
    }

    /// Blind-index domains (matching without decrypting).
    pub mod index {
        pub const ID_CARD: &str = "id_card";
        pub const PHONE: &str = "phone";
        pub const NAME: &str = "name";
        pub const UNIONID: &str = "unionid";
    }

    /// Purposes of keys derived from the master key.
    pub mod key {
        /// Signs payers' access tokens (JWT, HS256).
        pub const PAYER_ACCESS_JWT: &str = "payer-access-jwt";
        /// Signs receipt download links.
        pub const DOWNLOAD_LINK: &str = "receipt-download-link";
        /// The signed "收入微信卡包" links of template messages.
        pub const CARD_LINK: &str = "card-package-link";
    }

    /// Keyed-hash domains.
    pub mod hash {
        /// A receipt's canonical content (idempotency of pushes).
        pub const RECEIPT_CONTENT: &str = "receipt_content";
        pub const REFRESH_TOKEN: &str = "refresh_token";
        /// The cookie token of an official-account page session.
        pub const WEB_SESSION: &str = "web_session";
        /// The CSRF token of a page session's forms (derived from its token).
        pub const WEB_CSRF: &str = "web_csrf";
        /// The OAuth `state` of a started page sign-in (bound to a browser cookie).
        pub const WEB_OAUTH_STATE: &str = "web_oauth_state";
        /// A temporary parametric QR code's scene value.
        pub const QR_SCENE: &str = "qr_scene";
        /// The key of the sandbox's "what this payer sees" page (`piaojia demo`).
        pub const SANDBOX_PAYER_PAGE: &str = "sandbox_payer_page";
    }
}

pub fn generate_secret() -> String {
    B64URL.encode(random_bytes::<32>())
}

/// A new 256-bit key as standard base64 (for `master_keys` and the blind index key).
pub fn generate_key() -> String {
    B64.encode(random_bytes::<32>())
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .expect("the system CSPRNG is available");
    out
}

/// A random alphanumeric string (nonces, request ids).
pub fn random_alnum(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; len];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system CSPRNG is available");
    // 256 % 62 bias is irrelevant for nonces; uniqueness, not uniformity, is what matters.
    bytes
        .iter()
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_with(keys: &str, active: Option<&str>) -> Keyring {
        Keyring::from_config(keys, active, &generate_key()).expect("valid keyring")
    }

    #[test]
    fn seal_open_and_rotation() {
        let (k1, k2) = (generate_key(), generate_key());
        let old = ring_with(&format!("k1:{k1}"), None);
        let sealed = old.seal("张三 110105194912310021".as_bytes(), "payer");
        assert!(sealed.starts_with("v1.k1."));
        assert!(!sealed.contains("110105"));
        assert_eq!(
            old.open(&sealed, "payer").expect("opens"),
            "张三 110105194912310021".as_bytes()
        );
        assert_eq!(old.open(&sealed, "app-secret"), Err(OpenError::Tampered));

        // After rotation the new key seals and the old one still opens.
        let new = Keyring::from_config(&format!("k2:{k2},k1:{k1}"), None, &generate_key()).expect("valid");
        assert_eq!(new.active_key_id(), "k2");
        assert_eq!(
            new.open(&sealed, "payer").expect("old value opens"),
            "张三 110105194912310021".as_bytes()
        );
        assert!(new.seal(b"x", "payer").starts_with("v1.k2."));
        let without_k1 = ring_with(&format!("k2:{k2}"), None);
        assert_eq!(
            without_k1.open(&sealed, "payer"),
            Err(OpenError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn tampering_is_detected() {
        let ring = ring_with(&format!("k1:{}", generate_key()), None);
        let sealed = ring.seal(b"13800138000", "payer");
        let mut chars: Vec<char> = sealed.chars().collect();
        let last = chars.len() - 3;
        chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
        let altered: String = chars.into_iter().collect();
        assert_eq!(ring.open(&altered, "payer"), Err(OpenError::Tampered));
        assert_eq!(ring.open("v2.k1.xxx", "payer"), Err(OpenError::Malformed));
    }

    #[test]
    fn derived_keys_follow_the_master_keys() {
        let (k1, k2) = (generate_key(), generate_key());
        let old = ring_with(&format!("k1:{k1}"), None);
        let rotated = ring_with(&format!("k2:{k2},k1:{k1}"), None);
        let a = old.derived_keys("jwt");
        let b = rotated.derived_keys("jwt");
        assert_eq!(a.len(), 1);
        assert_eq!(b[0].0, "k2", "the active key signs");
        assert_eq!(b[1], a[0], "old keys still verify after a rotation");
        assert_ne!(old.derived_keys("download")[0].1, a[0].1, "purposes are separated");
    }

    #[test]
    fn blind_index_is_keyed_normalized_and_domain_separated() {
        let blind = generate_key();
        let keys = format!("k1:{}", generate_key());
        let a = Keyring::from_config(&keys, None, &blind).expect("valid");
        let b = Keyring::from_config(&keys, None, &blind).expect("valid");
        let other = Keyring::from_config(&keys, None, &generate_key()).expect("valid");
        assert_eq!(
            a.blind_index("id_card", "11010519491231002x"),
            b.blind_index("id_card", " 11010519491231002X")
        );
        assert_ne!(
            a.blind_index("id_card", "11010519491231002X"),
            other.blind_index("id_card", "11010519491231002X")
        );
        assert_ne!(a.blind_index("id_card", "1"), a.blind_index("phone", "1"));
    }

    #[test]
    fn config_errors_name_the_problem_not_the_key() {
        assert_eq!(
            Keyring::from_config("", None, &generate_key()).err(),
            Some(KeyError::NoKeys)
        );
        let err = Keyring::from_config("k1:c2hvcnQ=", None, &generate_key()).err();
        assert_eq!(err, Some(KeyError::BadEntry("k1".into())));
        let k = generate_key();
        assert_eq!(
            Keyring::from_config(&format!("k1:{k}"), Some("k9"), &generate_key()).err(),
            Some(KeyError::UnknownActive("k9".into()))
        );
        assert_eq!(
            Keyring::from_config(&format!("k1:{k}"), None, "short").err(),
            Some(KeyError::BadBlindKey)
        );
    }

    #[test]
    fn generated_values_are_unique() {
        assert_ne!(generate_secret(), generate_secret());
        assert_eq!(generate_secret().len(), 43);
        assert_eq!(random_alnum(24).len(), 24);
    }
}
