//! Second factors: TOTP (RFC 6238) and recovery codes.
//!
//! Invariants: a TOTP code is accepted for the current 30-second step or one either side, and a
//! step accepted once is never accepted again for that user (the store keeps the last step and
//! only moves it forward). Recovery codes carry 80 random bits each, are shown once, stored only
//! as digests, and each works once.

use totp_rs::{Builder, Secret, Totp};

use crate::UnixTime;
use crate::secret::{self, EntropyError};

/// The `acr` of a sign-in with a second factor.
pub const ACR_MFA: &str = "urn:lanyard:acr:mfa";

#[derive(Debug, thiserror::Error)]
#[error("the authenticator secret is not usable: {0}")]
pub struct TotpError(String);

/// A TOTP secret: 20 random bytes (RFC 4226 §4 recommends 160 bits).
pub struct TotpSecret(Vec<u8>);

impl TotpSecret {
    pub fn generate() -> Result<Self, EntropyError> {
        let mut bytes = vec![0u8; 20];
        getrandom::fill(&mut bytes).map_err(|_| EntropyError)?;
        Ok(Self(bytes))
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// A secret as an authenticator app shows it (base32), for tests and tools.
    pub fn from_base32(s: &str) -> Option<Self> {
        Secret::try_from_base32(s)
            .ok()
            .map(|s| Self(s.as_ref().to_vec()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Base32, for people typing it into an app.
    pub fn base32(&self) -> String {
        Secret::from(self.0.clone()).to_base32()
    }

    fn totp(&self, issuer: &str, account: &str) -> Result<Totp, TotpError> {
        // ':' separates issuer and account in otpauth labels; neither may contain it.
        Builder::new()
            .with_secret(self.0.clone())
            .with_issuer(Some(issuer.replace(':', " ")))
            .with_account_name(account.replace(':', " "))
            .build()
            .map_err(|e| TotpError(e.to_string()))
    }

    /// The `otpauth://` URI authenticator apps read from the QR code.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> Result<String, TotpError> {
        self.totp(issuer, account)?
            .to_url()
            .map_err(|e| TotpError(e.to_string()))
    }

    /// The 30-second step `code` belongs to, if it is right for `now` or a step either side.
    pub fn matching_step(&self, code: &str, now: UnixTime) -> Option<i64> {
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let now = u64::try_from(now.as_secs()).ok()?;
        let totp = self.totp("x", "x").ok()?;
        totp.check(&code, now)
            .and_then(|step| i64::try_from(step).ok())
    }

    /// The code for `now` (what an authenticator app would show): for tests and tools.
    pub fn code_at(&self, now: UnixTime) -> Option<String> {
        let now = u64::try_from(now.as_secs()).ok()?;
        Some(self.totp("x", "x").ok()?.generate(now).to_string())
    }
}

/// A user's authenticator as stored.
#[derive(Clone, Debug)]
pub struct TotpFactor {
    pub sealed_secret: String,
    /// False while the user has not yet entered a code from it.
    pub confirmed: bool,
    pub last_step: i64,
}

/// A sign-in whose password was right, waiting for its second factor.
#[derive(Clone, Debug)]
pub struct PendingSignIn {
    pub id_digest: String,
    pub user_id: crate::user::UserId,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
    pub amr: Vec<String>,
    pub return_to: String,
}

/// A WebAuthn credential as stored; `credential` is the library's serialised form.
#[derive(Clone, Debug)]
pub struct WebauthnCredential {
    pub credential_id: String,
    pub user_id: crate::user::UserId,
    pub kind: KeyKind,
    pub name: String,
    pub credential: String,
    pub created_at: UnixTime,
    pub last_used_at: Option<UnixTime>,
}

/// What a WebAuthn credential is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// Discoverable and user-verifying: signs in without a password or username.
    Passkey,
    /// A second factor after the password.
    SecurityKey,
}

impl KeyKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Passkey => "passkey",
            Self::SecurityKey => "security_key",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "passkey" => Some(Self::Passkey),
            "security_key" => Some(Self::SecurityKey),
            _ => None,
        }
    }
}

/// Ten new recovery codes, `XXXX-XXXX-XXXX-XXXX` in base32 (80 bits each).
pub fn new_recovery_codes() -> Result<Vec<String>, EntropyError> {
    (0..10)
        .map(|_| {
            let mut bytes = [0u8; 10];
            getrandom::fill(&mut bytes).map_err(|_| EntropyError)?;
            let b32 = Secret::from(bytes.to_vec()).to_base32();
            let groups: Vec<&str> = (0..4).filter_map(|i| b32.get(i * 4..i * 4 + 4)).collect();
            Ok(groups.join("-"))
        })
        .collect()
}

/// What the store keeps of a recovery code: the digest of its normalised form, bound to the
/// user so equal codes of two users differ.
pub fn recovery_digest(user_id: &str, code: &str) -> String {
    let normal: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    secret::digest(&format!("recovery:{user_id}:{normal}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_6238_sha1_vector() {
        // RFC 6238 appendix B: secret "12345678901234567890", T = 59 s gives 94287082 (8 digits);
        // its last six digits are the 6-digit code.
        let s = TotpSecret::from_bytes(b"12345678901234567890".to_vec());
        assert_eq!(s.code_at(UnixTime::from_secs(59)).unwrap(), "287082");
        assert_eq!(s.matching_step("287082", UnixTime::from_secs(59)), Some(1));
    }

    #[test]
    fn adjacent_steps_only() {
        let s = TotpSecret::generate().unwrap();
        let t = UnixTime::from_secs(1_800_000_000);
        let code = s.code_at(t).unwrap();
        assert_eq!(s.matching_step(&code, t), Some(60_000_000));
        assert!(
            s.matching_step(&code, UnixTime::from_secs(t.as_secs() + 30))
                .is_some()
        );
        assert!(
            s.matching_step(&code, UnixTime::from_secs(t.as_secs() - 30))
                .is_some()
        );
        assert!(
            s.matching_step(&code, UnixTime::from_secs(t.as_secs() + 60))
                .is_none()
        );
        assert!(s.matching_step("12345", t).is_none());
        assert!(s.matching_step("abcdef", t).is_none());
        assert!(
            s.matching_step(&format!(" {} {} ", &code[..3], &code[3..]), t)
                .is_some(),
            "spaces are fine"
        );
    }

    #[test]
    fn otpauth_uri_and_base32() {
        let s = TotpSecret::from_bytes(b"12345678901234567890".to_vec());
        assert_eq!(s.base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        let uri = s.otpauth_uri("Lanyard", "ada").unwrap();
        assert!(uri.starts_with("otpauth://totp/Lanyard:ada?"), "{uri}");
        assert!(uri.contains("secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"));
    }

    #[test]
    fn recovery_codes_are_distinct_and_normalised() {
        let codes = new_recovery_codes().unwrap();
        assert_eq!(codes.len(), 10);
        assert!(codes.iter().all(|c| c.len() == 19));
        let mut unique = codes.clone();
        unique.dedup();
        assert_eq!(unique.len(), 10);
        let c = &codes[0];
        assert_eq!(
            recovery_digest("u", c),
            recovery_digest("u", &c.to_lowercase().replace('-', " "))
        );
        assert_ne!(recovery_digest("u", c), recovery_digest("v", c));
    }
}
