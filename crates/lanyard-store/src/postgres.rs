//! PostgreSQL: the backend for several instances. Migrations take sqlx's advisory lock, so
//! instances starting together apply them once.

use std::str::FromStr;

use lanyard_core::StoreError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::DbOptions;
use crate::error::open_error;

pub(crate) struct PgStore {
    pool: sqlx::PgPool,
    /// The same pool: PostgreSQL runs writes in parallel and locks rows itself.
    writer: sqlx::PgPool,
}

impl PgStore {
    pub(crate) async fn open(url: &str, options: &DbOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url).map_err(|e| open_error(url, e))?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(|e| open_error(url, e))?;
        sqlx::migrate!("../../migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| {
                StoreError::Internal(format!("migrating the PostgreSQL database failed: {e}"))
            })?;
        Ok(Self {
            writer: pool.clone(),
            pool,
        })
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
    skip_locked: "FOR UPDATE SKIP LOCKED"
);
