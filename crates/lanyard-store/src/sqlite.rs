//! SQLite: one file, WAL so readers do not block the writer, a busy timeout instead of instant
//! "database is locked" errors, and foreign keys on (SQLite leaves them off by default).
//!
//! Every write goes through one connection of its own. SQLite runs one write transaction at a
//! time anyway; with writes spread over the whole pool, the connections that lose the race
//! sleep in SQLite's busy handler (in steps of up to 100 ms), while with one writer they wait
//! their turn in the pool's queue and start the moment the previous write commits. Other
//! processes on the same file (the command line) still meet the busy timeout.
//!
use std::str::FromStr;
use std::time::Duration;

use lanyard_core::StoreError;
use sqlx::ConnectOptions as _;
use sqlx::SqliteConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

use crate::DbOptions;
use crate::connections::{Connections, Lease};
use crate::error::open_error;

pub(crate) struct SqliteStore {
    /// Reads.
    readers: Connections<SqliteConnection>,
    /// Writes: one connection.
    writer: Connections<SqliteConnection>,
}

impl SqliteStore {
    pub(crate) async fn open(url: &str, options: &DbOptions) -> Result<Self, StoreError> {
        let connect = SqliteConnectOptions::from_str(url)
            .map_err(|e| open_error(url, e))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let mut first = connect.connect().await.map_err(|e| open_error(url, e))?;
        // Migrate before any reader opens: none must find a half-made schema.
        sqlx::migrate!("../../migrations/sqlite")
            .run(&mut first)
            .await
            .map_err(|e| {
                StoreError::Internal(format!("migrating the SQLite database failed: {e}"))
            })?;
        let writer = Connections::new(connect.clone(), 1, options.acquire_timeout);
        writer.keep(first);
        let readers = Connections::new(
            connect.create_if_missing(false),
            options.max_connections,
            options.acquire_timeout,
        );
        Ok(Self { readers, writer })
    }

    pub(crate) async fn read(&self) -> Result<Lease<'_, SqliteConnection>, StoreError> {
        self.readers.get().await
    }

    pub(crate) async fn write(&self) -> Result<Lease<'_, SqliteConnection>, StoreError> {
        self.writer.get().await
    }

    pub(crate) fn connections(&self) -> (u32, u32, u32) {
        self.readers.usage()
    }
}

// Locks the user's row while a session is created; SQLite runs one write transaction at a time
// anyway, so only PostgreSQL needs `FOR UPDATE`.
impl_store!(
    SqliteStore,
    sqlx::Sqlite,
    "sqlite",
    // Write transactions take the write lock at once: a deferred one that read first cannot
    // upgrade when another writer committed meanwhile (SQLITE_BUSY, busy_timeout or not).
    begin: "BEGIN IMMEDIATE",
    lock_user: "SELECT id FROM users WHERE id = $1",
    skip_locked: "",
    // The successor's insert selects the old token only if it is usable, and a trigger marks the
    // old token used (migration 0008): one statement, atomic.
    rotate: concat!(
        "INSERT INTO refresh_tokens (",
        refresh_columns!(),
        ", rotated_from) SELECT $2, family_id, client_id, user_id, session_id, scope, auth_time, \
         amr, acr, $3, expires_at, $1 FROM refresh_tokens WHERE token_digest = $1 \
         AND used_at IS NULL AND revoked_at IS NULL AND NOT EXISTS \
         (SELECT 1 FROM refresh_family_revocations r WHERE r.family_id = refresh_tokens.family_id) \
         RETURNING ",
        refresh_columns!()
    ),
    // A trigger records the session's client (migration 0008).
    insert_code: concat!(
        "INSERT INTO authorization_codes (",
        code_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    )
);
