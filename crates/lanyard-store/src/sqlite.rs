//! SQLite: one file, WAL so readers do not block the writer, a busy timeout instead of instant
//! "database is locked" errors, and foreign keys on (SQLite leaves them off by default).
//!
//! Every write goes through one connection of its own. SQLite runs one write transaction at a
//! time anyway; with writes spread over the whole pool, the connections that lose the race
//! sleep in SQLite's busy handler (in steps of up to 100 ms), while with one writer they wait
//! their turn in the pool's queue and start the moment the previous write commits. Other
//! processes on the same file (the command line) still meet the busy timeout.
//!
//! Connections are lent out by `Connections`, not sqlx's pool, which pings each connection
//! before use and after it (see there).

use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use lanyard_core::StoreError;
use sqlx::ConnectOptions as _;
use sqlx::SqliteConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::DbOptions;
use crate::error::open_error;

pub(crate) struct SqliteStore {
    /// Reads.
    readers: Connections,
    /// Writes: one connection.
    writer: Connections,
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

    pub(crate) async fn read(&self) -> Result<Lease<'_>, StoreError> {
        self.readers.get().await
    }

    pub(crate) async fn write(&self) -> Result<Lease<'_>, StoreError> {
        self.writer.get().await
    }

    pub(crate) fn connections(&self) -> (u32, u32, u32) {
        self.readers.usage()
    }
}

/// A few SQLite connections, opened when first needed and handed out one request at a time.
///
/// sqlx's pool pings every connection as it comes back, a round trip to the connection's worker
/// thread after every statement; a SQLite connection is a file handle that cannot drop, so these
/// are handed back as they are. SQLite runs a connection's commands in order, so whatever a
/// cancelled request left queued (a rollback, say) finishes before the next borrower's.
pub(crate) struct Connections {
    options: SqliteConnectOptions,
    idle: Mutex<Vec<SqliteConnection>>,
    permits: Semaphore,
    max: u32,
    acquire_timeout: Duration,
}

impl Connections {
    fn new(options: SqliteConnectOptions, max: u32, acquire_timeout: Duration) -> Self {
        Self {
            options,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(max as usize),
            max,
            acquire_timeout,
        }
    }

    async fn get(&self) -> Result<Lease<'_>, StoreError> {
        let permit = tokio::time::timeout(self.acquire_timeout, self.permits.acquire())
            .await
            .map_err(|_| StoreError::Unavailable("no database connection came free".into()))?
            .map_err(|_| StoreError::Unavailable("the database is closed".into()))?;
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let conn = match idle {
            Some(conn) => conn,
            None => self.options.connect().await.map_err(from_sqlx)?,
        };
        Ok(Lease {
            conn: Some(conn),
            from: self,
            _permit: permit,
        })
    }

    fn keep(&self, conn: SqliteConnection) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }

    /// (open, idle, maximum)
    fn usage(&self) -> (u32, u32, u32) {
        let idle = self.idle.lock().map_or(0, |idle| idle.len());
        let idle = u32::try_from(idle).unwrap_or(u32::MAX);
        let busy =
            u32::try_from(self.max as usize - self.permits.available_permits()).unwrap_or(u32::MAX);
        (idle.saturating_add(busy), idle, self.max)
    }
}

/// A connection lent out until dropped.
pub(crate) struct Lease<'a> {
    conn: Option<SqliteConnection>,
    from: &'a Connections,
    _permit: SemaphorePermit<'a>,
}

impl Deref for Lease<'_> {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        // Present from creation until drop.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl DerefMut for Lease<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.from.keep(conn);
        }
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
