//! Database connections, opened when first needed and lent out one request at a time.
//!
//! This replaces sqlx's pool, which pings a connection before lending it and again when it
//! comes back: two round trips (to SQLite's worker thread, or over the network to PostgreSQL)
//! around what is often a one-statement request. Here a connection goes back as it is, and is
//! tested only when there is a reason to doubt it:
//!
//! - It comes back with a queued command: a transaction dropped before its commit, or a
//!   statement cancelled while being sent. sqlx sends a queued rollback only at the
//!   connection's next use, so until then PostgreSQL would keep the transaction open and its
//!   row locks held. Such a connection is closed instead, which ends the transaction at once.
//! - A connection failed (an I/O or protocol error, anywhere) while it was lent out: it is
//!   closed, as it may be the one that broke.
//! - A connection failed since it was put back, or it sat unused for `IDLE_CHECK`: it is
//!   pinged before it is lent, and replaced if the ping fails. A database restart therefore
//!   costs at most the requests that were running when it happened.
//!
//! A statement cancelled while its reply was being read leaves nothing queued: sqlx reads the
//! rest of the reply before the connection's next statement.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lanyard_core::StoreError;
use sqlx::{ConnectOptions as _, Connection};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::error::from_sqlx;

/// How long a connection may sit unused before it is pinged before its next use.
const IDLE_CHECK: Duration = Duration::from_secs(30);

/// Connection failures seen by this process, on any connection. A change means every
/// connection may be broken.
static FAILURES: AtomicU64 = AtomicU64::new(0);

/// Counts a failure that may have broken a connection.
pub(crate) fn connection_failed() {
    FAILURES.fetch_add(1, Ordering::Relaxed);
}

fn failures() -> u64 {
    FAILURES.load(Ordering::Relaxed)
}

pub(crate) struct Connections<C: Connection> {
    options: C::Options,
    idle: Mutex<Vec<Idle<C>>>,
    permits: Semaphore,
    max: u32,
    acquire_timeout: Duration,
}

struct Idle<C> {
    conn: C,
    since: Instant,
    /// `failures()` when it was put back.
    failures: u64,
}

impl<C: Connection> Connections<C> {
    pub(crate) fn new(options: C::Options, max: u32, acquire_timeout: Duration) -> Self {
        Self {
            options,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(max as usize),
            max,
            acquire_timeout,
        }
    }

    /// Waits up to the acquire timeout for a free connection.
    pub(crate) async fn get(&self) -> Result<Lease<'_, C>, StoreError> {
        let permit = tokio::time::timeout(self.acquire_timeout, self.permits.acquire())
            .await
            .map_err(|_| StoreError::Unavailable("no database connection came free".into()))?
            .map_err(|_| StoreError::Unavailable("the database is closed".into()))?;
        let failures = failures();
        let conn = loop {
            let Some(idle) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) else {
                let connect = self.options.connect();
                break tokio::time::timeout(self.acquire_timeout, connect)
                    .await
                    .map_err(|_| StoreError::Unavailable("connecting timed out".into()))?
                    .map_err(from_sqlx)?;
            };
            let mut conn = idle.conn;
            if idle.failures == failures && idle.since.elapsed() < IDLE_CHECK {
                break conn;
            }
            match tokio::time::timeout(self.acquire_timeout, conn.ping()).await {
                Ok(Ok(())) => break conn,
                // Dropped, so closed; the others are checked too.
                _ => connection_failed(),
            }
        };
        Ok(Lease {
            conn: Some(conn),
            from: self,
            failures,
            _permit: permit,
        })
    }

    /// Adds an open connection, as if it had been lent and put back.
    pub(crate) fn keep(&self, conn: C) {
        self.put_back(conn, failures());
    }

    fn put_back(&self, conn: C, lent_at: u64) {
        let now = failures();
        if conn.should_flush() || now != lent_at {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(Idle {
                conn,
                since: Instant::now(),
                failures: now,
            });
        }
    }

    /// (open, idle, maximum)
    pub(crate) fn usage(&self) -> (u32, u32, u32) {
        let idle = self.idle.lock().map_or(0, |idle| idle.len());
        let idle = u32::try_from(idle).unwrap_or(u32::MAX);
        let busy =
            u32::try_from(self.max as usize - self.permits.available_permits()).unwrap_or(u32::MAX);
        (idle.saturating_add(busy), idle, self.max)
    }
}

/// A connection lent out until dropped.
pub(crate) struct Lease<'a, C: Connection> {
    conn: Option<C>,
    from: &'a Connections<C>,
    /// `failures()` when it was lent.
    failures: u64,
    _permit: SemaphorePermit<'a>,
}

impl<C: Connection> Deref for Lease<'_, C> {
    type Target = C;
    fn deref(&self) -> &C {
        // Present from creation until drop.
        self.conn.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl<C: Connection> DerefMut for Lease<'_, C> {
    fn deref_mut(&mut self) -> &mut C {
        self.conn.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl<C: Connection> Drop for Lease<'_, C> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.from.put_back(conn, self.failures);
        }
    }
}
