//! PostgreSQL: the backend for several instances. Migrations take sqlx's advisory lock, so
//! instances starting together apply them once.

use std::str::FromStr;

use lanyard_core::StoreError;
use sqlx::ConnectOptions as _;
use sqlx::PgConnection;
use sqlx::postgres::PgConnectOptions;

use crate::DbOptions;
use crate::connections::{Connections, Lease};
use crate::error::{open_error, redact_url};

/// Reads and writes share the connections: PostgreSQL runs writes in parallel and locks rows
/// itself.
pub(crate) struct PgStore {
    connections: Connections<PgConnection>,
}

impl PgStore {
    pub(crate) async fn open(url: &str, options: &DbOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url).map_err(|e| open_error(url, e))?;
        let mut first = tokio::time::timeout(options.acquire_timeout, connect.connect())
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "cannot open the database {}: connecting timed out",
                    redact_url(url)
                ))
            })?
            .map_err(|e| open_error(url, e))?;
        sqlx::migrate!("../../migrations/postgres")
            .run(&mut first)
            .await
            .map_err(|e| {
                StoreError::Internal(format!("migrating the PostgreSQL database failed: {e}"))
            })?;
        let connections =
            Connections::new(connect, options.max_connections, options.acquire_timeout);
        connections.keep(first);
        Ok(Self { connections })
    }

    pub(crate) async fn read(&self) -> Result<Lease<'_, PgConnection>, StoreError> {
        self.connections.get().await
    }

    pub(crate) async fn write(&self) -> Result<Lease<'_, PgConnection>, StoreError> {
        self.connections.get().await
    }

    pub(crate) fn connections(&self) -> (u32, u32, u32) {
        self.connections.usage()
    }
}

// Locks the user's row while a session is created; SQLite runs one write transaction at a time
// anyway, so only PostgreSQL needs `FOR UPDATE`.
impl_store!(
    PgStore,
    sqlx::Postgres,
    "postgres",
    begin: "BEGIN",
    lock_user: "SELECT id FROM users WHERE id = $1 FOR UPDATE",
    skip_locked: "FOR UPDATE SKIP LOCKED",
    // The old token's UPDATE feeds its successor's INSERT: one statement, atomic. Of two
    // rotations racing on one token, the second waits for the first's row lock, then finds the
    // token used and updates nothing.
    rotate: concat!(
        "WITH used AS (UPDATE refresh_tokens SET used_at = $3 WHERE token_digest = $1 \
         AND used_at IS NULL AND revoked_at IS NULL AND NOT EXISTS \
         (SELECT 1 FROM refresh_family_revocations r WHERE r.family_id = refresh_tokens.family_id) \
         RETURNING family_id, client_id, user_id, session_id, scope, auth_time, amr, acr, expires_at) \
         INSERT INTO refresh_tokens (",
        refresh_columns!(),
        ", rotated_from) SELECT $2, family_id, client_id, user_id, session_id, scope, auth_time, \
         amr, acr, $3, expires_at, $1 FROM used RETURNING ",
        refresh_columns!()
    ),
    // The code's INSERT feeds the session's client record.
    insert_code: concat!(
        "WITH code AS (INSERT INTO authorization_codes (",
        code_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         RETURNING session_id, client_id, created_at) \
         INSERT INTO session_clients (session_id, client_id, first_at) \
         SELECT session_id, client_id, created_at FROM code \
         ON CONFLICT (session_id, client_id) DO NOTHING"
    )
);
