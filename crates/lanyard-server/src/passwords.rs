//! Password hashing off the async workers: argon2 runs on the blocking pool, at most one hash
//! per core at a time, so a burst of sign-ins queues instead of starving every other request.
//!
//! An unknown username is checked against a dummy hash made at start-up with the same
//! parameters, so it costs the same time as a wrong password (no user enumeration by timing).

use std::sync::Arc;

use lanyard_core::password::{PasswordError, PasswordHasher, PasswordPolicy, Verified};
use secrecy::SecretString;
use tokio::sync::Semaphore;

pub struct Passwords {
    hasher: PasswordHasher,
    permits: Arc<Semaphore>,
    dummy_hash: String,
}

impl Passwords {
    pub fn new(policy: PasswordPolicy) -> Result<Arc<Self>, PasswordError> {
        let hasher = PasswordHasher::new(policy)?;
        let dummy_hash = hasher.hash(&SecretString::from("not a real password".to_owned()))?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Ok(Arc::new(Self {
            hasher,
            permits: Arc::new(Semaphore::new(cores)),
            dummy_hash,
        }))
    }

    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    /// Checks `password` against `stored`, or against the dummy hash when there is no user.
    pub async fn verify(
        self: &Arc<Self>,
        password: SecretString,
        stored: Option<String>,
    ) -> Verified {
        // The permit moves into the blocking task: a cancelled request cannot free its slot
        // while its hash still runs.
        let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return Verified::No;
        };
        let this = Arc::clone(self);
        let known = stored.is_some();
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let hash = stored.as_deref().unwrap_or(&this.dummy_hash);
            this.hasher.verify(&password, hash)
        })
        .await;
        match result {
            Ok(v) if known => v,
            _ => Verified::No,
        }
    }

    pub async fn hash(self: &Arc<Self>, password: SecretString) -> Result<String, PasswordError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|e| PasswordError::Hash(e.to_string()))?;
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.hasher.hash(&password)
        })
        .await
        .map_err(|e| PasswordError::Hash(e.to_string()))?
    }
}
