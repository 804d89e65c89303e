//! Storage on SQLite (one file, zero set-up) and PostgreSQL (several instances), behind
//! `lanyard_core::Store`.
//!
//! Invariant: this is the only crate that writes SQL. Both backends run the same statements
//! (written to the subset both dialects share, `$n` placeholders included) through
//! `impl_store!`; only connection set-up and migrations differ. Migrations are embedded from
//! `migrations/<backend>` and applied whenever a store is opened, so every command works on a
//! new database.

use std::sync::Arc;
use std::time::Duration;

use lanyard_core::{Store, StoreError};

#[macro_use]
mod shared;
mod connections;
mod error;
mod postgres;
mod sqlite;

pub use error::redact_url;

/// How to open the database.
#[derive(Clone, Debug)]
pub struct DbOptions {
    pub max_connections: u32,
    /// How long to wait for a connection before reporting the database unavailable.
    pub acquire_timeout: Duration,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// Opens the database named by `url` (`sqlite://…` or `postgres://…`), creating a SQLite file if
/// it is missing, and brings its schema up to date.
pub async fn open(url: &str, options: &DbOptions) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(url, options).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(postgres::PgStore::open(url, options).await?))
    } else {
        Err(StoreError::Internal(format!(
            "unsupported database URL {}: expected sqlite://… or postgres://…",
            redact_url(url)
        )))
    }
}
