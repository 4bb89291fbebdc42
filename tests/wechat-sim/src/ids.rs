//! Random identifiers shaped like WeChat's.

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};

const URLSAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub(crate) fn bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).expect("system random source");
    b
}

fn urlsafe(len: usize) -> String {
    let mut raw = vec![0u8; len];
    SystemRandom::new().fill(&mut raw).expect("system random source");
    raw.iter().map(|b| char::from(URLSAFE[usize::from(b % 64)])).collect()
}

/// An access token: `<n>_` and 132 URL-safe characters, like the real 136-character ones.
pub(crate) fn access_token() -> String {
    format!("95_{}", urlsafe(133))
}

/// A wx.login / OAuth / phone code.
pub(crate) fn code() -> String {
    urlsafe(32)
}

/// An openid-shaped string (28 characters, `[A-Za-z0-9_-]`).
pub fn new_openid() -> String {
    format!("o{}", urlsafe(27))
}

pub(crate) fn session_key() -> String {
    B64.encode(bytes::<16>())
}

pub(crate) fn ticket() -> String {
    format!("gQ{}", B64.encode(bytes::<72>()))
}

/// A `getticket` ticket (86 URL-safe characters, like WeChat's).
pub(crate) fn card_ticket() -> String {
    format!("bxLdikRXVbTPdHSM05e5u{}", urlsafe(65))
}

/// A card template id: `p` + 27 URL-safe characters.
pub(crate) fn card_id() -> String {
    format!("p{}", urlsafe(27))
}

/// A card's `code`: 12 digits.
pub(crate) fn card_code() -> String {
    digits(12)
}

/// An `s_media_id` of an uploaded PDF: 19 digits.
pub(crate) fn media_id() -> String {
    format!("1{}", digits(18))
}

/// An opaque token (auth pages, encrypt codes).
pub(crate) fn token(len: usize) -> String {
    urlsafe(len)
}

fn digits(n: usize) -> String {
    let mut raw = vec![0u8; n];
    SystemRandom::new().fill(&mut raw).expect("system random source");
    raw.iter().map(|b| char::from(b'0' + b % 10)).collect()
}

pub(crate) fn qr_url() -> String {
    format!("http://weixin.qq.com/q/{}", urlsafe(22))
}

pub(crate) fn nonce() -> String {
    u32::from_be_bytes(bytes::<4>()).to_string()
}

/// The request id WeChat appends to every errmsg.
pub(crate) fn rid() -> String {
    let [a, b, c, d, e, f, g, h, i, j, k, l] = bytes::<12>();
    format!(
        "{:08x}-{:08x}-{:08x}",
        u32::from_be_bytes([a, b, c, d]),
        u32::from_be_bytes([e, f, g, h]),
        u32::from_be_bytes([i, j, k, l])
    )
}

/// A first message id: 19 digits, as WeChat's are.
pub(crate) fn first_msgid() -> u64 {
    2_000_000_000_000_000_000 + u64::from_be_bytes(bytes::<8>()) % 1_000_000_000_000_000_000
}

pub(crate) fn is_openid(s: &str) -> bool {
    s.len() == 28 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(crate) fn looks_like_token(s: &str) -> bool {
    s.len() >= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
