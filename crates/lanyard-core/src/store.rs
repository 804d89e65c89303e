//! The storage contract. Everything Lanyard keeps lives behind [`Store`], so every instance
//! sharing a database sees the same users, clients and (later) sessions.
//!
//! Invariants every implementation keeps: a method that changes more than one row does it in one
//! transaction, together with its audit event; uniqueness (usernames, client names) is enforced
//! by the database, not by a read before the write, and reported as [`StoreError::Conflict`].

use crate::UnixTime;
use crate::audit::{AuditEvent, NewAuditEvent};
use crate::client::{Client, ClientId};
use crate::grant::{
    AuthorizationCode, CodeRedemption, RefreshRedemption, RefreshToken, StoredKey, StoredRefresh,
};
use crate::mfa::{PendingSignIn, TotpFactor, WebauthnCredential};
use crate::session::{DeliveryOutcome, EndReason, LogoutDelivery, NewSession, Session};
use crate::throttle::{AttemptOutcome, Failures, Key};
use crate::user::{NewUser, User, UserId, Username};

/// What an access token with a good signature still depends on. It is active only if its `jti`
/// is not revoked, nor its refresh family; its session (if it names one) still exists and is
/// within `idle_cutoff` and `lifetime_cutoff`; its client still exists; and its user (if it was
/// issued to one) still exists and is not disabled.
#[derive(Clone, Copy)]
pub struct AccessTokenCheck<'a> {
    pub jti: &'a str,
    pub family: Option<&'a str>,
    /// The session's public ID (`sid`).
    pub session: Option<&'a str>,
    pub client: &'a ClientId,
    pub user: Option<&'a UserId>,
    pub idle_cutoff: UnixTime,
    pub lifetime_cutoff: UnixTime,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique value is taken; the text names it for the person who chose it.
    #[error("{0}")]
    Conflict(String),
    /// The database could not be reached or did not answer in time.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug, a corrupt row, a failed migration.
    #[error("database error: {0}")]
    Internal(String),
}

/// Counts kept in the database, for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct SharedMetrics {
    /// Sessions not ended yet (expired ones count until the sweeper ends them).
    pub sessions: u64,
    /// Sessions ended since the database was created, by `EndReason::as_str`.
    pub sessions_ended: Vec<(String, u64)>,
    /// Back-channel logout deliveries by state (`pending`, `delivered`, `failed`).
    pub logout_deliveries: Vec<(String, u64)>,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// "sqlite" or "postgres".
    fn backend(&self) -> &'static str;

    /// Answers when the database does: the readiness check.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Connections of this process's pool: (open, idle, maximum).
    fn pool_use(&self) -> (u32, u32, u32);

    /// What `/metrics` reads from the database: the same on every instance.
    async fn shared_metrics(&self) -> Result<SharedMetrics, StoreError>;

    async fn create_user(&self, user: &NewUser, event: &NewAuditEvent) -> Result<(), StoreError>;
    async fn user_by_username(&self, username: &Username) -> Result<Option<User>, StoreError>;
    async fn user_by_id(&self, id: &UserId) -> Result<Option<User>, StoreError>;
    /// The user, and whether their session `session` (when given) exists and is within
    /// `idle_cutoff` and `lifetime_cutoff`, in one read: what a token grant checks.
    async fn user_with_session(
        &self,
        id: &UserId,
        session: Option<&str>,
        idle_cutoff: UnixTime,
        lifetime_cutoff: UnixTime,
    ) -> Result<Option<(User, bool)>, StoreError>;
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;
    /// Disables the user and ends all their sessions; false when there is no such user.
    async fn disable_user(&self, id: &UserId, event: &NewAuditEvent) -> Result<bool, StoreError>;
    /// Replaces the password hash and ends every session of the user except `keep` (the
    /// digest of the session that made the change, if any); false when there is no such user.
    async fn set_password_hash(
        &self,
        id: &UserId,
        hash: &str,
        keep: Option<&str>,
        event: &NewAuditEvent,
    ) -> Result<bool, StoreError>;
    /// Replaces the hash after a sign-in under older argon2 parameters; nothing else changes.
    async fn rehash_password(&self, id: &UserId, old: &str, new: &str) -> Result<(), StoreError>;

    async fn create_client(&self, client: &Client, event: &NewAuditEvent)
    -> Result<(), StoreError>;
    async fn client_by_id(&self, id: &ClientId) -> Result<Option<Client>, StoreError>;
    async fn list_clients(&self) -> Result<Vec<Client>, StoreError>;
    /// Removes the client; false when there is no such client.
    async fn remove_client(&self, id: &ClientId, event: &NewAuditEvent)
    -> Result<bool, StoreError>;

    /// In one transaction: replaces the browser's earlier session `replaces` (if any), stores a
    /// new session, ends the user's oldest past `max_per_user`, and appends `events` (sign-in
    /// and session start). If `replaces` belonged to the same user, the new session keeps its
    /// public ID (the OIDC `sid`): re-authenticating renews a session, so the apps that share it
    /// keep their tokens; a different user's session ends. Returns the session's public ID.
    async fn create_session(
        &self,
        session: &NewSession,
        replaces: Option<&str>,
        max_per_user: u32,
        events: &[NewAuditEvent],
    ) -> Result<String, StoreError>;
    /// The session whose ID has this digest, if it exists.
    async fn session_by_digest(&self, digest: &str) -> Result<Option<Session>, StoreError>;
    /// The session whose ID has this digest, with its user, in one read: what every signed-in
    /// request looks up.
    async fn session_with_user(&self, digest: &str) -> Result<Option<(Session, User)>, StoreError>;
    /// Records that the session was used at `now`.
    async fn touch_session(&self, digest: &str, now: UnixTime) -> Result<(), StoreError>;
    /// Clears the one-time notice of a session.
    async fn clear_session_notice(&self, digest: &str) -> Result<(), StoreError>;
    /// Ends the session whose ID has this digest; false if it had already ended.
    async fn end_session(
        &self,
        digest: &str,
        reason: EndReason,
        event: &NewAuditEvent,
    ) -> Result<bool, StoreError>;
    /// Ends the session `public_id` only if it belongs to `user` (when given); false otherwise.
    async fn end_session_by_public_id(
        &self,
        public_id: &str,
        user: Option<&UserId>,
        reason: EndReason,
        event: &NewAuditEvent,
    ) -> Result<bool, StoreError>;
    /// Ends every session of `user` except `keep`; returns how many ended.
    async fn end_user_sessions(
        &self,
        user: &UserId,
        keep: Option<&str>,
        reason: EndReason,
        event: &NewAuditEvent,
    ) -> Result<u32, StoreError>;
    /// Sessions, newest first, optionally of one user, leaving out those idle since
    /// `idle_cutoff` or started before `lifetime_cutoff` (ended, even if not yet swept).
    async fn list_sessions(
        &self,
        user: Option<&UserId>,
        idle_cutoff: UnixTime,
        lifetime_cutoff: UnixTime,
    ) -> Result<Vec<Session>, StoreError>;
    /// Ends sessions idle since before `idle_cutoff` or started before `lifetime_cutoff`,
    /// auditing each at `now`; returns how many ended.
    async fn sweep_sessions(
        &self,
        idle_cutoff: UnixTime,
        lifetime_cutoff: UnixTime,
        now: UnixTime,
    ) -> Result<u32, StoreError>;

    /// Counts a sign-in attempt under every key *before* its password is checked, so that
    /// parallel attempts see each other, and returns the failures recorded under each key
    /// within its window, this attempt excluded.
    async fn begin_sign_in_attempt(
        &self,
        attempt: &str,
        keys: &[Key],
        now: UnixTime,
    ) -> Result<Vec<(Key, Failures)>, StoreError>;
    /// Settles an attempt: a failure stays counted; an attempt refused by the throttle is
    /// forgotten; a success is forgotten together with every failure under `keys[0]`.
    async fn settle_sign_in_attempt(
        &self,
        attempt: &str,
        outcome: AttemptOutcome,
        keys: &[Key],
    ) -> Result<(), StoreError>;
    /// Deletes failures older than `before`.
    async fn sweep_sign_in_failures(&self, before: UnixTime) -> Result<(), StoreError>;

    /// The session with this public ID, if it has not ended.
    async fn session_by_public_id(&self, public_id: &str) -> Result<Option<Session>, StoreError>;

    /// Every stored signing key, newest first.
    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError>;
    /// Adds a key; with `retire_others`, marks the other unretired keys of its algorithm
    /// retired at its `created_at` (rotation).
    async fn add_signing_key(
        &self,
        key: &StoredKey,
        retire_others: bool,
        event: &NewAuditEvent,
    ) -> Result<(), StoreError>;
    /// Deletes keys retired before `before`.
    async fn delete_retired_keys(&self, before: UnixTime) -> Result<(), StoreError>;

    /// Stores a code and records that its client takes part in its session.
    async fn insert_code(&self, code: &AuthorizationCode) -> Result<(), StoreError>;
    /// The clients that received a code under the session `public_id`, oldest first.
    async fn session_clients(&self, public_id: &str) -> Result<Vec<ClientId>, StoreError>;
    /// Consumes a code, recording in the same statement what it will be exchanged for (the
    /// access token's `jti`, the refresh family): the first call gets the code, later calls
    /// learn it was replayed and what to revoke, however close together they come.
    async fn redeem_code(
        &self,
        digest: &str,
        now: UnixTime,
        access_jti: &str,
        refresh_family: &str,
    ) -> Result<CodeRedemption, StoreError>;
    /// Deletes codes that expired before `before`.
    async fn sweep_codes(&self, before: UnixTime) -> Result<(), StoreError>;

    /// The scopes `user` has allowed `client`, if any.
    async fn consent(&self, user: &UserId, client: &ClientId)
    -> Result<Option<String>, StoreError>;
    async fn grant_consent(
        &self,
        user: &UserId,
        client: &ClientId,
        scope: &str,
        now: UnixTime,
    ) -> Result<(), StoreError>;

    async fn insert_refresh_token(&self, token: &RefreshToken) -> Result<(), StoreError>;
    /// Consumes a refresh token and, atomically, stores its successor (same family, scope and
    /// expiry) under `new_digest`, returning the successor. A used or revoked token revokes its
    /// whole family instead.
    async fn rotate_refresh_token(
        &self,
        digest: &str,
        new_digest: &str,
        now: UnixTime,
    ) -> Result<RefreshRedemption, StoreError>;
    /// Revokes every token of a family; returns how many were live.
    async fn revoke_refresh_family(
        &self,
        family_id: &str,
        now: UnixTime,
    ) -> Result<u32, StoreError>;
    /// A stored refresh token, used or not, without consuming it (introspection, revocation).
    async fn refresh_token(&self, digest: &str) -> Result<Option<StoredRefresh>, StoreError>;

    /// Lists an access token's `jti` as revoked until it would expire anyway.
    async fn revoke_access_token(&self, jti: &str, expires_at: UnixTime) -> Result<(), StoreError>;
    /// Whether everything an access token depends on still holds, read in one statement (this
    /// runs on every introspection and `/userinfo` request). See [`AccessTokenCheck`].
    async fn access_token_active(&self, check: &AccessTokenCheck<'_>) -> Result<bool, StoreError>;
    /// The token's user if the token is active (`check.user` names them), in the same one read:
    /// what `/userinfo` needs.
    async fn active_token_user(
        &self,
        check: &AccessTokenCheck<'_>,
    ) -> Result<Option<User>, StoreError>;

    /// The user's authenticator, confirmed or not.
    async fn totp_factor(&self, user: &UserId) -> Result<Option<TotpFactor>, StoreError>;
    /// Starts (or restarts) enrolment with a new sealed secret; false if the user already has a
    /// confirmed authenticator (it must be removed first).
    async fn begin_totp(
        &self,
        user: &UserId,
        sealed: &str,
        now: UnixTime,
    ) -> Result<bool, StoreError>;
    /// Confirms the enrolment of exactly the secret `sealed` (the one the code was checked
    /// against) with the code's step, and replaces the recovery codes; false if that secret is
    /// no longer the one waiting.
    async fn confirm_totp(
        &self,
        user: &UserId,
        sealed: &str,
        step: i64,
        recovery_digests: &[String],
        event: &NewAuditEvent,
    ) -> Result<bool, StoreError>;
    /// Accepts `step` for the user's confirmed authenticator only if it is later than every step
    /// accepted before (RFC 6238 §5.2); false otherwise.
    async fn use_totp_step(&self, user: &UserId, step: i64) -> Result<bool, StoreError>;
    /// Removes the authenticator and the recovery codes; false if there was none.
    async fn remove_totp(&self, user: &UserId, event: &NewAuditEvent) -> Result<bool, StoreError>;
    async fn replace_recovery_codes(
        &self,
        user: &UserId,
        digests: &[String],
        event: &NewAuditEvent,
    ) -> Result<(), StoreError>;
    /// Marks a recovery code used; false if it is unknown or was used before.
    async fn use_recovery_code(
        &self,
        user: &UserId,
        digest: &str,
        now: UnixTime,
    ) -> Result<bool, StoreError>;
    async fn recovery_codes_left(&self, user: &UserId) -> Result<u32, StoreError>;

    async fn add_webauthn_credential(
        &self,
        credential: &WebauthnCredential,
        event: &NewAuditEvent,
    ) -> Result<(), StoreError>;
    /// The user's credentials, oldest first.
    async fn webauthn_credentials(
        &self,
        user: &UserId,
    ) -> Result<Vec<WebauthnCredential>, StoreError>;
    async fn webauthn_credential(
        &self,
        credential_id: &str,
    ) -> Result<Option<WebauthnCredential>, StoreError>;
    /// Records a use: the updated serialised credential (its counter) and the time.
    async fn webauthn_used(
        &self,
        credential_id: &str,
        credential: &str,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// Renames one of `user`'s credentials; false if it is not theirs.
    async fn rename_webauthn_credential(
        &self,
        user: &UserId,
        credential_id: &str,
        name: &str,
    ) -> Result<bool, StoreError>;
    /// Removes one of `user`'s credentials; false if it is not theirs.
    async fn remove_webauthn_credential(
        &self,
        user: &UserId,
        credential_id: &str,
        event: &NewAuditEvent,
    ) -> Result<bool, StoreError>;
    async fn put_ceremony(
        &self,
        id_digest: &str,
        state: &str,
        expires_at: UnixTime,
    ) -> Result<(), StoreError>;
    /// Takes (deletes and returns) a ceremony's state if it has not expired: it answers once.
    async fn take_ceremony(
        &self,
        id_digest: &str,
        now: UnixTime,
    ) -> Result<Option<String>, StoreError>;

    async fn create_pending_signin(&self, pending: &PendingSignIn) -> Result<(), StoreError>;
    /// The pending sign-in with this digest, if it has not expired.
    async fn pending_signin(
        &self,
        digest: &str,
        now: UnixTime,
    ) -> Result<Option<PendingSignIn>, StoreError>;
    /// Deletes a pending sign-in; false if it was gone already (so it finishes once).
    async fn delete_pending_signin(&self, digest: &str) -> Result<bool, StoreError>;

    /// Claims up to `limit` due deliveries for this worker: their next attempt moves to
    /// `lease_until`, so another worker (or instance) does not send them meanwhile.
    async fn claim_logout_deliveries(
        &self,
        now: UnixTime,
        lease_until: UnixTime,
        limit: u32,
    ) -> Result<Vec<LogoutDelivery>, StoreError>;
    /// Records the outcome of one attempt: delivered, retry at `retry_at`, or failed for good.
    async fn finish_logout_attempt(
        &self,
        id: i64,
        outcome: DeliveryOutcome,
        event: Option<&NewAuditEvent>,
    ) -> Result<(), StoreError>;
    /// The newest deliveries, newest first.
    async fn logout_deliveries(&self, limit: u32) -> Result<Vec<LogoutDelivery>, StoreError>;

    async fn append_audit(&self, event: &NewAuditEvent) -> Result<(), StoreError>;
    /// The newest `limit` events, newest first, optionally only those about one user.
    async fn list_audit(
        &self,
        user: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError>;
}
