//! Message-server signatures and secure-mode crypto (DOMAIN.md §4).
//!
//! Secure mode: AES-256-CBC, key = base64(EncodingAESKey + "="), IV = first 16 key bytes,
//! plaintext = random(16) ‖ len(4, BE) ‖ msg ‖ appid, PKCS#7 padded to a multiple of 32.

use aes::Aes256;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use cbc::cipher::block_padding::NoPadding;
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use ring::rand::{SecureRandom, SystemRandom};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

/// WeChat pads to 32 bytes, not the AES block size, so standard unpadders reject it.
const PAD_BLOCK: usize = 32;
const RANDOM_LEN: usize = 16;
const LEN_PREFIX: usize = 4;

/// The 43-char key plus "=" has non-zero trailing bits, which strict base64 refuses.
const KEY_ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);
const B64: GeneralPurpose = base64::engine::general_purpose::STANDARD;

type Enc = cbc::Encryptor<Aes256>;
type Dec = cbc::Decryptor<Aes256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptError {
    #[error("EncodingAESKey must be 43 base64 characters")]
    BadKey,
    #[error("Encrypt is not valid base64")]
    Base64,
    #[error("ciphertext length is not a positive multiple of 16")]
    CipherLength,
    #[error("bad padding")]
    Padding,
    #[error("bad inner length")]
    Length,
    #[error("message is not UTF-8")]
    Utf8,
    #[error("appid mismatch")]
    AppId,
}

fn sha1_sorted(parts: &mut [&str]) -> String {
    parts.sort_unstable();
    let mut h = Sha1::new();
    for p in parts.iter() {
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// GET verification and plain-mode POST signature: sha1 of sorted(token, timestamp, nonce).
pub fn signature(token: &str, timestamp: &str, nonce: &str) -> String {
    sha1_sorted(&mut [token, timestamp, nonce])
}

/// Secure-mode signature: sha1 of sorted(token, timestamp, nonce, Encrypt).
pub fn msg_signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str) -> String {
    sha1_sorted(&mut [token, timestamp, nonce, encrypt])
}

pub fn verify_signature(token: &str, timestamp: &str, nonce: &str, given: &str) -> bool {
    ct_eq(given.as_bytes(), signature(token, timestamp, nonce).as_bytes())
}

pub fn verify_msg_signature(token: &str, timestamp: &str, nonce: &str, encrypt: &str, given: &str) -> bool {
    ct_eq(
        given.as_bytes(),
        msg_signature(token, timestamp, nonce, encrypt).as_bytes(),
    )
}

/// One account's secure-mode settings. `Debug` omits the key and token.
#[derive(Clone)]
pub struct MsgCrypt {
    token: String,
    key: [u8; 32],
    appid: String,
}

impl std::fmt::Debug for MsgCrypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgCrypt")
            .field("appid", &self.appid)
            .finish_non_exhaustive()
    }
}

impl MsgCrypt {
    pub fn new(token: &str, encoding_aes_key: &str, appid: &str) -> Result<Self, CryptError> {
        if encoding_aes_key.len() != 43 {
            return Err(CryptError::BadKey);
        }
        let raw = KEY_ENGINE
            .decode(format!("{encoding_aes_key}="))
            .map_err(|_| CryptError::BadKey)?;
        let key: [u8; 32] = raw.try_into().map_err(|_| CryptError::BadKey)?;
        Ok(Self {
            token: token.to_owned(),
            key,
            appid: appid.to_owned(),
        })
    }

    pub fn appid(&self) -> &str {
        &self.appid
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    fn iv(&self) -> &[u8] {
        &self.key[..16]
    }

    pub fn signature(&self, timestamp: &str, nonce: &str) -> String {
        signature(&self.token, timestamp, nonce)
    }

    pub fn msg_signature(&self, timestamp: &str, nonce: &str, encrypt: &str) -> String {
        msg_signature(&self.token, timestamp, nonce, encrypt)
    }

    pub fn verify_signature(&self, timestamp: &str, nonce: &str, given: &str) -> bool {
        verify_signature(&self.token, timestamp, nonce, given)
    }

    pub fn verify_msg_signature(&self, timestamp: &str, nonce: &str, encrypt: &str, given: &str) -> bool {
        verify_msg_signature(&self.token, timestamp, nonce, encrypt, given)
    }

    /// Decrypts an `Encrypt` field and checks that it was meant for this appid.
    /// Verify `msg_signature` first; CBC alone does not authenticate.
    pub fn decrypt(&self, encrypt_b64: &str) -> Result<String, CryptError> {
        let mut buf = B64.decode(encrypt_b64.trim()).map_err(|_| CryptError::Base64)?;
        if buf.is_empty() || !buf.len().is_multiple_of(16) {
            return Err(CryptError::CipherLength);
        }
        let dec = Dec::new_from_slices(&self.key, self.iv()).map_err(|_| CryptError::BadKey)?;
        let plain = dec
            .decrypt_padded::<NoPadding>(&mut buf)
            .map_err(|_| CryptError::CipherLength)?;

        let pad = usize::from(*plain.last().ok_or(CryptError::Padding)?);
        if !(1..=PAD_BLOCK).contains(&pad) || pad > plain.len() {
            return Err(CryptError::Padding);
        }
        let (body, padding) = plain.split_at(plain.len() - pad);
        if padding.iter().any(|&b| usize::from(b) != pad) {
            return Err(CryptError::Padding);
        }
        if body.len() < RANDOM_LEN + LEN_PREFIX {
            return Err(CryptError::Length);
        }
        let len_bytes: [u8; 4] = body[RANDOM_LEN..RANDOM_LEN + LEN_PREFIX]
            .try_into()
            .map_err(|_| CryptError::Length)?;
        let msg_len = usize::try_from(u32::from_be_bytes(len_bytes)).map_err(|_| CryptError::Length)?;
        let rest = &body[RANDOM_LEN + LEN_PREFIX..];
        if msg_len > rest.len() {
            return Err(CryptError::Length);
        }
        let (msg, appid) = rest.split_at(msg_len);
        if !ct_eq(appid, self.appid.as_bytes()) {
            return Err(CryptError::AppId);
        }
        String::from_utf8(msg.to_vec()).map_err(|_| CryptError::Utf8)
    }

    /// Deterministic encryption for tests and test vectors.
    pub fn encrypt_with_random(&self, plaintext: &str, random16: &[u8; 16]) -> String {
        let msg = plaintext.as_bytes();
        let unpadded = RANDOM_LEN + LEN_PREFIX + msg.len() + self.appid.len();
        let pad = PAD_BLOCK - unpadded % PAD_BLOCK;
        let mut buf = Vec::with_capacity(unpadded + pad);
        buf.extend_from_slice(random16);
        // WeChat messages are far below 4 GiB; saturate rather than panic on absurd input.
        buf.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(u32::MAX).to_be_bytes());
        buf.extend_from_slice(msg);
        buf.extend_from_slice(self.appid.as_bytes());
        // pad is in 1..=32, so the cast is lossless.
        buf.resize(unpadded + pad, pad as u8);
        let len = buf.len();
        let enc = Enc::new_from_slices(&self.key, self.iv()).expect("key is 32 bytes and IV 16");
        let ct = enc
            .encrypt_padded::<NoPadding>(&mut buf, len)
            .expect("buffer is a multiple of the block size");
        B64.encode(ct)
    }

    pub fn encrypt(&self, plaintext: &str) -> String {
        let mut random = [0u8; 16];
        // The OS RNG failing leaves nothing sensible to do.
        SystemRandom::new().fill(&mut random).expect("system random source");
        self.encrypt_with_random(plaintext, &random)
    }

    /// The secure-mode passive-reply envelope.
    pub fn encrypted_reply_xml(&self, plaintext: &str, timestamp: &str, nonce: &str) -> String {
        self.reply_xml_for(&self.encrypt(plaintext), timestamp, nonce)
    }

    /// Deterministic passive-reply envelope: `plaintext` encrypted with `random16`, then signed.
    pub fn sealed_reply_with_random(
        &self,
        plaintext: &str,
        timestamp: &str,
        nonce: &str,
        random16: &[u8; 16],
    ) -> String {
        self.reply_xml_for(&self.encrypt_with_random(plaintext, random16), timestamp, nonce)
    }

    /// Envelope around an already-encrypted payload (deterministic; used with `encrypt_with_random`).
    pub fn reply_xml_for(&self, encrypt: &str, timestamp: &str, nonce: &str) -> String {
        let sig = self.msg_signature(timestamp, nonce, encrypt);
        // base64 and hex never contain "]]>"; timestamp and nonce come from the caller.
        format!(
            "<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt><MsgSignature><![CDATA[{sig}]]></MsgSignature>\
             <TimeStamp>{}</TimeStamp><Nonce><![CDATA[{}]]></Nonce></xml>",
            quick_xml::escape::escape(timestamp),
            crate::event::cdata_text(nonce)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn vectors() -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors/wechat_vectors.json");
        let text = std::fs::read_to_string(&path).expect("read vectors");
        serde_json::from_str(&text).expect("vectors are JSON")
    }

    fn s<'a>(v: &'a Value, k: &str) -> &'a str {
        v[k].as_str().unwrap_or_else(|| panic!("missing {k}"))
    }

    fn random16(v: &Value) -> [u8; 16] {
        s(v, "random16").as_bytes().try_into().expect("16 ascii bytes")
    }

    #[test]
    fn url_verify_plain() {
        let all = vectors();
        let v = &all["url_verify_plain"];
        let sig = signature(s(v, "token"), s(v, "timestamp"), s(v, "nonce"));
        assert_eq!(sig, s(v, "signature"));
        assert!(verify_signature(
            s(v, "token"),
            s(v, "timestamp"),
            s(v, "nonce"),
            s(v, "signature")
        ));
        assert!(!verify_signature(
            s(v, "token"),
            s(v, "timestamp"),
            "1",
            s(v, "signature")
        ));
    }

    #[test]
    fn post_plain_signature() {
        let all = vectors();
        let v = &all["post_plain_signature"];
        assert_eq!(
            signature(s(v, "token"), s(v, "timestamp"), s(v, "nonce")),
            s(v, "signature")
        );
    }

    #[test]
    fn secure_inbound() {
        let all = vectors();
        let v = &all["secure_inbound"];
        let c = MsgCrypt::new(s(v, "token"), s(v, "encoding_aes_key"), s(v, "appid")).expect("key");
        assert_eq!(c.signature(s(v, "timestamp"), s(v, "nonce")), s(v, "signature_param"));
        assert_eq!(
            c.msg_signature(s(v, "timestamp"), s(v, "nonce"), s(v, "Encrypt")),
            s(v, "msg_signature")
        );
        assert!(c.verify_msg_signature(s(v, "timestamp"), s(v, "nonce"), s(v, "Encrypt"), s(v, "msg_signature")));
        let plain = c.decrypt(s(v, "Encrypt")).expect("decrypts");
        assert_eq!(plain, s(v, "plaintext"));
        assert_eq!(plain.len() as u64, v["msg_len"].as_u64().expect("msg_len"));
        // The vector's pad byte (19) exceeds 16: a 16-byte PKCS#7 unpadder would fail here.
        assert_eq!(v["pad_byte"].as_u64(), Some(19));
        // Re-encrypting with the recorded random reproduces the ciphertext.
        assert_eq!(c.encrypt_with_random(&plain, &random16(v)), s(v, "Encrypt"));
    }

    #[test]
    fn secure_reply() {
        let all = vectors();
        let v = &all["secure_reply"];
        let c = MsgCrypt::new(s(v, "token"), s(v, "encoding_aes_key"), s(v, "appid")).expect("key");
        let enc = c.encrypt_with_random(s(v, "plaintext"), &random16(v));
        assert_eq!(enc, s(v, "Encrypt"));
        assert_eq!(
            c.msg_signature(s(v, "TimeStamp"), s(v, "Nonce"), &enc),
            s(v, "MsgSignature")
        );
        assert_eq!(c.decrypt(&enc).expect("round trip"), s(v, "plaintext"));
        let xml = c.reply_xml_for(&enc, s(v, "TimeStamp"), s(v, "Nonce"));
        assert!(xml.contains(&format!("<Encrypt><![CDATA[{}]]></Encrypt>", s(v, "Encrypt"))));
        assert!(xml.contains(&format!(
            "<MsgSignature><![CDATA[{}]]></MsgSignature>",
            s(v, "MsgSignature")
        )));
        assert!(xml.contains(&format!("<TimeStamp>{}</TimeStamp>", s(v, "TimeStamp"))));
    }

    #[test]
    fn encrypted_reply_xml_round_trips() {
        let all = vectors();
        let v = &all["secure_reply"];
        let c = MsgCrypt::new(s(v, "token"), s(v, "encoding_aes_key"), s(v, "appid")).expect("key");
        let xml = c.encrypted_reply_xml("success", "1713424427", "415670741");
        let env = crate::event::parse_event(&xml).expect("envelope parses");
        let enc = env.encrypt.expect("Encrypt field");
        let sig = env.msg_signature.expect("MsgSignature");
        assert!(c.verify_msg_signature("1713424427", "415670741", &enc, &sig));
        assert_eq!(c.decrypt(&enc).expect("decrypts"), "success");
    }

    #[test]
    fn tencent_java_encrypt() {
        let all = vectors();
        let v = &all["tencent_sample_java_encrypt"];
        let c = MsgCrypt::new(s(v, "token"), s(v, "encoding_aes_key"), s(v, "appid")).expect("key");
        assert_eq!(c.encrypt_with_random(s(v, "plaintext"), &random16(v)), s(v, "Encrypt"));
        assert_eq!(c.decrypt(s(v, "Encrypt")).expect("decrypts"), s(v, "plaintext"));
    }

    #[test]
    fn tencent_python_decrypt() {
        let all = vectors();
        let v = &all["tencent_sample_python_decrypt"];
        let c = MsgCrypt::new(s(v, "token"), s(v, "encoding_aes_key"), s(v, "appid")).expect("key");
        assert!(c.verify_msg_signature(s(v, "timestamp"), s(v, "nonce"), s(v, "Encrypt"), s(v, "msg_signature")));
        let plain = c.decrypt(s(v, "Encrypt")).expect("decrypts");
        assert_eq!(plain, s(v, "plaintext"));
        let ev = crate::event::parse_event(&plain).expect("parses");
        assert_eq!(ev.msg_id.as_deref(), Some("6054768590064713728"));
        assert_eq!(ev.dedup_key(), "6054768590064713728");
    }

    #[test]
    fn wecom_echostr_same_layout() {
        let all = vectors();
        let v = &all["wecom_verify_url_encrypted_echostr"];
        let c = MsgCrypt::new(s(v, "token"), s(v, "encoding_aes_key"), s(v, "receive_id")).expect("key");
        assert!(c.verify_msg_signature(s(v, "timestamp"), s(v, "nonce"), s(v, "echostr"), s(v, "msg_signature")));
        assert_eq!(c.decrypt(s(v, "echostr")).expect("decrypts"), s(v, "echostr_plain"));
    }

    fn inbound() -> (MsgCrypt, String) {
        let all = vectors();
        let v = &all["secure_inbound"];
        let c = MsgCrypt::new(s(v, "token"), s(v, "encoding_aes_key"), s(v, "appid")).expect("key");
        (c, s(v, "Encrypt").to_owned())
    }

    #[test]
    fn rejects_wrong_appid() {
        let (c, enc) = inbound();
        let other = MsgCrypt::new(
            "AAAAA",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "wx0000000000000000",
        )
        .expect("key");
        assert_eq!(other.decrypt(&enc), Err(CryptError::AppId));
        assert!(c.decrypt(&enc).is_ok());
    }

    #[test]
    fn rejects_tampering() {
        let (c, enc) = inbound();
        // Flip a bit in the last block: padding or appid breaks.
        let mut raw = B64.decode(&enc).expect("b64");
        let n = raw.len();
        raw[n - 20] ^= 0x01;
        let bad = B64.encode(&raw);
        assert!(c.decrypt(&bad).is_err());
        assert!(!c.verify_msg_signature(
            "1714112445",
            "415670741",
            &bad,
            "046e02f8204d34f8ba5fa3b1db94908f3df2e9b3"
        ));
        // Truncated to a non-block length, and not base64 at all.
        assert_eq!(c.decrypt(&B64.encode(&raw[..n - 3])), Err(CryptError::CipherLength));
        assert_eq!(c.decrypt("!!!"), Err(CryptError::Base64));
        assert_eq!(c.decrypt(""), Err(CryptError::CipherLength));
    }

    fn encrypt_raw(c: &MsgCrypt, plain: &[u8]) -> String {
        let mut buf = plain.to_vec();
        let len = buf.len();
        let enc = Enc::new_from_slices(&c.key, c.iv()).expect("key");
        B64.encode(enc.encrypt_padded::<NoPadding>(&mut buf, len).expect("aligned"))
    }

    #[test]
    fn rejects_bad_padding() {
        let (c, _) = inbound();
        let appid = c.appid().as_bytes().to_vec();
        let mut body = vec![0u8; 16];
        body.extend_from_slice(&2u32.to_be_bytes());
        body.extend_from_slice(b"hi");
        body.extend_from_slice(&appid);
        // 16 + 4 + 2 + 18 = 40 → pad 24 to reach 64.
        assert_eq!(body.len(), 40);
        let mut good = body.clone();
        good.resize(64, 24);
        assert_eq!(c.decrypt(&encrypt_raw(&c, &good)).expect("valid"), "hi");

        let mut unequal = good.clone();
        unequal[50] = 23;
        assert_eq!(c.decrypt(&encrypt_raw(&c, &unequal)), Err(CryptError::Padding));

        let mut zero = good.clone();
        zero[63] = 0;
        assert_eq!(c.decrypt(&encrypt_raw(&c, &zero)), Err(CryptError::Padding));

        let mut too_big = body.clone();
        too_big.resize(96, 33);
        assert_eq!(c.decrypt(&encrypt_raw(&c, &too_big)), Err(CryptError::Padding));

        // Inner length pointing past the end.
        let mut long = good.clone();
        long[16..20].copy_from_slice(&1000u32.to_be_bytes());
        assert_eq!(c.decrypt(&encrypt_raw(&c, &long)), Err(CryptError::Length));
    }

    #[test]
    fn rejects_bad_key() {
        assert_eq!(MsgCrypt::new("t", "short", "wx").err(), Some(CryptError::BadKey));
        assert_eq!(
            MsgCrypt::new("t", &"*".repeat(43), "wx").err(),
            Some(CryptError::BadKey)
        );
    }

    #[test]
    fn random_encrypt_round_trips() {
        let (c, _) = inbound();
        let a = c.encrypt("<xml>你好</xml>");
        let b = c.encrypt("<xml>你好</xml>");
        assert_ne!(a, b);
        assert_eq!(c.decrypt(&a).expect("decrypt"), "<xml>你好</xml>");
    }
}
