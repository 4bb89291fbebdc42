//! City-service real-name check (DOMAIN.md §8): does a name and ID number match the
//! payer's WeChat Pay real-name record?

use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::{AppCredentials, CallError, PATH_CHECK_REAL_NAME, WechatClient, mask};

/// What to check. The name and ID number are personal data: `Debug` masks them.
#[derive(Clone)]
pub struct RealNameCheck {
    /// The payer's openid in the mini-program that opened the authorisation.
    pub openid: String,
    pub real_name: SecretString,
    /// Mainland ID card number (`cred_type` 1, the only type WeChat supports).
    pub cred_id: SecretString,
    /// The single-use `code` the real-name authorisation returned to the mini-program.
    pub code: String,
}

impl std::fmt::Debug for RealNameCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealNameCheck")
            .field("openid", &mask(&self.openid))
            .finish_non_exhaustive()
    }
}

/// `verify_openid`: the name against the user's WeChat Pay real name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenidVerification {
    /// `V_OP_NM_MA`: the name matches.
    NameMatches,
    /// `V_OP_NM_UM`: the name does not match.
    NameMismatch,
    /// `V_OP_NA`: the user has no WeChat Pay real name.
    NoRealName,
}

/// `verify_real_name`: the ID number against the name (only when the name matched).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RealNameVerification {
    /// `V_NM_ID_MA`
    IdMatches,
    /// `V_NM_ID_UM`
    IdMismatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RealNameResult {
    pub verify_openid: OpenidVerification,
    pub verify_real_name: Option<RealNameVerification>,
}

impl RealNameResult {
    /// Name and ID number both match WeChat Pay's record: the identity is verified.
    pub fn is_verified(&self) -> bool {
        self.verify_openid == OpenidVerification::NameMatches
            && self.verify_real_name == Some(RealNameVerification::IdMatches)
    }

    /// WeChat joins several results with `;`; the most telling one wins.
    fn from_wire(verify_openid: &str, verify_real_name: Option<&str>) -> Result<Self, CallError> {
        let parts: Vec<&str> = verify_openid.split(';').map(str::trim).collect();
        let openid = if parts.contains(&"V_OP_NM_MA") {
            OpenidVerification::NameMatches
        } else if parts.contains(&"V_OP_NM_UM") {
            OpenidVerification::NameMismatch
        } else if parts.contains(&"V_OP_NA") {
            OpenidVerification::NoRealName
        } else {
            return Err(CallError::Decode("unknown verify_openid".into()));
        };
        let real_name = match (openid, verify_real_name.map(str::trim).filter(|s| !s.is_empty())) {
            (OpenidVerification::NameMatches, Some("V_NM_ID_MA")) => Some(RealNameVerification::IdMatches),
            (OpenidVerification::NameMatches, Some("V_NM_ID_UM")) => Some(RealNameVerification::IdMismatch),
            (OpenidVerification::NameMatches, _) => {
                return Err(CallError::Decode("verify_real_name missing or unknown".into()));
            }
            _ => None,
        };
        Ok(Self {
            verify_openid: openid,
            verify_real_name: real_name,
        })
    }
}

impl WechatClient {
    /// `POST /intp/realname/checkrealnameinfo`. The code is single-use: a 80113 is never
    /// worth retrying with the same code.
    pub async fn check_real_name_info(
        &self,
        app: &AppCredentials,
        check: &RealNameCheck,
    ) -> Result<RealNameResult, CallError> {
        #[derive(Deserialize)]
        struct Resp {
            verify_openid: String,
            #[serde(default)]
            verify_real_name: Option<String>,
        }
        if check.code.is_empty() || check.openid.is_empty() {
            return Err(CallError::Invalid("openid and code are required".into()));
        }
        let body = json!({
            "openid": check.openid,
            "real_name": check.real_name.expose_secret(),
            "cred_id": check.cred_id.expose_secret(),
            "cred_type": "1",
            "code": check.code,
        });
        let r: Resp = self.call_json(app, Method::POST, PATH_CHECK_REAL_NAME, &body).await?;
        RealNameResult::from_wire(&r.verify_openid, r.verify_real_name.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_results() {
        let r = RealNameResult::from_wire("V_OP_NM_MA", Some("V_NM_ID_MA")).expect("ok");
        assert!(r.is_verified());
        let r = RealNameResult::from_wire("V_OP_NM_MA", Some("V_NM_ID_UM")).expect("ok");
        assert!(!r.is_verified());
        assert_eq!(r.verify_real_name, Some(RealNameVerification::IdMismatch));
        // WeChat sends an empty verify_real_name when the name did not match.
        let r = RealNameResult::from_wire("V_OP_NM_UM", Some("")).expect("ok");
        assert_eq!(r.verify_openid, OpenidVerification::NameMismatch);
        assert_eq!(r.verify_real_name, None);
        let r = RealNameResult::from_wire("V_OP_NA", None).expect("ok");
        assert_eq!(r.verify_openid, OpenidVerification::NoRealName);
        assert!(RealNameResult::from_wire("V_OP_XX", None).is_err());
        assert!(RealNameResult::from_wire("V_OP_NM_MA", None).is_err());
        let r = RealNameResult::from_wire("V_OP_NA;V_OP_NM_UM", None).expect("ok");
        assert_eq!(r.verify_openid, OpenidVerification::NameMismatch);
    }

    #[test]
    fn debug_hides_the_identity() {
        let c = RealNameCheck {
            openid: "oUser1234567890".into(),
            real_name: SecretString::from("张三".to_owned()),
            cred_id: SecretString::from("110101199003074518".to_owned()),
            code: "c".into(),
        };
        let d = format!("{c:?}");
        assert!(
            !d.contains("张三") && !d.contains("110101") && !d.contains("oUser1234567890"),
            "{d}"
        );
    }
}
