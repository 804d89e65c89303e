//! What the authorization server stores between requests: signing keys, authorization codes,
//! consent, and refresh tokens (RFC 6749 §4.1, §6; RFC 9700 §4.14 for refresh rotation).
//!
//! Invariants: codes and refresh tokens are stored only by digest and consumed atomically; a
//! second use of either is detected (not merely refused) so what it produced can be revoked.

use crate::UnixTime;
use crate::client::{ClientId, IdTokenAlg};
use crate::user::UserId;

/// A signing key as stored: sealed.
#[derive(Clone, Debug)]
pub struct StoredKey {
    pub kid: String,
    pub alg: IdTokenAlg,
    pub created_at: UnixTime,
    /// When it starts signing.
    pub activates_at: UnixTime,
    pub retired_at: Option<UnixTime>,
    pub sealed: String,
}

/// How and when the user authenticated, carried from the session into codes and tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authentication {
    pub auth_time: UnixTime,
    pub amr: Vec<String>,
    pub acr: Option<String>,
}

/// An authorization code as stored.
#[derive(Clone, Debug)]
pub struct AuthorizationCode {
    pub code_digest: String,
    pub client_id: ClientId,
    pub user_id: UserId,
    /// The public ID of the session the code was issued under.
    pub session_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub auth: Authentication,
    pub created_at: UnixTime,
    pub expires_at: UnixTime,
}

/// The outcome of presenting a code.
#[derive(Debug)]
pub enum CodeRedemption {
    /// First use: the code, now marked used.
    Fresh(Box<AuthorizationCode>),
    /// Already used: what it was exchanged for, to revoke.
    Replayed {
        access_jti: Option<String>,
        refresh_family: Option<String>,
    },
    Unknown,
}

/// A refresh token as stored.
#[derive(Clone, Debug)]
pub struct RefreshToken {
    pub token_digest: String,
    pub family_id: String,
    pub client_id: ClientId,
    pub user_id: UserId,
    /// The session it was issued under; `None` once that no longer matters (client tokens).
    pub session_id: Option<String>,
    pub scope: String,
    pub auth: Authentication,
    pub issued_at: UnixTime,
    pub expires_at: UnixTime,
}

impl RefreshToken {
    /// `offline_access` tokens outlive the session they were issued under.
    pub fn is_offline(&self) -> bool {
        self.scope.split(' ').any(|s| s == "offline_access")
    }
}

/// The outcome of presenting a refresh token.
#[derive(Debug)]
pub enum RefreshRedemption {
    /// First use: the token is now marked used, and this is its successor (the same grant).
    Fresh(Box<RefreshToken>),
    /// Used before (or revoked): the whole family has now been revoked.
    Reused {
        family_id: String,
    },
    Unknown,
}

/// A refresh token as found, with whether it can still be used.
#[derive(Clone, Debug)]
pub struct StoredRefresh {
    pub token: RefreshToken,
    pub used: bool,
    pub revoked: bool,
}
