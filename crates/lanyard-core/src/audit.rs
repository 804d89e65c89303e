//! The audit log: who did what, when, from where. Rows are only ever appended.
//!
//! Events name users by id, not by a foreign key, so the trail outlives what it describes; the
//! `detail` field is for facts such as a client's name, never for secrets.

use crate::UnixTime;

/// What happened. Stored as the `as_str` name, so names never change once released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditKind {
    UserCreated,
    UserDisabled,
    PasswordChanged,
    ClientCreated,
    ClientRemoved,
    SignInSucceeded,
    SignInFailed,
    SignInThrottled,
    SessionStarted,
    SessionEnded,
    KeyAdded,
    ConsentGranted,
    CodeReplayed,
    RefreshTokenReused,
    MfaEnrolled,
    MfaRemoved,
    MfaSucceeded,
    MfaFailed,
    RecoveryCodeUsed,
    RecoveryCodesRenewed,
    KeyRegistered,
    KeyRemoved,
    KeyCounterRegressed,
    LogoutDelivered,
    LogoutFailed,
}

impl AuditKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::UserCreated => "user.created",
            Self::UserDisabled => "user.disabled",
            Self::PasswordChanged => "user.password_changed",
            Self::ClientCreated => "client.created",
            Self::ClientRemoved => "client.removed",
            Self::SignInSucceeded => "signin.succeeded",
            Self::SignInFailed => "signin.failed",
            Self::SignInThrottled => "signin.throttled",
            Self::SessionStarted => "session.started",
            Self::SessionEnded => "session.ended",
            Self::KeyAdded => "key.added",
            Self::ConsentGranted => "consent.granted",
            Self::CodeReplayed => "token.code_replayed",
            Self::RefreshTokenReused => "token.refresh_reused",
            Self::MfaEnrolled => "mfa.enrolled",
            Self::MfaRemoved => "mfa.removed",
            Self::MfaSucceeded => "mfa.succeeded",
            Self::MfaFailed => "mfa.failed",
            Self::RecoveryCodeUsed => "mfa.recovery_code_used",
            Self::RecoveryCodesRenewed => "mfa.recovery_codes_renewed",
            Self::KeyRegistered => "webauthn.registered",
            Self::KeyRemoved => "webauthn.removed",
            Self::KeyCounterRegressed => "webauthn.counter_regressed",
            Self::LogoutDelivered => "logout.delivered",
            Self::LogoutFailed => "logout.failed",
        }
    }
}

/// Who or what caused an event: the CLI, or a request with its address and user agent.
#[derive(Clone, Debug, Default)]
pub struct Actor {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// An event about to be appended.
#[derive(Clone, Debug)]
pub struct NewAuditEvent {
    pub at: UnixTime,
    pub kind: AuditKind,
    pub user_id: Option<String>,
    pub client_id: Option<String>,
    pub actor: Actor,
    pub detail: String,
}

impl NewAuditEvent {
    pub fn new(at: UnixTime, kind: AuditKind) -> Self {
        Self {
            at,
            kind,
            user_id: None,
            client_id: None,
            actor: Actor::default(),
            detail: String::new(),
        }
    }

    pub fn user(mut self, id: &str) -> Self {
        self.user_id = Some(id.to_owned());
        self
    }

    pub fn client(mut self, id: &str) -> Self {
        self.client_id = Some(id.to_owned());
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }

    pub fn actor(mut self, actor: Actor) -> Self {
        self.actor = actor;
        self
    }
}

/// An event as stored.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AuditEvent {
    pub id: i64,
    pub at: UnixTime,
    pub kind: String,
    pub user_id: Option<String>,
    pub client_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub detail: String,
}
