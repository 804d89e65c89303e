//! Sessions: the one sign-in every relying app shares.
//!
//! Invariants: a session ID is 256 bits from the OS CSPRNG, issued only here and never derived
//! from an earlier one; the store keeps only its SHA-256 (`SessionSecret::digest`), so a copy
//! of the database opens no sessions. A session ends when it has been idle for `idle_timeout`,
//! when `lifetime` has passed since sign-in, or (if bound) when it is used from another address.
//! The rules are applied with the `now` of a `Clock`, so tests move time instead of sleeping.

use std::net::IpAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::UnixTime;
use crate::secret::{self, EntropyError};
use crate::user::UserId;

/// Whether a session stays tied to the address it signed in from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BindIp {
    Off,
    Exact,
    /// Same /24 (IPv4) or /64 (IPv6).
    Network,
}

/// The session rules an operator configures.
#[derive(Clone, Debug)]
pub struct SessionPolicy {
    pub idle_timeout: Duration,
    pub lifetime: Duration,
    pub max_per_user: u32,
    pub bind_ip: BindIp,
}

/// The secret a browser holds: the cookie value. Never stored, never logged.
pub struct SessionSecret(SecretString);

impl SessionSecret {
    pub fn generate() -> Result<Self, EntropyError> {
        Ok(Self(SecretString::from(secret::random_token(32)?)))
    }

    /// A value presented by a browser. Anything that is not a well-formed token is refused
    /// here, before it reaches the database.
    pub fn from_cookie(value: &str) -> Option<Self> {
        let well_formed = value.len() == 43
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        well_formed.then(|| Self(SecretString::from(value.to_owned())))
    }

    pub fn cookie_value(&self) -> &str {
        self.0.expose_secret()
    }

    /// What the store keeps: SHA-256 of the secret.
    pub fn digest(&self) -> String {
        secret::digest(self.0.expose_secret())
    }

    /// The anti-CSRF token for forms shown to the holder of this secret: derived from it, so
    /// only a page the holder loaded can know it, and it needs no storage.
    pub fn csrf_token(&self) -> String {
        secret::digest(&format!("csrf:{}", self.0.expose_secret()))
    }

    pub fn csrf_matches(&self, presented: &str) -> bool {
        secret::digests_match(&self.csrf_token(), presented)
    }
}

/// The notice a session carries after `max_per_user` ended an older one.
pub const NOTICE_EVICTED: &str = "evicted";

/// Why a session ended. Stored in audit events as `as_str`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    SignedOut,
    Revoked,
    IdleTimeout,
    LifetimeExceeded,
    PasswordChanged,
    UserDisabled,
    /// Ended to make room under `max_per_user`.
    Evicted,
    IpMismatch,
}

impl EndReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SignedOut => "signed_out",
            Self::Revoked => "revoked",
            Self::IdleTimeout => "idle_timeout",
            Self::LifetimeExceeded => "lifetime_exceeded",
            Self::PasswordChanged => "password_changed",
            Self::UserDisabled => "user_disabled",
            Self::Evicted => "evicted",
            Self::IpMismatch => "ip_mismatch",
        }
    }
}

/// A session as stored. `public_id` names it in lists and revocation forms; it opens nothing.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Session {
    pub public_id: String,
    pub user_id: UserId,
    pub created_at: UnixTime,
    pub auth_time: UnixTime,
    pub last_seen_at: UnixTime,
    /// Authentication methods (RFC 8176): `pwd` for now.
    pub amr: Vec<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// A message for the next page this session sees, shown once.
    pub notice: Option<String>,
}

/// A session about to be stored.
#[derive(Clone, Debug)]
pub struct NewSession {
    pub id_digest: String,
    pub public_id: String,
    pub user_id: UserId,
    pub now: UnixTime,
    pub amr: Vec<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

impl NewSession {
    pub fn new(
        secret: &SessionSecret,
        user_id: UserId,
        now: UnixTime,
        amr: Vec<String>,
    ) -> Result<Self, EntropyError> {
        Ok(Self {
            id_digest: secret.digest(),
            public_id: secret::random_id(12)?,
            user_id,
            now,
            amr,
            ip: None,
            user_agent: None,
        })
    }
}

/// The verdict on a session presented with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid; `touch` says the last-seen time is stale enough to be worth a write.
    Valid {
        touch: bool,
    },
    Ended(EndReason),
}

impl SessionPolicy {
    pub fn judge(&self, s: &Session, now: UnixTime, ip: Option<IpAddr>) -> Verdict {
        if let Some(reason) = self.expired(s, now) {
            return Verdict::Ended(reason);
        }
        if !self.same_place(s.ip.as_deref(), ip) {
            return Verdict::Ended(EndReason::IpMismatch);
        }
        Verdict::Valid {
            touch: now >= s.last_seen_at.saturating_add(self.touch_interval()),
        }
    }

    /// Whether time alone has ended the session (for checks made without the browser, such as
    /// a token presented by an app).
    pub fn expired(&self, s: &Session, now: UnixTime) -> Option<EndReason> {
        if now >= s.created_at.saturating_add(self.lifetime) {
            return Some(EndReason::LifetimeExceeded);
        }
        if now >= s.last_seen_at.saturating_add(self.idle_timeout) {
            return Some(EndReason::IdleTimeout);
        }
        None
    }

    /// How stale last-seen may get before it is written again: a minute, or less for short idle
    /// timeouts, so a busy user does not write on every request yet never idles out mid-use.
    pub fn touch_interval(&self) -> Duration {
        (self.idle_timeout / 4).min(Duration::from_secs(60))
    }

    /// When a session with these times ends for idleness or age, whichever comes first.
    pub fn idle_cutoff(&self, now: UnixTime) -> UnixTime {
        now.saturating_sub(self.idle_timeout)
    }

    pub fn lifetime_cutoff(&self, now: UnixTime) -> UnixTime {
        now.saturating_sub(self.lifetime)
    }

    fn same_place(&self, bound: Option<&str>, now: Option<IpAddr>) -> bool {
        let bound = bound.and_then(|b| b.parse::<IpAddr>().ok());
        match (self.bind_ip, bound, now) {
            (BindIp::Off, _, _) => true,
            (_, None, _) => true,
            (_, Some(_), None) => false,
            (BindIp::Exact, Some(a), Some(b)) => a == b,
            (BindIp::Network, Some(a), Some(b)) => same_network(a, b),
        }
    }
}

fn same_network(a: IpAddr, b: IpAddr) -> bool {
    match (canonical(a), canonical(b)) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a.octets()[..3] == b.octets()[..3],
        (IpAddr::V6(a), IpAddr::V6(b)) => a.octets()[..8] == b.octets()[..8],
        _ => false,
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) compare as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(bind_ip: BindIp) -> SessionPolicy {
        SessionPolicy {
            idle_timeout: Duration::from_secs(1800),
            lifetime: Duration::from_secs(12 * 3600),
            max_per_user: 10,
            bind_ip,
        }
    }

    fn session(created: i64, seen: i64, ip: &str) -> Session {
        Session {
            public_id: "p".into(),
            user_id: UserId::from_stored("u".into()),
            created_at: UnixTime::from_secs(created),
            auth_time: UnixTime::from_secs(created),
            last_seen_at: UnixTime::from_secs(seen),
            amr: vec!["pwd".into()],
            ip: Some(ip.into()),
            user_agent: None,
            notice: None,
        }
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn idle_and_absolute_expiry() {
        let p = policy(BindIp::Off);
        let s = session(0, 0, "192.0.2.1");
        assert_eq!(
            p.judge(&s, UnixTime::from_secs(10), None),
            Verdict::Valid { touch: false }
        );
        assert_eq!(
            p.judge(&s, UnixTime::from_secs(60), None),
            Verdict::Valid { touch: true }
        );
        assert_eq!(
            p.judge(&s, UnixTime::from_secs(1799), None),
            Verdict::Valid { touch: true }
        );
        assert_eq!(
            p.judge(&s, UnixTime::from_secs(1800), None),
            Verdict::Ended(EndReason::IdleTimeout)
        );
        // Busy all day, still ends after the lifetime.
        let busy = session(0, 12 * 3600 - 5, "192.0.2.1");
        assert_eq!(
            p.judge(&busy, UnixTime::from_secs(12 * 3600), None),
            Verdict::Ended(EndReason::LifetimeExceeded)
        );
    }

    #[test]
    fn ip_binding() {
        let s = session(0, 0, "192.0.2.1");
        let t = UnixTime::from_secs(1);
        assert_eq!(
            policy(BindIp::Off).judge(&s, t, ip("198.51.100.1")),
            Verdict::Valid { touch: false }
        );
        assert_eq!(
            policy(BindIp::Exact).judge(&s, t, ip("192.0.2.1")),
            Verdict::Valid { touch: false }
        );
        assert_eq!(
            policy(BindIp::Exact).judge(&s, t, ip("192.0.2.2")),
            Verdict::Ended(EndReason::IpMismatch)
        );
        assert_eq!(
            policy(BindIp::Network).judge(&s, t, ip("192.0.2.200")),
            Verdict::Valid { touch: false }
        );
        assert_eq!(
            policy(BindIp::Network).judge(&s, t, ip("::ffff:192.0.2.9")),
            Verdict::Valid { touch: false }
        );
        assert_eq!(
            policy(BindIp::Network).judge(&s, t, ip("192.0.3.1")),
            Verdict::Ended(EndReason::IpMismatch)
        );
        let v6 = session(0, 0, "2001:db8:1:2::1");
        assert_eq!(
            policy(BindIp::Network).judge(&v6, t, ip("2001:db8:1:2:ffff::9")),
            Verdict::Valid { touch: false }
        );
        assert_eq!(
            policy(BindIp::Network).judge(&v6, t, ip("2001:db8:1:3::1")),
            Verdict::Ended(EndReason::IpMismatch)
        );
    }

    #[test]
    fn secrets_are_well_formed_and_csrf_tokens_differ_per_secret() {
        let a = SessionSecret::generate().unwrap();
        let b = SessionSecret::generate().unwrap();
        assert!(SessionSecret::from_cookie(a.cookie_value()).is_some());
        assert!(SessionSecret::from_cookie("short").is_none());
        assert!(SessionSecret::from_cookie(&"a".repeat(42).replace('a', "/")).is_none());
        assert_ne!(a.digest(), a.cookie_value());
        assert!(a.csrf_matches(&a.csrf_token()));
        assert!(!a.csrf_matches(&b.csrf_token()));
        assert!(!a.csrf_matches(""));
    }
}

/// A back-channel logout waiting to be sent (OpenID Connect Back-Channel Logout 1.0).
#[derive(Clone, Debug, serde::Serialize)]
pub struct LogoutDelivery {
    pub id: i64,
    pub client_id: String,
    pub user_id: String,
    pub session_id: String,
    pub uri: String,
    /// "pending", "delivered" or "failed".
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: UnixTime,
    pub next_attempt_at: UnixTime,
    pub finished_at: Option<UnixTime>,
}

/// What one delivery attempt came to.
#[derive(Clone, Debug)]
pub enum DeliveryOutcome {
    Delivered {
        at: UnixTime,
    },
    Retry {
        at: UnixTime,
        next: UnixTime,
        error: String,
    },
    Failed {
        at: UnixTime,
        error: String,
    },
}

/// How long after a failure to try again: 2^attempts seconds, at most an hour.
pub fn backoff(attempts: i64) -> std::time::Duration {
    let secs = 1u64 << attempts.clamp(0, 12);
    std::time::Duration::from_secs(secs.min(3600))
}
