//! Message-server signatures and secure-mode (AES) envelopes, written independently of the
//! client crate so the simulator can catch mistakes in it.
//!
//! AES-256-CBC, key = base64(EncodingAESKey + "="), IV = key[..16];
//! plaintext = random(16) ‖ len(4, BE) ‖ msg ‖ appid, PKCS#7 padded to a multiple of 32.

use aes::Aes256;
use base64::Engine as _;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use sha1::{Digest, Sha1};

const KEY_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);
const B64: GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// `sha1(sorted(parts).join(""))` in lowercase hex: `signature` and `msg_signature`.
pub fn sha1_sorted(parts: &[&str]) -> String {
    let mut parts = parts.to_vec();
    parts.sort_unstable();
    let mut h = Sha1::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The plain `signature` query parameter.
pub fn signature(token: &str, timestamp: &str, nonce: &str) -> String {
    sha1_sorted(&[token, timestamp, nonce])
}

/// The secure-mode `msg_signature` query parameter.
pub fn msg_signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    sha1_sorted(&[token, timestamp, nonce, encrypt])
}

fn key(encoding_aes_key: &str) -> Option<[u8; 32]> {
    if encoding_aes_key.len() != 43 {
        return None;
    }
    KEY_B64.decode(format!("{encoding_aes_key}=")).ok()?.try_into().ok()
}

/// Encrypts `msg` for `appid` with the given random prefix; `None` if the key is malformed.
pub fn seal_with(encoding_aes_key: &str, appid: &str, msg: &str, random16: [u8; 16]) -> Option<String> {
    let key = key(encoding_aes_key)?;
    let len = u32::try_from(msg.len()).ok()?;
    let mut buf = Vec::with_capacity(msg.len() + appid.len() + 52);
    buf.extend_from_slice(&random16);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(msg.as_bytes());
    buf.extend_from_slice(appid.as_bytes());
    let pad = 32 - buf.len() % 32;
    buf.resize(buf.len() + pad, u8::try_from(pad).ok()?);
    let n = buf.len();
    let enc = cbc::Encryptor::<Aes256>::new_from_slices(&key, &key[..16]).ok()?;
    let ct = enc.encrypt_padded::<NoPadding>(&mut buf, n).ok()?;
    Some(B64.encode(ct))
}

/// Encrypts `msg` for `appid` with a fresh random prefix.
pub fn seal(encoding_aes_key: &str, appid: &str, msg: &str) -> Option<String> {
    seal_with(encoding_aes_key, appid, msg, crate::ids::bytes::<16>())
}

/// Decrypts an `Encrypt` value into `(message, appid)`; `None` if anything is malformed.
pub fn open(encoding_aes_key: &str, encrypt: &str) -> Option<(String, String)> {
    let key = key(encoding_aes_key)?;
    let mut buf = B64.decode(encrypt.trim()).ok()?;
    if buf.is_empty() || !buf.len().is_multiple_of(16) {
        return None;
    }
    let dec = cbc::Decryptor::<Aes256>::new_from_slices(&key, &key[..16]).ok()?;
    let plain = dec.decrypt_padded::<NoPadding>(&mut buf).ok()?;
    let pad = usize::from(*plain.last()?);
    if !(1..=32).contains(&pad)
        || pad > plain.len()
        || plain[plain.len() - pad..].iter().any(|&b| usize::from(b) != pad)
    {
        return None;
    }
    let body = plain.get(..plain.len() - pad)?;
    let len = usize::try_from(u32::from_be_bytes(body.get(16..20)?.try_into().ok()?)).ok()?;
    let rest = body.get(20..)?;
    let msg = rest.get(..len)?;
    let appid = rest.get(len..)?;
    Some((
        String::from_utf8(msg.to_vec()).ok()?,
        String::from_utf8(appid.to_vec()).ok()?,
    ))
}
