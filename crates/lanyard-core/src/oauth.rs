//! OAuth 2.0 and OpenID Connect request rules: scopes, PKCE (RFC 7636), `prompt`, the error
//! codes of RFC 6749 §4.1.2.1 and §5.2 and OpenID Connect Core §3.1.2.6, and token hashes.
//!
//! Invariant: only S256 PKCE exists here; `plain` is refused (RFC 9700 §2.1.1).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256, Sha512};

use crate::client::IdTokenAlg;
use crate::secret::digests_match;

/// The scopes Lanyard knows; others are dropped from requests (RFC 6749 §3.3).
pub const SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];

/// The error codes of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidRequest,
    UnauthorizedClient,
    AccessDenied,
    UnsupportedResponseType,
    InvalidScope,
    ServerError,
    TemporarilyUnavailable,
    LoginRequired,
    ConsentRequired,
    InteractionRequired,
    RequestNotSupported,
    RequestUriNotSupported,
    InvalidClient,
    InvalidGrant,
    UnsupportedGrantType,
    InvalidToken,
    InsufficientScope,
    UnsupportedTokenType,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::AccessDenied => "access_denied",
            Self::UnsupportedResponseType => "unsupported_response_type",
            Self::InvalidScope => "invalid_scope",
            Self::ServerError => "server_error",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::LoginRequired => "login_required",
            Self::ConsentRequired => "consent_required",
            Self::InteractionRequired => "interaction_required",
            Self::RequestNotSupported => "request_not_supported",
            Self::RequestUriNotSupported => "request_uri_not_supported",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidToken => "invalid_token",
            Self::InsufficientScope => "insufficient_scope",
            Self::UnsupportedTokenType => "unsupported_token_type",
        }
    }
}

/// A protocol error: the code, and a description safe to show the client.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {description}", code.as_str())]
pub struct OAuthError {
    pub code: ErrorCode,
    pub description: &'static str,
}

impl OAuthError {
    pub const fn new(code: ErrorCode, description: &'static str) -> Self {
        Self { code, description }
    }
}

/// The known scopes of a request, in a stable order, without repeats.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Scope(Vec<&'static str>);

impl Scope {
    pub fn parse(requested: &str) -> Self {
        Self(
            SCOPES
                .iter()
                .copied()
                .filter(|s| requested.split(' ').any(|r| r == *s))
                .collect(),
        )
    }

    pub fn contains(&self, scope: &str) -> bool {
        self.0.contains(&scope)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every scope here is also in `other` (a remembered consent, say).
    pub fn within(&self, other: &Scope) -> bool {
        self.0.iter().all(|s| other.0.contains(s))
    }

    /// The scopes of `self` that `other` also has (narrowing at refresh).
    pub fn intersect(&self, other: &Scope) -> Scope {
        Scope(
            self.0
                .iter()
                .copied()
                .filter(|s| other.0.contains(s))
                .collect(),
        )
    }

    pub fn without(&self, scope: &str) -> Scope {
        Scope(self.0.iter().copied().filter(|s| *s != scope).collect())
    }

    pub fn iter(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().copied()
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

/// The `prompt` values of OpenID Connect Core §3.1.2.1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prompt {
    pub none: bool,
    pub login: bool,
    pub consent: bool,
    pub select_account: bool,
}

impl Prompt {
    pub fn parse(value: Option<&str>) -> Result<Self, OAuthError> {
        let mut p = Prompt::default();
        for v in value
            .unwrap_or_default()
            .split(' ')
            .filter(|v| !v.is_empty())
        {
            match v {
                "none" => p.none = true,
                "login" => p.login = true,
                "consent" => p.consent = true,
                "select_account" => p.select_account = true,
                _ => {
                    return Err(OAuthError::new(
                        ErrorCode::InvalidRequest,
                        "unknown prompt value",
                    ));
                }
            }
        }
        if p.none && (p.login || p.consent || p.select_account) {
            return Err(OAuthError::new(
                ErrorCode::InvalidRequest,
                "prompt=none cannot be combined",
            ));
        }
        Ok(p)
    }
}

/// A well-formed S256 `code_challenge`: 43 base64url characters (RFC 7636 §4.2).
pub fn is_valid_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `verifier` is well-formed (RFC 7636 §4.1) and hashes to `challenge` under S256.
pub fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    well_formed
        && digests_match(
            &URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())),
            challenge,
        )
}

/// `at_hash` (OpenID Connect Core §3.1.3.6): the left half of the token's hash under the ID
/// token's algorithm; SHA-512 for Ed25519.
pub fn token_hash(alg: IdTokenAlg, token: &str) -> String {
    let full: Vec<u8> = match alg {
        IdTokenAlg::RS256 | IdTokenAlg::ES256 => Sha256::digest(token.as_bytes()).to_vec(),
        IdTokenAlg::EdDSA => Sha512::digest(token.as_bytes()).to_vec(),
    };
    URL_SAFE_NO_PAD.encode(full.get(..full.len() / 2).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_rfc_7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(is_valid_challenge(challenge));
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXj",
            challenge
        ));
        assert!(!pkce_matches("short", challenge));
        assert!(!pkce_matches(challenge, challenge), "plain is not S256");
        assert!(!is_valid_challenge("too short"));
    }

    #[test]
    fn scopes_keep_only_known_values_once() {
        let s = Scope::parse("email openid openid unknown profile");
        assert_eq!(s.to_string(), "openid profile email");
        assert!(Scope::parse("openid").within(&s));
        assert!(!s.within(&Scope::parse("openid")));
        assert_eq!(s.without("email").to_string(), "openid profile");
        assert!(Scope::parse("").is_empty());
    }

    #[test]
    fn prompts() {
        assert_eq!(
            Prompt::parse(Some("login consent")).unwrap(),
            Prompt {
                login: true,
                consent: true,
                ..Default::default()
            }
        );
        assert!(Prompt::parse(Some("none login")).is_err());
        assert!(Prompt::parse(Some("bogus")).is_err());
        assert_eq!(Prompt::parse(None).unwrap(), Prompt::default());
    }

    #[test]
    fn at_hash_example_from_openid_connect_core() {
        // Core §A.3/A.4: access token "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y", RS256.
        assert_eq!(
            token_hash(
                IdTokenAlg::RS256,
                "jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y"
            ),
            "77QmUPtjPfzWtF2AnpK9RQ"
        );
    }
}
