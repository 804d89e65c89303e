//! The storage contract. Everything Lanyard keeps lives behind [`Store`], so every instance
//! sharing a database sees the same users, clients and (later) sessions.
//!
//! Invariants every implementation keeps: a method that changes more than one row does it in one
//! transaction, together with its audit event; uniqueness (usernames, client names) is enforced
//! by the database, not by a read before the write, and reported as [`StoreError::Conflict`].

use crate::audit::{AuditEvent, NewAuditEvent};
use crate::client::{Client, ClientId};
use crate::user::{NewUser, User, UserId, Username};

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

#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// "sqlite" or "postgres".
    fn backend(&self) -> &'static str;

    /// Answers when the database does: the readiness check.
    async fn ping(&self) -> Result<(), StoreError>;

    async fn create_user(&self, user: &NewUser, event: &NewAuditEvent) -> Result<(), StoreError>;
    async fn user_by_username(&self, username: &Username) -> Result<Option<User>, StoreError>;
    async fn user_by_id(&self, id: &UserId) -> Result<Option<User>, StoreError>;
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;
    /// Disables the user; false when there is no such user.
    async fn disable_user(&self, id: &UserId, event: &NewAuditEvent) -> Result<bool, StoreError>;
    /// Replaces the password hash; false when there is no such user.
    async fn set_password_hash(
        &self,
        id: &UserId,
        hash: &str,
        event: &NewAuditEvent,
    ) -> Result<bool, StoreError>;

    async fn create_client(&self, client: &Client, event: &NewAuditEvent)
    -> Result<(), StoreError>;
    async fn client_by_id(&self, id: &ClientId) -> Result<Option<Client>, StoreError>;
    async fn list_clients(&self) -> Result<Vec<Client>, StoreError>;
    /// Removes the client; false when there is no such client.
    async fn remove_client(&self, id: &ClientId, event: &NewAuditEvent)
    -> Result<bool, StoreError>;

    async fn append_audit(&self, event: &NewAuditEvent) -> Result<(), StoreError>;
    /// The newest `limit` events, newest first, optionally only those about one user.
    async fn list_audit(
        &self,
        user: Option<&UserId>,
        limit: u32,
    ) -> Result<Vec<AuditEvent>, StoreError>;
}
