//! Password hashing off the async workers, on a few threads of its own.
//!
//! There is one hashing thread per core, and at most one hash runs per thread. A burst of
//! sign-ins therefore queues instead of starving every other request. Each thread keeps one
//! [`Scratch`] (argon2id takes `password.memory_kib` per hash) and hashes in it every time, so
//! the server holds one hash's memory per core and never allocates or frees it again. Running
//! hashes on the shared blocking pool instead would leave a hash's worth of memory in the
//! allocator of every thread that ever ran one.
//!
//! An unknown username is checked against a hash with the same parameters that nothing matches
//! (`PasswordHasher::unmatchable_hash`), so it costs the same time as a wrong password (no user
//! enumeration by timing). Making it costs no hash, so an idle server holds no argon2 memory.

use std::sync::Arc;
use std::sync::mpsc;

use lanyard_core::password::{PasswordError, PasswordHasher, PasswordPolicy, Scratch, Verified};
use secrecy::SecretString;
use tokio::sync::{Semaphore, oneshot};

/// Work for a hashing thread, given that thread's argon2 memory.
type Job = Box<dyn FnOnce(&mut Scratch) + Send>;

pub struct Passwords {
    hasher: PasswordHasher,
    permits: Arc<Semaphore>,
    jobs: mpsc::Sender<Job>,
    dummy_hash: String,
}

impl Passwords {
    pub fn new(policy: PasswordPolicy) -> Result<Arc<Self>, PasswordError> {
        let hasher = PasswordHasher::new(policy)?;
        let dummy_hash = hasher.unmatchable_hash()?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        for i in 0..cores {
            let queue = Arc::clone(&queue);
            // Each thread ends when `Passwords` is dropped and the channel closes.
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    let mut scratch = Scratch::default();
                    loop {
                        let job = match queue.lock() {
                            Ok(q) => q.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(&mut scratch),
                            Err(_) => return,
                        }
                    }
                })
                .map_err(|e| PasswordError::Hash(format!("no hashing thread: {e}")))?;
        }
        Ok(Arc::new(Self {
            hasher,
            permits: Arc::new(Semaphore::new(cores)),
            jobs,
            dummy_hash,
        }))
    }

    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    /// Runs `f` on a hashing thread once one is free.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Scratch) -> T + Send + 'static,
    ) -> Option<T> {
        // The permit moves into the job: a cancelled request cannot free its slot while its
        // hash still runs, so no more jobs wait in the queue than there are threads.
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok()?;
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |scratch| {
            let _permit = permit;
            let _ = done.send(f(scratch));
        });
        self.jobs.send(job).ok()?;
        result.await.ok()
    }

    /// Checks `password` against `stored`, or against the dummy hash when there is no user.
    pub async fn verify(
        self: &Arc<Self>,
        password: SecretString,
        stored: Option<String>,
    ) -> Verified {
        let this = Arc::clone(self);
        let known = stored.is_some();
        let result = self
            .run(move |scratch| {
                let hash = stored.as_deref().unwrap_or(&this.dummy_hash);
                this.hasher.verify_in(&password, hash, scratch)
            })
            .await;
        match result {
            Some(v) if known => v,
            _ => Verified::No,
        }
    }

    pub async fn hash(self: &Arc<Self>, password: SecretString) -> Result<String, PasswordError> {
        let this = Arc::clone(self);
        self.run(move |scratch| this.hasher.hash_in(&password, scratch))
            .await
            .unwrap_or_else(|| Err(PasswordError::Hash("the hashing threads stopped".into())))
    }
}
