//! What both backends share: row types, their conversion into domain types, and `impl_store!`,
//! which implements `Store` once for each pool type with the same SQL.

use lanyard_core::audit::{AuditEvent, AuditKind, NewAuditEvent};
use lanyard_core::client::{Client, ClientId, GrantType, IdTokenAlg};
use lanyard_core::grant::{
    Authentication, AuthorizationCode, RefreshToken, StoredKey, StoredRefresh,
};
use lanyard_core::mfa::{KeyKind, PendingSignIn, WebauthnCredential};
use lanyard_core::session::{EndReason, LogoutDelivery, Session};
use lanyard_core::user::{DisplayName, Email, User, UserId, Username};
use lanyard_core::{StoreError, UnixTime};

// Column lists as macros, so statements stay `&'static str` (sqlx refuses built strings).
macro_rules! user_columns {
    () => {
        "id, username, email, display_name, password_hash, disabled, created_at"
    };
}
macro_rules! client_columns {
    () => {
        "id, name, secret_hash, public, redirect_uris, post_logout_redirect_uris, \
         backchannel_logout_uri, frontchannel_logout_uri, grant_types, id_token_alg, \
         skip_consent, created_at, require_mfa"
    };
}

/// What an access token's activity depends on besides its user (`AccessTokenCheck`), as a
/// condition: $1 jti, $2 family, $3 session, $4 client, $6 idle cutoff, $7 lifetime cutoff.
macro_rules! access_token_active {
    () => {
        "NOT EXISTS (SELECT 1 FROM revoked_access_tokens WHERE jti = $1) \
         AND NOT EXISTS (SELECT 1 FROM refresh_family_revocations WHERE family_id = $2) \
         AND ($3 IS NULL OR EXISTS (SELECT 1 FROM sessions WHERE public_id = $3 \
              AND last_seen_at > $6 AND created_at > $7)) \
         AND EXISTS (SELECT 1 FROM clients WHERE id = $4)"
    };
}

/// Binds an `AccessTokenCheck` as the parameters `access_token_active!` names, and `$5`, the
/// user.
macro_rules! bind_access_check {
    ($query:expr, $c:expr) => {
        $query
            .bind($c.jti)
            .bind($c.family)
            .bind($c.session)
            .bind($c.client.as_str())
            .bind($c.user.map(|u| u.as_str()))
            .bind($c.idle_cutoff.as_secs())
            .bind($c.lifetime_cutoff.as_secs())
    };
}

#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    id: String,
    username: String,
    email: String,
    display_name: Option<String>,
    password_hash: String,
    disabled: bool,
    created_at: i64,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        User {
            id: UserId::from_stored(r.id),
            username: Username::from_stored(r.username),
            email: Email::from_stored(r.email),
            display_name: r.display_name.map(DisplayName::from_stored),
            password_hash: r.password_hash,
            disabled: r.disabled,
            created_at: UnixTime::from_secs(r.created_at),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct UserWithSessionRow {
    #[sqlx(flatten)]
    user: UserRow,
    session_alive: i64,
}

impl From<UserWithSessionRow> for (User, bool) {
    fn from(r: UserWithSessionRow) -> Self {
        (r.user.into(), r.session_alive == 1)
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ClientRow {
    id: String,
    name: String,
    secret_hash: Option<String>,
    public: bool,
    redirect_uris: String,
    post_logout_redirect_uris: String,
    backchannel_logout_uri: Option<String>,
    frontchannel_logout_uri: Option<String>,
    grant_types: String,
    id_token_alg: String,
    skip_consent: bool,
    created_at: i64,
    require_mfa: bool,
}

impl TryFrom<ClientRow> for Client {
    type Error = StoreError;
    fn try_from(r: ClientRow) -> Result<Self, StoreError> {
        let corrupt = |e: lanyard_core::client::ClientInputError| {
            StoreError::Internal(format!("client {} has a corrupt row: {e}", r.id))
        };
        let grant_types = split(&r.grant_types)
            .map(str::parse::<GrantType>)
            .collect::<Result<Vec<_>, _>>()
            .map_err(corrupt)?;
        let id_token_alg = r.id_token_alg.parse::<IdTokenAlg>().map_err(corrupt)?;
        Ok(Client {
            id: ClientId::from_stored(r.id),
            name: r.name,
            secret_hash: r.secret_hash,
            public: r.public,
            redirect_uris: split(&r.redirect_uris).map(str::to_owned).collect(),
            post_logout_redirect_uris: split(&r.post_logout_redirect_uris)
                .map(str::to_owned)
                .collect(),
            backchannel_logout_uri: r.backchannel_logout_uri,
            frontchannel_logout_uri: r.frontchannel_logout_uri,
            grant_types,
            id_token_alg,
            skip_consent: r.skip_consent,
            created_at: UnixTime::from_secs(r.created_at),
            require_mfa: r.require_mfa,
        })
    }
}

macro_rules! session_columns {
    () => {
        "public_id, user_id, created_at, auth_time, last_seen_at, amr, ip, user_agent, notice"
    };
}

#[derive(sqlx::FromRow)]
pub(crate) struct SessionRow {
    public_id: String,
    user_id: String,
    created_at: i64,
    auth_time: i64,
    last_seen_at: i64,
    amr: String,
    ip: Option<String>,
    user_agent: Option<String>,
    notice: Option<String>,
}

/// A session joined with its user; the user's columns that the session repeats are left out.
#[derive(sqlx::FromRow)]
pub(crate) struct SessionUserRow {
    #[sqlx(flatten)]
    session: SessionRow,
    username: String,
    email: String,
    display_name: Option<String>,
    password_hash: String,
    disabled: bool,
    user_created_at: i64,
}

impl From<SessionUserRow> for (Session, User) {
    fn from(r: SessionUserRow) -> Self {
        let user = UserRow {
            id: r.session.user_id.clone(),
            username: r.username,
            email: r.email,
            display_name: r.display_name,
            password_hash: r.password_hash,
            disabled: r.disabled,
            created_at: r.user_created_at,
        };
        (r.session.into(), user.into())
    }
}

impl From<SessionRow> for Session {
    fn from(r: SessionRow) -> Self {
        Session {
            public_id: r.public_id,
            user_id: UserId::from_stored(r.user_id),
            created_at: UnixTime::from_secs(r.created_at),
            auth_time: UnixTime::from_secs(r.auth_time),
            last_seen_at: UnixTime::from_secs(r.last_seen_at),
            amr: split(&r.amr).map(str::to_owned).collect(),
            ip: r.ip,
            user_agent: r.user_agent,
            notice: r.notice,
        }
    }
}

/// A session just deleted: enough to audit its end.
#[derive(sqlx::FromRow)]
pub(crate) struct EndedRow {
    pub(crate) public_id: String,
    pub(crate) user_id: String,
    pub(crate) created_at: i64,
}

/// The audit event for one ended session, derived from the event of what ended it.
pub(crate) fn ended_event(
    template: &NewAuditEvent,
    row: &EndedRow,
    reason: EndReason,
) -> NewAuditEvent {
    let mut e = template.clone();
    e.kind = AuditKind::SessionEnded;
    e.user_id = Some(row.user_id.clone());
    e.detail = format!("session={} reason={}", row.public_id, reason.as_str());
    e
}

#[derive(sqlx::FromRow)]
pub(crate) struct KeyRow {
    kid: String,
    alg: String,
    created_at: i64,
    activates_at: i64,
    retired_at: Option<i64>,
    sealed: String,
}

impl TryFrom<KeyRow> for StoredKey {
    type Error = StoreError;
    fn try_from(r: KeyRow) -> Result<Self, StoreError> {
        let alg = r
            .alg
            .parse::<IdTokenAlg>()
            .map_err(|e| StoreError::Internal(format!("signing key {} is corrupt: {e}", r.kid)))?;
        Ok(StoredKey {
            kid: r.kid,
            alg,
            created_at: UnixTime::from_secs(r.created_at),
            activates_at: UnixTime::from_secs(r.activates_at),
            retired_at: r.retired_at.map(UnixTime::from_secs),
            sealed: r.sealed,
        })
    }
}

macro_rules! code_columns {
    () => {
        "code_digest, client_id, user_id, session_id, redirect_uri, scope, nonce, \
         code_challenge, auth_time, amr, acr, created_at, expires_at"
    };
}

#[derive(sqlx::FromRow)]
pub(crate) struct CodeRow {
    code_digest: String,
    client_id: String,
    user_id: String,
    session_id: String,
    redirect_uri: String,
    scope: String,
    nonce: Option<String>,
    code_challenge: Option<String>,
    auth_time: i64,
    amr: String,
    acr: Option<String>,
    created_at: i64,
    expires_at: i64,
}

impl From<CodeRow> for AuthorizationCode {
    fn from(r: CodeRow) -> Self {
        AuthorizationCode {
            code_digest: r.code_digest,
            client_id: ClientId::from_stored(r.client_id),
            user_id: UserId::from_stored(r.user_id),
            session_id: r.session_id,
            redirect_uri: r.redirect_uri,
            scope: r.scope,
            nonce: r.nonce,
            code_challenge: r.code_challenge,
            auth: Authentication {
                auth_time: UnixTime::from_secs(r.auth_time),
                amr: split(&r.amr).map(str::to_owned).collect(),
                acr: r.acr,
            },
            created_at: UnixTime::from_secs(r.created_at),
            expires_at: UnixTime::from_secs(r.expires_at),
        }
    }
}

macro_rules! refresh_columns {
    () => {
        "token_digest, family_id, client_id, user_id, session_id, scope, auth_time, amr, acr, \
         issued_at, expires_at"
    };
}

#[derive(sqlx::FromRow)]
pub(crate) struct RefreshRow {
    token_digest: String,
    family_id: String,
    client_id: String,
    user_id: String,
    session_id: Option<String>,
    scope: String,
    auth_time: i64,
    amr: String,
    acr: Option<String>,
    issued_at: i64,
    expires_at: i64,
}

impl From<RefreshRow> for RefreshToken {
    fn from(r: RefreshRow) -> Self {
        RefreshToken {
            token_digest: r.token_digest,
            family_id: r.family_id,
            client_id: ClientId::from_stored(r.client_id),
            user_id: UserId::from_stored(r.user_id),
            session_id: r.session_id,
            scope: r.scope,
            auth: Authentication {
                auth_time: UnixTime::from_secs(r.auth_time),
                amr: split(&r.amr).map(str::to_owned).collect(),
                acr: r.acr,
            },
            issued_at: UnixTime::from_secs(r.issued_at),
            expires_at: UnixTime::from_secs(r.expires_at),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct RefreshStateRow {
    #[sqlx(flatten)]
    token: RefreshRow,
    used_at: Option<i64>,
    revoked_at: Option<i64>,
}

impl From<RefreshStateRow> for StoredRefresh {
    fn from(r: RefreshStateRow) -> Self {
        StoredRefresh {
            token: r.token.into(),
            used: r.used_at.is_some(),
            revoked: r.revoked_at.is_some(),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct PendingRow {
    id_digest: String,
    user_id: String,
    created_at: i64,
    expires_at: i64,
    amr: String,
    return_to: String,
}

impl From<PendingRow> for PendingSignIn {
    fn from(r: PendingRow) -> Self {
        PendingSignIn {
            id_digest: r.id_digest,
            user_id: UserId::from_stored(r.user_id),
            created_at: UnixTime::from_secs(r.created_at),
            expires_at: UnixTime::from_secs(r.expires_at),
            amr: split(&r.amr).map(str::to_owned).collect(),
            return_to: r.return_to,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct WebauthnRow {
    credential_id: String,
    user_id: String,
    kind: String,
    name: String,
    credential: String,
    created_at: i64,
    last_used_at: Option<i64>,
}

impl TryFrom<WebauthnRow> for WebauthnCredential {
    type Error = StoreError;
    fn try_from(r: WebauthnRow) -> Result<Self, StoreError> {
        let kind = KeyKind::parse(&r.kind).ok_or_else(|| {
            StoreError::Internal(format!(
                "credential {} has kind {:?}",
                r.credential_id, r.kind
            ))
        })?;
        Ok(WebauthnCredential {
            credential_id: r.credential_id,
            user_id: UserId::from_stored(r.user_id),
            kind,
            name: r.name,
            credential: r.credential,
            created_at: UnixTime::from_secs(r.created_at),
            last_used_at: r.last_used_at.map(UnixTime::from_secs),
        })
    }
}

macro_rules! delivery_columns {
    () => {
        "id, client_id, user_id, session_id, uri, state, attempts, last_error, created_at, \
         next_attempt_at, finished_at"
    };
}

#[derive(sqlx::FromRow)]
pub(crate) struct DeliveryRow {
    id: i64,
    client_id: String,
    user_id: String,
    session_id: String,
    uri: String,
    state: String,
    attempts: i64,
    last_error: Option<String>,
    created_at: i64,
    next_attempt_at: i64,
    finished_at: Option<i64>,
}

impl From<DeliveryRow> for LogoutDelivery {
    fn from(r: DeliveryRow) -> Self {
        LogoutDelivery {
            id: r.id,
            client_id: r.client_id,
            user_id: r.user_id,
            session_id: r.session_id,
            uri: r.uri,
            state: r.state,
            attempts: r.attempts,
            last_error: r.last_error,
            created_at: UnixTime::from_secs(r.created_at),
            next_attempt_at: UnixTime::from_secs(r.next_attempt_at),
            finished_at: r.finished_at.map(UnixTime::from_secs),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AuditRow {
    id: i64,
    at: i64,
    kind: String,
    user_id: Option<String>,
    client_id: Option<String>,
    ip: Option<String>,
    user_agent: Option<String>,
    detail: String,
}

impl From<AuditRow> for AuditEvent {
    fn from(r: AuditRow) -> Self {
        AuditEvent {
            id: r.id,
            at: UnixTime::from_secs(r.at),
            kind: r.kind,
            user_id: r.user_id,
            client_id: r.client_id,
            ip: r.ip,
            user_agent: r.user_agent,
            detail: r.detail,
        }
    }
}

fn split(list: &str) -> impl Iterator<Item = &str> {
    list.split(' ').filter(|s| !s.is_empty())
}

pub(crate) fn join<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    items.into_iter().collect::<Vec<_>>().join(" ")
}

/// Implements `lanyard_core::Store` for a struct with `pool` and `writer` fields, both
/// `sqlx::Pool<$db>`: statements that write, and every transaction, run on `writer`; plain
/// reads run on `pool`.
macro_rules! impl_store {
    ($store:ty, $db:ty, $backend:literal, begin: $begin:literal, lock_user: $lock_user:literal, skip_locked: $skip_locked:literal, rotate: $rotate:expr, insert_code: $insert_code:expr) => {
        use lanyard_core::UnixTime;
        use lanyard_core::audit::{AuditEvent, NewAuditEvent};
        use lanyard_core::client::{Client, ClientId};
        use lanyard_core::session::{DeliveryOutcome, EndReason, LogoutDelivery, NewSession, Session};
        use lanyard_core::throttle::{AttemptOutcome, Failures, Key};
        use lanyard_core::user::{NewUser, User, UserId, Username};

        use crate::error::{conflict_or, from_sqlx};
        use lanyard_core::grant::{
            AuthorizationCode, CodeRedemption, RefreshRedemption, RefreshToken, StoredKey,
            StoredRefresh,
        };

        use lanyard_core::mfa::{PendingSignIn, TotpFactor, WebauthnCredential};

        use crate::shared::{
            AuditRow, ClientRow, CodeRow, EndedRow, KeyRow, PendingRow, RefreshRow, RefreshStateRow,
            DeliveryRow, SessionRow, SessionUserRow, UserRow, UserWithSessionRow, WebauthnRow,
            ended_event, join,
        };

        /// Audits the end of each session in `rows`, already deleted in this transaction.
        async fn audit_ended(
            conn: &mut <$db as sqlx::Database>::Connection,
            rows: &[EndedRow],
            reason: EndReason,
            template: &NewAuditEvent,
        ) -> Result<(), StoreError> {
            for row in rows {
                insert_audit(&mut *conn, &ended_event(template, row, reason)).await?;
                enqueue_logouts(&mut *conn, row, template.at).await?;
            }
            count_ended(&mut *conn, reason, rows.len()).await
        }

        /// Writes a back-channel logout for each app that took part in the ended session, in
        /// the transaction that ended it, and forgets the session's apps.
        async fn count_ended(
            conn: &mut <$db as sqlx::Database>::Connection,
            reason: EndReason,
            n: usize,
        ) -> Result<(), StoreError> {
            if n == 0 {
                return Ok(());
            }
            sqlx::query(
                "INSERT INTO session_end_counts (reason, n) VALUES ($1, $2) \
                 ON CONFLICT (reason) DO UPDATE SET n = session_end_counts.n + excluded.n",
            )
            .bind(reason.as_str())
            .bind(i64::try_from(n).unwrap_or(i64::MAX))
            .execute(&mut *conn)
            .await
            .map_err(from_sqlx)?;
            Ok(())
        }

        /// Revokes the families of a user's `offline_access` refresh tokens (and so the access
        /// tokens minted from them): the grants that outlive sessions end with a password change
        /// or a disabled account. The scope list is closed, so the pattern matches one scope.
        async fn revoke_offline_tokens(
            conn: &mut <$db as sqlx::Database>::Connection,
            user: &UserId,
            at: UnixTime,
        ) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO refresh_family_revocations (family_id, revoked_at) \
                 SELECT DISTINCT family_id, $2 FROM refresh_tokens \
                 WHERE user_id = $1 AND scope LIKE '%offline_access%' \
                 ON CONFLICT (family_id) DO NOTHING",
            )
            .bind(user.as_str())
            .bind(at.as_secs())
            .execute(&mut *conn)
            .await
            .map_err(from_sqlx)?;
            Ok(())
        }

        async fn enqueue_logouts(
            conn: &mut <$db as sqlx::Database>::Connection,
            row: &EndedRow,
            at: UnixTime,
        ) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO logout_outbox (client_id, user_id, session_id, uri, created_at, next_attempt_at) \
                 SELECT c.id, $2, $1, c.backchannel_logout_uri, $3, $3 FROM session_clients sc \
                 JOIN clients c ON c.id = sc.client_id \
                 WHERE sc.session_id = $1 AND c.backchannel_logout_uri IS NOT NULL",
            )
            .bind(row.public_id.as_str())
            .bind(row.user_id.as_str())
            .bind(at.as_secs())
            .execute(&mut *conn)
            .await
            .map_err(from_sqlx)?;
            sqlx::query("DELETE FROM session_clients WHERE session_id = $1")
                .bind(row.public_id.as_str())
                .execute(&mut *conn)
                .await
                .map_err(from_sqlx)?;
            Ok(())
        }

        async fn insert_audit(
            conn: &mut <$db as sqlx::Database>::Connection,
            e: &NewAuditEvent,
        ) -> Result<(), StoreError> {
            sqlx::query(
                "INSERT INTO audit_events (at, kind, user_id, client_id, ip, user_agent, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(e.at.as_secs())
            .bind(e.kind.as_str())
            .bind(e.user_id.as_deref())
            .bind(e.client_id.as_deref())
            .bind(e.actor.ip.as_deref())
            .bind(e.actor.user_agent.as_deref())
            .bind(e.detail.as_str())
            .execute(&mut *conn)
            .await
            .map_err(from_sqlx)?;
            // The log line of the audit trail. Details never carry secrets (see audit.rs).
            tracing::info!(
                target: "lanyard::audit",
                kind = e.kind.as_str(),
                user = e.user_id.as_deref().unwrap_or("-"),
                client = e.client_id.as_deref().unwrap_or("-"),
                ip = e.actor.ip.as_deref().unwrap_or("-"),
                detail = e.detail.as_str(),
                "audit"
            );
            Ok(())
        }

        async fn replace_codes(
            conn: &mut <$db as sqlx::Database>::Connection,
            user: &UserId,
            digests: &[String],
            now: UnixTime,
        ) -> Result<(), StoreError> {
            sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
                .bind(user.as_str())
                .execute(&mut *conn)
                .await
                .map_err(from_sqlx)?;
            for d in digests {
                sqlx::query("INSERT INTO recovery_codes (user_id, code_digest, created_at) VALUES ($1, $2, $3)")
                    .bind(user.as_str())
                    .bind(d.as_str())
                    .bind(now.as_secs())
                    .execute(&mut *conn)
                    .await
                    .map_err(from_sqlx)?;
            }
            Ok(())
        }

        #[async_trait::async_trait]
        impl lanyard_core::Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn ping(&self) -> Result<(), StoreError> {
                sqlx::query("SELECT 1").execute(&mut *self.read().await?).await.map_err(from_sqlx)?;
                Ok(())
            }

            fn pool_use(&self) -> (u32, u32, u32) {
                self.connections()
            }

            async fn shared_metrics(&self) -> Result<lanyard_core::store::SharedMetrics, StoreError> {
                let count = |(k, n): (String, i64)| (k, u64::try_from(n).unwrap_or(0));
                let (sessions,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM sessions")
                    .fetch_one(&mut *self.read().await?)
                    .await
                    .map_err(from_sqlx)?;
                let ended: Vec<(String, i64)> =
                    sqlx::query_as("SELECT reason, n FROM session_end_counts ORDER BY reason")
                        .fetch_all(&mut *self.read().await?)
                        .await
                        .map_err(from_sqlx)?;
                let deliveries: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT state, COUNT(*) FROM logout_outbox GROUP BY state ORDER BY state",
                )
                .fetch_all(&mut *self.read().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(lanyard_core::store::SharedMetrics {
                    sessions: u64::try_from(sessions).unwrap_or(0),
                    sessions_ended: ended.into_iter().map(count).collect(),
                    logout_deliveries: deliveries.into_iter().map(count).collect(),
                })
            }

            async fn create_user(&self, u: &NewUser, e: &NewAuditEvent) -> Result<(), StoreError> {
                let mut conn = self.write().await?;
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin).await.map_err(from_sqlx)?;
                sqlx::query(
                    "INSERT INTO users (id, username, email, display_name, password_hash, \
                     disabled, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, FALSE, $6, $6)",
                )
                .bind(u.id.as_str())
                .bind(u.username.as_str())
                .bind(u.email.as_str())
                .bind(u.display_name.as_ref().map(|d| d.as_str()))
                .bind(u.password_hash.as_str())
                .bind(u.created_at.as_secs())
                .execute(&mut *tx)
                .await
                .map_err(|err| {
                    conflict_or(err, || format!("a user named {:?} already exists", u.username.as_str()))
                })?;
                insert_audit(&mut tx, e).await?;
                tx.commit().await.map_err(from_sqlx)
            }

            async fn user_by_username(&self, username: &Username) -> Result<Option<User>, StoreError> {
                let row = sqlx::query_as::<_, UserRow>(concat!("SELECT ", user_columns!(), " FROM users WHERE username = $1"))
                    .bind(username.as_str())
                    .fetch_optional(&mut *self.read().await?)
                    .await
                    .map_err(from_sqlx)?;
                Ok(row.map(User::from))
            }

            async fn user_by_id(&self, id: &UserId) -> Result<Option<User>, StoreError> {
                let row = sqlx::query_as::<_, UserRow>(concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1"))
                    .bind(id.as_str())
                    .fetch_optional(&mut *self.read().await?)
                    .await
                    .map_err(from_sqlx)?;
                Ok(row.map(User::from))
            }

            async fn user_with_session(
                &self,
                id: &UserId,
                session: Option<&str>,
                idle_cutoff: UnixTime,
                lifetime_cutoff: UnixTime,
            ) -> Result<Option<(User, bool)>, StoreError> {
                let row = sqlx::query_as::<_, UserWithSessionRow>(concat!(
                    "SELECT ", user_columns!(), ", CAST(CASE WHEN EXISTS (SELECT 1 FROM sessions \
                     WHERE public_id = $2 AND user_id = $1 AND last_seen_at > $3 AND created_at > $4) \
                     THEN 1 ELSE 0 END AS BIGINT) AS session_alive FROM users WHERE id = $1"
                ))
                .bind(id.as_str())
                .bind(session)
                .bind(idle_cutoff.as_secs())
                .bind(lifetime_cutoff.as_secs())
                .fetch_optional(&mut *self.read().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(row.map(Into::into))
            }

            async fn list_users(&self) -> Result<Vec<User>, StoreError> {
                let rows = sqlx::query_as::<_, UserRow>(concat!("SELECT ", user_columns!(), " FROM users ORDER BY username"))
                    .fetch_all(&mut *self.read().await?)
                    .await
                    .map_err(from_sqlx)?;
                Ok(rows.into_iter().map(User::from).collect())
            }

            async fn disable_user(&self, id: &UserId, e: &NewAuditEvent) -> Result<bool, StoreError> {
                let mut conn = self.write().await?;
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin).await.map_err(from_sqlx)?;
                let done = sqlx::query("UPDATE users SET disabled = TRUE, updated_at = $2 WHERE id = $1")
                    .bind(id.as_str())
                    .bind(e.at.as_secs())
                    .execute(&mut *tx)
                    .await
                    .map_err(from_sqlx)?
                    .rows_affected();
                if done == 0 {
                    return Ok(false);
                }
                insert_audit(&mut tx, e).await?;
                let ended = sqlx::query_as::<_, EndedRow>(
                    "DELETE FROM sessions WHERE user_id = $1 RETURNING public_id, user_id, created_at",
                )
                .bind(id.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(from_sqlx)?;
                audit_ended(&mut tx, &ended, EndReason::UserDisabled, e).await?;
                revoke_offline_tokens(&mut tx, id, e.at).await?;
                tx.commit().await.map_err(from_sqlx)?;
                Ok(true)
            }

            async fn set_password_hash(
                &self,
                id: &UserId,
                hash: &str,
                keep: Option<&str>,
                e: &NewAuditEvent,
            ) -> Result<bool, StoreError> {
                let mut conn = self.write().await?;
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin).await.map_err(from_sqlx)?;
                let done =
                    sqlx::query("UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1")
                        .bind(id.as_str())
                        .bind(hash)
                        .bind(e.at.as_secs())
                        .execute(&mut *tx)
                        .await
                        .map_err(from_sqlx)?
                        .rows_affected();
                if done == 0 {
                    return Ok(false);
                }
                insert_audit(&mut tx, e).await?;
                let ended = sqlx::query_as::<_, EndedRow>(
                    "DELETE FROM sessions WHERE user_id = $1 AND ($2 IS NULL OR id_digest <> $2) \
                     RETURNING public_id, user_id, created_at",
                )
                .bind(id.as_str())
                .bind(keep)
                .fetch_all(&mut *tx)
                .await
                .map_err(from_sqlx)?;
                audit_ended(&mut tx, &ended, EndReason::PasswordChanged, e).await?;
                revoke_offline_tokens(&mut tx, id, e.at).await?;
                tx.commit().await.map_err(from_sqlx)?;
                Ok(true)
            }

            async fn rehash_password(&self, id: &UserId, old: &str, new: &str) -> Result<(), StoreError> {
                // Only if the hash is still the one verified: a concurrent change wins.
                sqlx::query("UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2")
                    .bind(id.as_str())
                    .bind(old)
                    .bind(new)
                    .execute(&mut *self.write().await?)
                    .await
                    .map_err(from_sqlx)?;
                Ok(())
            }

            async fn create_client(&self, c: &Client, e: &NewAuditEvent) -> Result<(), StoreError> {
                let mut conn = self.write().await?;
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin).await.map_err(from_sqlx)?;
                sqlx::query(concat!(
                    "INSERT INTO clients (",
                    client_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
                ))
                    .bind(c.id.as_str())
                    .bind(c.name.as_str())
                    .bind(c.secret_hash.as_deref())
                    .bind(c.public)
                    .bind(join(c.redirect_uris.iter().map(String::as_str)))
                    .bind(join(c.post_logout_redirect_uris.iter().map(String::as_str)))
                    .bind(c.backchannel_logout_uri.as_deref())
                    .bind(c.frontchannel_logout_uri.as_deref())
                    .bind(join(c.grant_types.iter().map(|g| g.as_str())))
                    .bind(c.id_token_alg.as_str())
                    .bind(c.skip_consent)
                    .bind(c.created_at.as_secs())
                    .bind(c.require_mfa)
                    .execute(&mut *tx)
                    .await
                    .map_err(|err| {
                        conflict_or(err, || format!("a client named {:?} already exists", c.name))
                    })?;
                insert_audit(&mut tx, e).await?;
                tx.commit().await.map_err(from_sqlx)
            }

            async fn client_by_id(&self, id: &ClientId) -> Result<Option<Client>, StoreError> {
                let row = sqlx::query_as::<_, ClientRow>(concat!("SELECT ", client_columns!(), " FROM clients WHERE id = $1"))
                    .bind(id.as_str())
                    .fetch_optional(&mut *self.read().await?)
                    .await
                    .map_err(from_sqlx)?;
                row.map(Client::try_from).transpose()
            }

            async fn list_clients(&self) -> Result<Vec<Client>, StoreError> {
                let rows = sqlx::query_as::<_, ClientRow>(concat!("SELECT ", client_columns!(), " FROM clients ORDER BY name"))
                    .fetch_all(&mut *self.read().await?)
                    .await
                    .map_err(from_sqlx)?;
                rows.into_iter().map(Client::try_from).collect()
            }

            async fn remove_client(&self, id: &ClientId, e: &NewAuditEvent) -> Result<bool, StoreError> {
                let mut conn = self.write().await?;
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin).await.map_err(from_sqlx)?;
                let done = sqlx::query("DELETE FROM clients WHERE id = $1")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(from_sqlx)?
                    .rows_affected();
                if done == 0 {
                    return Ok(false);
                }
                insert_audit(&mut tx, e).await?;
                tx.commit().await.map_err(from_sqlx)?;
                Ok(true)
            }

            async fn create_session(
                &self,
                s: &NewSession,
                replaces: Option<&str>,
                max_per_user: u32,
                events: &[NewAuditEvent],
            ) -> Result<String, StoreError> {
                let mut conn = self.write().await?;
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin).await.map_err(from_sqlx)?;
                // Serialises sign-ins of one user, so two at once cannot both slip under the cap.
                sqlx::query($lock_user).bind(s.user_id.as_str()).execute(&mut *tx).await.map_err(from_sqlx)?;
                let template = events.first().cloned().unwrap_or_else(|| {
                    NewAuditEvent::new(s.now, lanyard_core::audit::AuditKind::SessionEnded)
                });
                let mut public_id = s.public_id.clone();
                if let Some(old) = replaces {
                    let ended = sqlx::query_as::<_, EndedRow>(
                        "DELETE FROM sessions WHERE id_digest = $1 RETURNING public_id, user_id, created_at",
                    )
                    .bind(old)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(from_sqlx)?;
                    match ended.first() {
                        Some(row) if row.user_id == s.user_id.as_str() => public_id = row.public_id.clone(),
                        _ => audit_ended(&mut tx, &ended, EndReason::SignedOut, &template).await?,
                    }
                }
                sqlx::query(
                    "INSERT INTO sessions (id_digest, public_id, user_id, created_at, auth_time, \
                     last_seen_at, amr, ip, user_agent) VALUES ($1, $2, $3, $4, $4, $4, $5, $6, $7)",
                )
                .bind(s.id_digest.as_str())
                .bind(public_id.as_str())
                .bind(s.user_id.as_str())
                .bind(s.now.as_secs())
                .bind(join(s.amr.iter().map(String::as_str)))
                .bind(s.ip.as_deref())
                .bind(s.user_agent.as_deref())
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
                for e in events {
                    insert_audit(&mut tx, e).await?;
                }
                // The new session always stays; the oldest of the others go past the cap.
                let others: Vec<(String,)> = sqlx::query_as(
                    "SELECT id_digest FROM sessions WHERE user_id = $1 AND id_digest <> $2 \
                     ORDER BY created_at DESC, last_seen_at DESC",
                )
                .bind(s.user_id.as_str())
                .bind(s.id_digest.as_str())
                .fetch_all(&mut *tx)
                .await
                .map_err(from_sqlx)?;
                let keep = usize::try_from(max_per_user.saturating_sub(1)).unwrap_or(usize::MAX);
                let mut evicted = 0u32;
                for (digest,) in others.iter().skip(keep) {
                    let ended = sqlx::query_as::<_, EndedRow>(
                        "DELETE FROM sessions WHERE id_digest = $1 RETURNING public_id, user_id, created_at",
                    )
                    .bind(digest.as_str())
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(from_sqlx)?;
                    audit_ended(&mut tx, &ended, EndReason::Evicted, &template).await?;
                    evicted += 1;
                }
                if evicted > 0 {
                    sqlx::query("UPDATE sessions SET notice = $2 WHERE id_digest = $1")
                        .bind(s.id_digest.as_str())
                        .bind(lanyard_core::session::NOTICE_EVICTED)
                        .execute(&mut *tx)
                        .await
                        .map_err(from_sqlx)?;
                }
                tx.commit().await.map_err(from_sqlx)?;
                tracing::debug!(evicted, "session created");
                Ok(public_id)
            }

            async fn session_with_user(&self, digest: &str) -> Result<Option<(Session, User)>, StoreError> {
                let row = sqlx::query_as::<_, SessionUserRow>(
                    "SELECT s.public_id, s.user_id, s.created_at, s.auth_time, s.last_seen_at, s.amr, \
                     s.ip, s.user_agent, s.notice, u.username, u.email, u.display_name, \
                     u.password_hash, u.disabled, u.created_at AS user_created_at \
                     FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id_digest = $1",
                )
                .bind(digest)
                .fetch_optional(&mut *self.read().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(row.map(Into::into))
            }

            async fn session_by_digest(&self, digest: &str) -> Result<Option<Session>, StoreError> {
                let row = sqlx::query_as::<_, SessionRow>(concat!(
                    "SELECT ", session_columns!(), " FROM sessions WHERE id_digest = $1"
                ))
                .bind(digest)
                .fetch_optional(&mut *self.read().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(row.map(Session::from))
            }

            async fn touch_session(&self, digest: &str, now: UnixTime) -> Result<(), StoreError> {
                sqlx::query(
                    "UPDATE sessions SET last_seen_at = $2 WHERE id_digest = $1 AND last_seen_at < $2",
                )
                .bind(digest)
                .bind(now.as_secs())
                .execute(&mut *self.write().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(())
            }

            async fn clear_session_notice(&self, digest: &str) -> Result<(), StoreError> {
                sqlx::query("UPDATE sessions SET notice = NULL WHERE id_digest = $1 AND notice IS NOT NULL")
                    .bind(digest)
                    .execute(&mut *self.write().await?)
                    .await
                    .map_err(from_sqlx)?;
                Ok(())
            }

            async fn end_session(
                &self,
                digest: &str,
                reason: EndReason,
                e: &NewAuditEvent,
            ) -> Result<bool, StoreError> {
                let mut conn = self.write().await?;
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin).await.map_err(from_sqlx)?;
                let ended = sqlx::query_as::<_, EndedRow>(
                    "DELETE FROM sessions WHERE id_digest = $1 RETURNING public_id, user_id, created_at",
                )
                .bind(digest)
                .fetch_all(&mut *tx)
                .await
                .map_err(from_sqlx)?;
                audit_ended(&mut tx, &ended, reason, e).await?;
                tx.commit().await.map_err(from_sqlx)?;
                Ok(!ended.is_empty())
            }

            async fn end_session_by_public_id(
                &self,
                public_id: &str,
                user: Option<&UserId>,
                reason: EndReason,
                e: &NewAuditEvent,
            ) -> Result<bool, StoreError> {
                let mut conn = self.write().await?;
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin).await.map_err(from_sqlx)?;
                let ended = sqlx::query_as::<_, EndedRow>(
                    "DELETE FROM sessions WHERE public_id = $1 AND ($2 IS NULL OR user_id = $2) \
                     RETURNING public_id, user_id, created_at",
                )
                .bind(public_id)
                .bind(user.map(|u| u.as_str()))
                .fetch_all(&mut *tx)
                .await
                .map_err(from_sqlx)?;
                audit_ended(&mut tx, &ended, reason, e).await?;
                tx.commit().await.map_err(from_sqlx)?;
                Ok(!ended.is_empty())
            }

            async fn end_user_sessions(
                &self,
                user: &UserId,
                keep: Option<&str>,
                reason: EndReason,
                e: &NewAuditEvent,
            ) -> Result<u32, StoreError> {
                let mut conn = self.write().await?;
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin).await.map_err(from_sqlx)?;
                let ended = sqlx::query_as::<_, EndedRow>(
                    "DELETE FROM sessions WHERE user_id = $1 AND ($2 IS NULL OR id_digest <> $2) \
                     RETURNING public_id, user_id, created_at",
                )
                .bind(user.as_str())
                .bind(keep)
                .fetch_all(&mut *tx)
                .await
                .map_err(from_sqlx)?;
                audit_ended(&mut tx, &ended, reason, e).await?;
                tx.commit().await.map_err(from_sqlx)?;
                Ok(u32::try_from(ended.len()).unwrap_or(u32::MAX))
            }

            async fn list_sessions(
                &self,
                user: Option<&UserId>,
                idle_cutoff: UnixTime,
                lifetime_cutoff: UnixTime,
            ) -> Result<Vec<Session>, StoreError> {
                let rows = sqlx::query_as::<_, SessionRow>(concat!(
                    "SELECT ", session_columns!(),
                    " FROM sessions WHERE ($1 IS NULL OR user_id = $1) \
                     AND last_seen_at > $2 AND created_at > $3 ORDER BY created_at DESC, public_id"
                ))
                .bind(user.map(|u| u.as_str()))
                .bind(idle_cutoff.as_secs())
                .bind(lifetime_cutoff.as_secs())
                .fetch_all(&mut *self.read().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(rows.into_iter().map(Session::from).collect())
            }

            async fn sweep_sessions(
                &self,
                idle_cutoff: UnixTime,
                lifetime_cutoff: UnixTime,
                now: UnixTime,
            ) -> Result<u32, StoreError> {
                let mut conn = self.write().await?;
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin).await.map_err(from_sqlx)?;
                let ended = sqlx::query_as::<_, EndedRow>(
                    "DELETE FROM sessions WHERE last_seen_at <= $1 OR created_at <= $2 \
                     RETURNING public_id, user_id, created_at",
                )
                .bind(idle_cutoff.as_secs())
                .bind(lifetime_cutoff.as_secs())
                .fetch_all(&mut *tx)
                .await
                .map_err(from_sqlx)?;
                let template = NewAuditEvent::new(now, lanyard_core::audit::AuditKind::SessionEnded);
                let (mut idle, mut lifetime) = (0, 0);
                for row in &ended {
                    let reason = if row.created_at <= lifetime_cutoff.as_secs() {
                        lifetime += 1;
                        EndReason::LifetimeExceeded
                    } else {
                        idle += 1;
                        EndReason::IdleTimeout
                    };
                    insert_audit(&mut tx, &ended_event(&template, row, reason)).await?;
                    enqueue_logouts(&mut tx, row, now).await?;
                }
                count_ended(&mut tx, EndReason::IdleTimeout, idle).await?;
                count_ended(&mut tx, EndReason::LifetimeExceeded, lifetime).await?;
                tx.commit().await.map_err(from_sqlx)?;
                Ok(u32::try_from(ended.len()).unwrap_or(u32::MAX))
            }

            async fn begin_sign_in_attempt(
                &self,
                attempt: &str,
                keys: &[Key],
                now: UnixTime,
            ) -> Result<Vec<(Key, Failures)>, StoreError> {
                // Committed before counting: of two parallel attempts, the later one sees the
                // earlier, so a burst cannot all pass a check made before any was recorded.
                let mut conn = self.write().await?;
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin).await.map_err(from_sqlx)?;
                for k in keys {
                    sqlx::query("INSERT INTO sign_in_failures (key, at, attempt) VALUES ($1, $2, $3)")
                        .bind(k.key.as_str())
                        .bind(now.as_secs())
                        .bind(attempt)
                        .execute(&mut *tx)
                        .await
                        .map_err(from_sqlx)?;
                }
                tx.commit().await.map_err(from_sqlx)?;
                // Hold no connection while waiting for another.
                drop(conn);
                let mut out = Vec::with_capacity(keys.len());
                for k in keys {
                    let since = now.saturating_sub(k.limit.window);
                    let (count, latest): (i64, Option<i64>) = sqlx::query_as(
                        "SELECT COUNT(*), MAX(at) FROM sign_in_failures \
                         WHERE key = $1 AND at > $2 AND attempt <> $3",
                    )
                    .bind(k.key.as_str())
                    .bind(since.as_secs())
                    .bind(attempt)
                    .fetch_one(&mut *self.read().await?)
                    .await
                    .map_err(from_sqlx)?;
                    let failures = Failures {
                        count: u32::try_from(count).unwrap_or(u32::MAX),
                        latest: latest.map(UnixTime::from_secs),
                    };
                    out.push((k.clone(), failures));
                }
                Ok(out)
            }

            async fn settle_sign_in_attempt(
                &self,
                attempt: &str,
                outcome: AttemptOutcome,
                keys: &[Key],
            ) -> Result<(), StoreError> {
                let mut conn = self.write().await?;
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin).await.map_err(from_sqlx)?;
                if outcome != AttemptOutcome::Failed {
                    sqlx::query("DELETE FROM sign_in_failures WHERE attempt = $1")
                        .bind(attempt)
                        .execute(&mut *tx)
                        .await
                        .map_err(from_sqlx)?;
                }
                if let (AttemptOutcome::Succeeded, Some(first)) = (outcome, keys.first()) {
                    sqlx::query("DELETE FROM sign_in_failures WHERE key = $1")
                        .bind(first.key.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(from_sqlx)?;
                }
                tx.commit().await.map_err(from_sqlx)
            }

            async fn sweep_sign_in_failures(&self, before: UnixTime) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM sign_in_failures WHERE at < $1")
                    .bind(before.as_secs())
                    .execute(&mut *self.write().await?)
                    .await
                    .map_err(from_sqlx)?;
                Ok(())
            }

            async fn session_by_public_id(&self, public_id: &str) -> Result<Option<Session>, StoreError> {
                let row = sqlx::query_as::<_, SessionRow>(concat!(
                    "SELECT ", session_columns!(), " FROM sessions WHERE public_id = $1"
                ))
                .bind(public_id)
                .fetch_optional(&mut *self.read().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(row.map(Session::from))
            }

            async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
                let rows = sqlx::query_as::<_, KeyRow>(
                    "SELECT kid, alg, created_at, activates_at, retired_at, sealed FROM signing_keys \
                     ORDER BY activates_at DESC, created_at DESC, kid",
                )
                .fetch_all(&mut *self.read().await?)
                .await
                .map_err(from_sqlx)?;
                rows.into_iter().map(StoredKey::try_from).collect()
            }

            async fn add_signing_key(
                &self,
                k: &StoredKey,
                retire_others: bool,
                e: &NewAuditEvent,
            ) -> Result<(), StoreError> {
                let mut conn = self.write().await?;
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin).await.map_err(from_sqlx)?;
                if retire_others {
                    sqlx::query(
                        "UPDATE signing_keys SET retired_at = $2 WHERE alg = $1 AND retired_at IS NULL",
                    )
                    .bind(k.alg.as_str())
                    // Retired when the new key takes over: until then it still signs.
                    .bind(k.activates_at.as_secs())
                    .execute(&mut *tx)
                    .await
                    .map_err(from_sqlx)?;
                }
                sqlx::query(
                    "INSERT INTO signing_keys (kid, alg, created_at, activates_at, retired_at, sealed) \
                     VALUES ($1, $2, $3, $5, NULL, $4)",
                )
                .bind(k.kid.as_str())
                .bind(k.alg.as_str())
                .bind(k.created_at.as_secs())
                .bind(k.sealed.as_str())
                .bind(k.activates_at.as_secs())
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
                insert_audit(&mut tx, e).await?;
                tx.commit().await.map_err(from_sqlx)
            }

            async fn delete_retired_keys(&self, before: UnixTime) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM signing_keys WHERE retired_at IS NOT NULL AND retired_at < $1")
                    .bind(before.as_secs())
                    .execute(&mut *self.write().await?)
                    .await
                    .map_err(from_sqlx)?;
                Ok(())
            }

            async fn insert_code(&self, c: &AuthorizationCode) -> Result<(), StoreError> {
                // One statement that also records the session's client (see `$insert_code`).
                sqlx::query($insert_code)
                .bind(c.code_digest.as_str())
                .bind(c.client_id.as_str())
                .bind(c.user_id.as_str())
                .bind(c.session_id.as_str())
                .bind(c.redirect_uri.as_str())
                .bind(c.scope.as_str())
                .bind(c.nonce.as_deref())
                .bind(c.code_challenge.as_deref())
                .bind(c.auth.auth_time.as_secs())
                .bind(join(c.auth.amr.iter().map(String::as_str)))
                .bind(c.auth.acr.as_deref())
                .bind(c.created_at.as_secs())
                .bind(c.expires_at.as_secs())
                .execute(&mut *self.write().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(())
            }

            async fn session_clients(&self, public_id: &str) -> Result<Vec<ClientId>, StoreError> {
                let rows: Vec<(String,)> = sqlx::query_as(
                    "SELECT client_id FROM session_clients WHERE session_id = $1 ORDER BY first_at, client_id",
                )
                .bind(public_id)
                .fetch_all(&mut *self.read().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(rows.into_iter().map(|(c,)| ClientId::from_stored(c)).collect())
            }

            async fn redeem_code(
                &self,
                digest: &str,
                now: UnixTime,
                access_jti: &str,
                refresh_family: &str,
            ) -> Result<CodeRedemption, StoreError> {
                // One statement decides who gets the code and records what it is exchanged
                // for: of two racing redemptions, one updates the row and the other finds
                // `used_at` set, with the tokens to revoke already named.
                let fresh = sqlx::query_as::<_, CodeRow>(concat!(
                    "UPDATE authorization_codes SET used_at = $2, access_jti = $3, refresh_family = $4 \
                     WHERE code_digest = $1 AND used_at IS NULL RETURNING ",
                    code_columns!()
                ))
                .bind(digest)
                .bind(now.as_secs())
                .bind(access_jti)
                .bind(refresh_family)
                .fetch_optional(&mut *self.write().await?)
                .await
                .map_err(from_sqlx)?;
                if let Some(row) = fresh {
                    return Ok(CodeRedemption::Fresh(Box::new(row.into())));
                }
                let used: Option<(Option<String>, Option<String>)> = sqlx::query_as(
                    "SELECT access_jti, refresh_family FROM authorization_codes WHERE code_digest = $1",
                )
                .bind(digest)
                .fetch_optional(&mut *self.read().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(match used {
                    Some((access_jti, refresh_family)) => CodeRedemption::Replayed { access_jti, refresh_family },
                    None => CodeRedemption::Unknown,
                })
            }

            async fn sweep_codes(&self, before: UnixTime) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM authorization_codes WHERE expires_at < $1")
                    .bind(before.as_secs())
                    .execute(&mut *self.write().await?)
                    .await
                    .map_err(from_sqlx)?;
                sqlx::query("DELETE FROM revoked_access_tokens WHERE expires_at < $1")
                    .bind(before.as_secs())
                    .execute(&mut *self.write().await?)
                    .await
                    .map_err(from_sqlx)?;
                sqlx::query("DELETE FROM pending_signins WHERE expires_at < $1")
                    .bind(before.as_secs())
                    .execute(&mut *self.write().await?)
                    .await
                    .map_err(from_sqlx)?;
                sqlx::query("DELETE FROM webauthn_ceremonies WHERE expires_at < $1")
                    .bind(before.as_secs())
                    .execute(&mut *self.write().await?)
                    .await
                    .map_err(from_sqlx)?;
                sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < $1")
                    .bind(before.as_secs())
                    .execute(&mut *self.write().await?)
                    .await
                    .map_err(from_sqlx)?;
                sqlx::query(
                    "DELETE FROM refresh_family_revocations WHERE NOT EXISTS \
                     (SELECT 1 FROM refresh_tokens t WHERE t.family_id = refresh_family_revocations.family_id)",
                )
                .execute(&mut *self.write().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(())
            }

            async fn consent(&self, user: &UserId, client: &ClientId) -> Result<Option<String>, StoreError> {
                let row: Option<(String,)> =
                    sqlx::query_as("SELECT scope FROM consents WHERE user_id = $1 AND client_id = $2")
                        .bind(user.as_str())
                        .bind(client.as_str())
                        .fetch_optional(&mut *self.read().await?)
                        .await
                        .map_err(from_sqlx)?;
                Ok(row.map(|(s,)| s))
            }

            async fn grant_consent(
                &self,
                user: &UserId,
                client: &ClientId,
                scope: &str,
                now: UnixTime,
            ) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO consents (user_id, client_id, scope, granted_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (user_id, client_id) DO UPDATE SET scope = $3, granted_at = $4",
                )
                .bind(user.as_str())
                .bind(client.as_str())
                .bind(scope)
                .bind(now.as_secs())
                .execute(&mut *self.write().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(())
            }

            async fn insert_refresh_token(&self, t: &RefreshToken) -> Result<(), StoreError> {
                sqlx::query(concat!(
                    "INSERT INTO refresh_tokens (", refresh_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                ))
                .bind(t.token_digest.as_str())
                .bind(t.family_id.as_str())
                .bind(t.client_id.as_str())
                .bind(t.user_id.as_str())
                .bind(t.session_id.as_deref())
                .bind(t.scope.as_str())
                .bind(t.auth.auth_time.as_secs())
                .bind(join(t.auth.amr.iter().map(String::as_str)))
                .bind(t.auth.acr.as_deref())
                .bind(t.issued_at.as_secs())
                .bind(t.expires_at.as_secs())
                .execute(&mut *self.write().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(())
            }

            async fn rotate_refresh_token(
                &self,
                digest: &str,
                new_digest: &str,
                now: UnixTime,
            ) -> Result<RefreshRedemption, StoreError> {
                // One statement, one round trip (see `$rotate` in each backend).
                let fresh = sqlx::query_as::<_, RefreshRow>($rotate)
                    .bind(digest)
                    .bind(new_digest)
                    .bind(now.as_secs())
                    .fetch_optional(&mut *self.write().await?)
                    .await
                    .map_err(from_sqlx)?;
                if let Some(row) = fresh {
                    return Ok(RefreshRedemption::Fresh(Box::new(row.into())));
                }
                let family: Option<(String,)> =
                    sqlx::query_as("SELECT family_id FROM refresh_tokens WHERE token_digest = $1")
                        .bind(digest)
                        .fetch_optional(&mut *self.read().await?)
                        .await
                        .map_err(from_sqlx)?;
                match family {
                    Some((family_id,)) => {
                        self.revoke_refresh_family(&family_id, now).await?;
                        Ok(RefreshRedemption::Reused { family_id })
                    }
                    None => Ok(RefreshRedemption::Unknown),
                }
            }

            async fn revoke_refresh_family(&self, family_id: &str, now: UnixTime) -> Result<u32, StoreError> {
                // The marker first: it also kills a token of the family inserted after this.
                sqlx::query(
                    "INSERT INTO refresh_family_revocations (family_id, revoked_at) VALUES ($1, $2) \
                     ON CONFLICT (family_id) DO NOTHING",
                )
                .bind(family_id)
                .bind(now.as_secs())
                .execute(&mut *self.write().await?)
                .await
                .map_err(from_sqlx)?;
                let done = sqlx::query(
                    "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
                )
                .bind(family_id)
                .bind(now.as_secs())
                .execute(&mut *self.write().await?)
                .await
                .map_err(from_sqlx)?
                .rows_affected();
                Ok(u32::try_from(done).unwrap_or(u32::MAX))
            }

            async fn refresh_token(&self, digest: &str) -> Result<Option<StoredRefresh>, StoreError> {
                let row = sqlx::query_as::<_, RefreshStateRow>(concat!(
                    "SELECT ", refresh_columns!(), ", used_at, \
                     COALESCE(revoked_at, (SELECT r.revoked_at FROM refresh_family_revocations r \
                     WHERE r.family_id = refresh_tokens.family_id)) AS revoked_at \
                     FROM refresh_tokens WHERE token_digest = $1"
                ))
                .bind(digest)
                .fetch_optional(&mut *self.read().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(row.map(StoredRefresh::from))
            }

            async fn revoke_access_token(&self, jti: &str, expires_at: UnixTime) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO revoked_access_tokens (jti, expires_at) VALUES ($1, $2) \
                     ON CONFLICT (jti) DO NOTHING",
                )
                .bind(jti)
                .bind(expires_at.as_secs())
                .execute(&mut *self.write().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(())
            }

            async fn active_token_user(
                &self,
                c: &lanyard_core::store::AccessTokenCheck<'_>,
            ) -> Result<Option<User>, StoreError> {
                let query = sqlx::query_as::<_, UserRow>(concat!(
                    "SELECT ", user_columns!(), " FROM users WHERE id = $5 AND NOT disabled AND ",
                    access_token_active!()
                ));
                let row = bind_access_check!(query, c)
                .fetch_optional(&mut *self.read().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(row.map(User::from))
            }

            async fn access_token_active(
                &self,
                c: &lanyard_core::store::AccessTokenCheck<'_>,
            ) -> Result<bool, StoreError> {
                let query = sqlx::query_as(concat!(
                    "SELECT CAST(CASE WHEN ", access_token_active!(), " \
                     AND ($5 IS NULL OR EXISTS (SELECT 1 FROM users WHERE id = $5 AND NOT disabled)) \
                     THEN 1 ELSE 0 END AS BIGINT)",
                ));
                let (active,): (i64,) = bind_access_check!(query, c)
                .fetch_one(&mut *self.read().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(active == 1)
            }

            async fn totp_factor(&self, user: &UserId) -> Result<Option<TotpFactor>, StoreError> {
                let row: Option<(String, Option<i64>, i64)> = sqlx::query_as(
                    "SELECT sealed_secret, confirmed_at, last_step FROM totp_factors WHERE user_id = $1",
                )
                .bind(user.as_str())
                .fetch_optional(&mut *self.read().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(row.map(|(sealed_secret, confirmed, last_step)| TotpFactor {
                    sealed_secret,
                    confirmed: confirmed.is_some(),
                    last_step,
                }))
            }

            async fn begin_totp(&self, user: &UserId, sealed: &str, now: UnixTime) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "INSERT INTO totp_factors (user_id, sealed_secret, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (user_id) DO UPDATE SET sealed_secret = $2, created_at = $3 \
                     WHERE totp_factors.confirmed_at IS NULL",
                )
                .bind(user.as_str())
                .bind(sealed)
                .bind(now.as_secs())
                .execute(&mut *self.write().await?)
                .await
                .map_err(from_sqlx)?
                .rows_affected();
                Ok(done == 1)
            }

            async fn confirm_totp(
                &self,
                user: &UserId,
                sealed: &str,
                step: i64,
                recovery_digests: &[String],
                e: &NewAuditEvent,
            ) -> Result<bool, StoreError> {
                let mut conn = self.write().await?;
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin).await.map_err(from_sqlx)?;
                let done = sqlx::query(
                    "UPDATE totp_factors SET confirmed_at = $2, last_step = $3 \
                     WHERE user_id = $1 AND confirmed_at IS NULL AND sealed_secret = $4",
                )
                .bind(user.as_str())
                .bind(e.at.as_secs())
                .bind(step)
                .bind(sealed)
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?
                .rows_affected();
                if done == 0 {
                    return Ok(false);
                }
                replace_codes(&mut tx, user, recovery_digests, e.at).await?;
                insert_audit(&mut tx, e).await?;
                tx.commit().await.map_err(from_sqlx)?;
                Ok(true)
            }

            async fn use_totp_step(&self, user: &UserId, step: i64) -> Result<bool, StoreError> {
                // Moves last_step forward only: of two requests with the same code, one wins.
                let done = sqlx::query(
                    "UPDATE totp_factors SET last_step = $2 \
                     WHERE user_id = $1 AND confirmed_at IS NOT NULL AND last_step < $2",
                )
                .bind(user.as_str())
                .bind(step)
                .execute(&mut *self.write().await?)
                .await
                .map_err(from_sqlx)?
                .rows_affected();
                Ok(done == 1)
            }

            async fn remove_totp(&self, user: &UserId, e: &NewAuditEvent) -> Result<bool, StoreError> {
                let mut conn = self.write().await?;
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin).await.map_err(from_sqlx)?;
                let done = sqlx::query("DELETE FROM totp_factors WHERE user_id = $1")
                    .bind(user.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(from_sqlx)?
                    .rows_affected();
                // Recovery codes stand in for any second factor: keep them while a security key does.
                sqlx::query(
                    "DELETE FROM recovery_codes WHERE user_id = $1 AND NOT EXISTS \
                     (SELECT 1 FROM webauthn_credentials w WHERE w.user_id = $1 AND w.kind = 'security_key')",
                )
                .bind(user.as_str())
                .execute(&mut *tx)
                .await
                .map_err(from_sqlx)?;
                if done > 0 {
                    insert_audit(&mut tx, e).await?;
                }
                tx.commit().await.map_err(from_sqlx)?;
                Ok(done > 0)
            }

            async fn replace_recovery_codes(
                &self,
                user: &UserId,
                digests: &[String],
                e: &NewAuditEvent,
            ) -> Result<(), StoreError> {
                let mut conn = self.write().await?;
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin).await.map_err(from_sqlx)?;
                replace_codes(&mut tx, user, digests, e.at).await?;
                insert_audit(&mut tx, e).await?;
                tx.commit().await.map_err(from_sqlx)
            }

            async fn use_recovery_code(&self, user: &UserId, digest: &str, now: UnixTime) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE recovery_codes SET used_at = $3 \
                     WHERE user_id = $1 AND code_digest = $2 AND used_at IS NULL",
                )
                .bind(user.as_str())
                .bind(digest)
                .bind(now.as_secs())
                .execute(&mut *self.write().await?)
                .await
                .map_err(from_sqlx)?
                .rows_affected();
                Ok(done == 1)
            }

            async fn recovery_codes_left(&self, user: &UserId) -> Result<u32, StoreError> {
                let (n,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
                )
                .bind(user.as_str())
                .fetch_one(&mut *self.read().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(u32::try_from(n).unwrap_or(0))
            }

            async fn add_webauthn_credential(&self, c: &WebauthnCredential, e: &NewAuditEvent) -> Result<(), StoreError> {
                let mut conn = self.write().await?;
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin).await.map_err(from_sqlx)?;
                sqlx::query(
                    "INSERT INTO webauthn_credentials (credential_id, user_id, kind, name, credential, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(c.credential_id.as_str())
                .bind(c.user_id.as_str())
                .bind(c.kind.as_str())
                .bind(c.name.as_str())
                .bind(c.credential.as_str())
                .bind(c.created_at.as_secs())
                .execute(&mut *tx)
                .await
                .map_err(|err| conflict_or(err, || "this key is registered already".to_owned()))?;
                insert_audit(&mut tx, e).await?;
                tx.commit().await.map_err(from_sqlx)
            }

            async fn webauthn_credentials(&self, user: &UserId) -> Result<Vec<WebauthnCredential>, StoreError> {
                let rows = sqlx::query_as::<_, WebauthnRow>(
                    "SELECT credential_id, user_id, kind, name, credential, created_at, last_used_at \
                     FROM webauthn_credentials WHERE user_id = $1 ORDER BY created_at, credential_id",
                )
                .bind(user.as_str())
                .fetch_all(&mut *self.read().await?)
                .await
                .map_err(from_sqlx)?;
                rows.into_iter().map(WebauthnCredential::try_from).collect()
            }

            async fn webauthn_credential(&self, credential_id: &str) -> Result<Option<WebauthnCredential>, StoreError> {
                let row = sqlx::query_as::<_, WebauthnRow>(
                    "SELECT credential_id, user_id, kind, name, credential, created_at, last_used_at \
                     FROM webauthn_credentials WHERE credential_id = $1",
                )
                .bind(credential_id)
                .fetch_optional(&mut *self.read().await?)
                .await
                .map_err(from_sqlx)?;
                row.map(WebauthnCredential::try_from).transpose()
            }

            async fn webauthn_used(&self, credential_id: &str, credential: &str, now: UnixTime) -> Result<(), StoreError> {
                sqlx::query("UPDATE webauthn_credentials SET credential = $2, last_used_at = $3 WHERE credential_id = $1")
                    .bind(credential_id)
                    .bind(credential)
                    .bind(now.as_secs())
                    .execute(&mut *self.write().await?)
                    .await
                    .map_err(from_sqlx)?;
                Ok(())
            }

            async fn rename_webauthn_credential(&self, user: &UserId, credential_id: &str, name: &str) -> Result<bool, StoreError> {
                let done = sqlx::query("UPDATE webauthn_credentials SET name = $3 WHERE user_id = $1 AND credential_id = $2")
                    .bind(user.as_str())
                    .bind(credential_id)
                    .bind(name)
                    .execute(&mut *self.write().await?)
                    .await
                    .map_err(from_sqlx)?
                    .rows_affected();
                Ok(done == 1)
            }

            async fn remove_webauthn_credential(&self, user: &UserId, credential_id: &str, e: &NewAuditEvent) -> Result<bool, StoreError> {
                let mut conn = self.write().await?;
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin).await.map_err(from_sqlx)?;
                let done = sqlx::query("DELETE FROM webauthn_credentials WHERE user_id = $1 AND credential_id = $2")
                    .bind(user.as_str())
                    .bind(credential_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(from_sqlx)?
                    .rows_affected();
                if done == 0 {
                    return Ok(false);
                }
                insert_audit(&mut tx, e).await?;
                tx.commit().await.map_err(from_sqlx)?;
                Ok(true)
            }

            async fn put_ceremony(&self, id_digest: &str, state: &str, expires_at: UnixTime) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO webauthn_ceremonies (id_digest, state, expires_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (id_digest) DO UPDATE SET state = $2, expires_at = $3",
                )
                .bind(id_digest)
                .bind(state)
                .bind(expires_at.as_secs())
                .execute(&mut *self.write().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(())
            }

            async fn take_ceremony(&self, id_digest: &str, now: UnixTime) -> Result<Option<String>, StoreError> {
                let row: Option<(String, i64)> =
                    sqlx::query_as("DELETE FROM webauthn_ceremonies WHERE id_digest = $1 RETURNING state, expires_at")
                        .bind(id_digest)
                        .fetch_optional(&mut *self.write().await?)
                        .await
                        .map_err(from_sqlx)?;
                Ok(row.filter(|(_, exp)| *exp > now.as_secs()).map(|(state, _)| state))
            }

            async fn create_pending_signin(&self, p: &PendingSignIn) -> Result<(), StoreError> {
                sqlx::query(
                    "INSERT INTO pending_signins (id_digest, user_id, created_at, expires_at, amr, return_to) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(p.id_digest.as_str())
                .bind(p.user_id.as_str())
                .bind(p.created_at.as_secs())
                .bind(p.expires_at.as_secs())
                .bind(join(p.amr.iter().map(String::as_str)))
                .bind(p.return_to.as_str())
                .execute(&mut *self.write().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(())
            }

            async fn pending_signin(&self, digest: &str, now: UnixTime) -> Result<Option<PendingSignIn>, StoreError> {
                let row = sqlx::query_as::<_, PendingRow>(
                    "SELECT id_digest, user_id, created_at, expires_at, amr, return_to \
                     FROM pending_signins WHERE id_digest = $1 AND expires_at > $2",
                )
                .bind(digest)
                .bind(now.as_secs())
                .fetch_optional(&mut *self.read().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(row.map(PendingSignIn::from))
            }

            async fn delete_pending_signin(&self, digest: &str) -> Result<bool, StoreError> {
                let done = sqlx::query("DELETE FROM pending_signins WHERE id_digest = $1")
                    .bind(digest)
                    .execute(&mut *self.write().await?)
                    .await
                    .map_err(from_sqlx)?
                    .rows_affected();
                Ok(done == 1)
            }

            async fn claim_logout_deliveries(
                &self,
                now: UnixTime,
                lease_until: UnixTime,
                limit: u32,
            ) -> Result<Vec<LogoutDelivery>, StoreError> {
                let rows = sqlx::query_as::<_, DeliveryRow>(concat!(
                    "UPDATE logout_outbox SET next_attempt_at = $2, attempts = attempts + 1 \
                     WHERE next_attempt_at <= $1 AND id IN (SELECT id FROM logout_outbox \
                     WHERE state = 'pending' AND next_attempt_at <= $1 ORDER BY id LIMIT $3 ",
                    $skip_locked,
                    ") RETURNING ",
                    delivery_columns!()
                ))
                .bind(now.as_secs())
                .bind(lease_until.as_secs())
                .bind(i64::from(limit))
                .fetch_all(&mut *self.write().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(rows.into_iter().map(LogoutDelivery::from).collect())
            }

            async fn finish_logout_attempt(
                &self,
                id: i64,
                outcome: DeliveryOutcome,
                event: Option<&NewAuditEvent>,
            ) -> Result<(), StoreError> {
                let mut conn = self.write().await?;
                let mut tx = sqlx::Connection::begin_with(&mut *conn, $begin).await.map_err(from_sqlx)?;
                let q = match &outcome {
                    DeliveryOutcome::Delivered { at } => sqlx::query(
                        "UPDATE logout_outbox SET state = 'delivered', finished_at = $2, last_error = NULL WHERE id = $1",
                    )
                    .bind(id)
                    .bind(at.as_secs()),
                    DeliveryOutcome::Retry { next, error, .. } => sqlx::query(
                        "UPDATE logout_outbox SET next_attempt_at = $2, last_error = $3 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(next.as_secs())
                    .bind(error.as_str()),
                    DeliveryOutcome::Failed { at, error } => sqlx::query(
                        "UPDATE logout_outbox SET state = 'failed', finished_at = $2, last_error = $3 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(at.as_secs())
                    .bind(error.as_str()),
                };
                q.execute(&mut *tx).await.map_err(from_sqlx)?;
                if let Some(e) = event {
                    insert_audit(&mut tx, e).await?;
                }
                tx.commit().await.map_err(from_sqlx)
            }

            async fn logout_deliveries(&self, limit: u32) -> Result<Vec<LogoutDelivery>, StoreError> {
                let rows = sqlx::query_as::<_, DeliveryRow>(concat!(
                    "SELECT ", delivery_columns!(), " FROM logout_outbox ORDER BY id DESC LIMIT $1"
                ))
                .bind(i64::from(limit))
                .fetch_all(&mut *self.read().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(rows.into_iter().map(LogoutDelivery::from).collect())
            }

            async fn append_audit(&self, e: &NewAuditEvent) -> Result<(), StoreError> {
                let mut conn = self.write().await?;
                insert_audit(&mut conn, e).await
            }

            async fn list_audit(
                &self,
                user: Option<&UserId>,
                limit: u32,
            ) -> Result<Vec<AuditEvent>, StoreError> {
                let rows = sqlx::query_as::<_, AuditRow>(
                    "SELECT id, at, kind, user_id, client_id, ip, user_agent, detail \
                     FROM audit_events WHERE ($1 IS NULL OR user_id = $1) \
                     ORDER BY id DESC LIMIT $2",
                )
                .bind(user.map(|u| u.as_str()))
                .bind(i64::from(limit))
                .fetch_all(&mut *self.read().await?)
                .await
                .map_err(from_sqlx)?;
                Ok(rows.into_iter().map(AuditEvent::from).collect())
            }
        }
    };
}
