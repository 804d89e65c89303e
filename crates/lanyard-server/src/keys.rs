//! The signing keys of this issuer: loaded from the store, unsealed and parsed once, cached,
//! and refreshed from the store every minute so a rotation made elsewhere (another instance,
//! `lanyard keys rotate`) reaches every instance within that bound.
//!
//! A rotated-in key is published at once but signs only from its `activates_at`,
//! `PROPAGATION` later, so no instance hands out a token whose key another instance's JWKS
//! does not list yet. A rotated key stays published until every token it signed has expired.
//!
//! A token whose signature checked out is remembered (by its SHA-256, with its claims), so a
//! resource server introspecting the same access token on every API call costs one signature
//! check, not one per call. The memory is bounded, and it is forgotten as soon as a key it
//! could have been signed with leaves the set. Only the signature is remembered: expiry,
//! revocation and the rest are checked on every use.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lanyard_core::audit::{AuditKind, NewAuditEvent};
use lanyard_core::client::IdTokenAlg;
use lanyard_core::grant::StoredKey;
use lanyard_core::jose::{Sealer, SigningKey};
use lanyard_core::{Store, StoreError, UnixTime};

use crate::Config;

/// How long a new key waits before it signs: the refresh interval, plus slack.
pub const PROPAGATION: Duration = Duration::from_secs(90);
const REFRESH: Duration = Duration::from_secs(60);
const ALGS: [IdTokenAlg; 3] = [IdTokenAlg::RS256, IdTokenAlg::ES256, IdTokenAlg::EdDSA];

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{0}")]
    EncryptionKey(String),
    #[error(transparent)]
    Key(#[from] lanyard_core::jose::KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The keys in use at one moment.
pub struct KeySet {
    active: HashMap<IdTokenAlg, Arc<SigningKey>>,
    by_kid: HashMap<String, Arc<SigningKey>>,
    /// The JWKS document, rendered once per load.
    pub jwks: String,
    /// Tokens these keys were found to have signed; shared with the next set while no key goes.
    verified: Arc<Mutex<Verified>>,
}

/// How many checked tokens one generation holds; at most two generations are kept.
const VERIFIED_PER_GENERATION: usize = 4096;

/// Tokens whose signature checked out, by `digest(token)`, with their `typ` and claims. When
/// the newer generation is full the older one is dropped: tokens in use keep being found (a hit
/// in the older generation moves to the newer), and memory stays bounded.
#[derive(Default)]
struct Verified {
    newer: HashMap<String, (String, serde_json::Value)>,
    older: HashMap<String, (String, serde_json::Value)>,
}

impl Verified {
    fn get(&mut self, id: &str, typ: &str) -> Option<serde_json::Value> {
        if let Some((t, claims)) = self.newer.get(id) {
            return (t == typ).then(|| claims.clone());
        }
        let (t, claims) = self.older.remove(id)?;
        let found = (t == typ).then(|| claims.clone());
        self.put(id.to_owned(), t, claims);
        found
    }

    fn put(&mut self, id: String, typ: String, claims: serde_json::Value) {
        if self.newer.len() >= VERIFIED_PER_GENERATION {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(id, (typ, claims));
    }
}

impl KeySet {
    /// The key that signs tokens for `alg`.
    pub fn signer(&self, alg: IdTokenAlg) -> Option<&Arc<SigningKey>> {
        self.active.get(&alg)
    }

    /// A published key by `kid`, to verify a token this issuer signed.
    pub fn by_kid(&self, kid: &str) -> Option<&Arc<SigningKey>> {
        self.by_kid.get(kid)
    }

    /// The claims of a compact JWS that one of these keys signed, with header `typ` equal to
    /// `typ` and `alg` the key's own (so `none` and algorithm swaps fail). Expiry and audience
    /// are the caller's to check.
    pub fn verify(&self, token: &str, typ: &str) -> Option<serde_json::Value> {
        let id = lanyard_core::secret::digest(token);
        let remembered = self.verified.lock().ok()?.get(&id, typ);
        if remembered.is_some() {
            return remembered;
        }
        let claims = self.check(token, typ)?;
        if let Ok(mut verified) = self.verified.lock() {
            verified.put(id, typ.to_owned(), claims.clone());
        }
        Some(claims)
    }

    fn check(&self, token: &str, typ: &str) -> Option<serde_json::Value> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
        if header.get("typ")?.as_str()? != typ {
            return None;
        }
        let key = self.by_kid(header.get("kid")?.as_str()?)?;
        if header.get("alg")?.as_str()? != key.alg().as_str() {
            return None;
        }
        let signed = token.get(..h.len() + 1 + c.len())?;
        if !key.verifies(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(s).ok()?) {
            return None;
        }
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()
    }
}

pub struct KeyRing {
    sealer: Sealer,
    retention: Duration,
    current: RwLock<Arc<KeySet>>,
}

impl KeyRing {
    /// Loads the keys, creating any algorithm's first key, and returns the ring.
    pub async fn open(
        config: &Config,
        store: &dyn Store,
        now: UnixTime,
    ) -> Result<Arc<Self>, KeysError> {
        let sealer = Sealer::new(&encryption_key(config)?)?;
        let t = &config.tokens;
        // A retired key stopped signing at `retired_at`; its tokens live at most this long more.
        let retention = PROPAGATION
            + t.id_token_lifetime.max(t.access_token_lifetime)
            + Duration::from_secs(300);
        let empty = Arc::new(KeySet {
            active: HashMap::new(),
            by_kid: HashMap::new(),
            jwks: "{\"keys\":[]}".into(),
            verified: Arc::default(),
        });
        let ring = Arc::new(Self {
            sealer,
            retention,
            current: RwLock::new(empty),
        });
        let stored = store.signing_keys().await?;
        for alg in ALGS {
            if !stored.iter().any(|k| k.alg == alg) {
                ring.add(store, alg, false, now).await?;
            }
        }
        ring.reload(store, now).await?;
        Ok(ring)
    }

    /// Seals a secret other than a signing key (a TOTP secret) under the same encryption key.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<String, KeysError> {
        Ok(self.sealer.seal(plaintext, context)?)
    }

    pub fn unseal(&self, sealed: &str, context: &str) -> Result<Vec<u8>, KeysError> {
        Ok(self.sealer.open(sealed, context)?)
    }

    pub fn current(&self) -> Arc<KeySet> {
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Generates and stores a key for `alg`; with `rotate`, retires the others of `alg`.
    pub async fn add(
        &self,
        store: &dyn Store,
        alg: IdTokenAlg,
        rotate: bool,
        now: UnixTime,
    ) -> Result<String, KeysError> {
        let (key, pkcs8) = tokio::task::spawn_blocking(move || SigningKey::generate(alg, now))
            .await
            .map_err(|e| KeysError::EncryptionKey(e.to_string()))??;
        let sealed = self.sealer.seal(&pkcs8, key.kid())?;
        // A rotation's key waits until every instance publishes it; a first key signs at once.
        let activates_at = if rotate {
            now.saturating_add(PROPAGATION)
        } else {
            now
        };
        let stored = StoredKey {
            kid: key.kid().to_owned(),
            alg,
            created_at: now,
            activates_at,
            retired_at: None,
            sealed,
        };
        let event = NewAuditEvent::new(now, AuditKind::KeyAdded).detail(format!(
            "kid={} alg={} rotation={rotate}",
            key.kid(),
            alg.as_str()
        ));
        store.add_signing_key(&stored, rotate, &event).await?;
        tracing::info!(
            kid = key.kid(),
            alg = alg.as_str(),
            rotate,
            "signing key added"
        );
        Ok(key.kid().to_owned())
    }

    /// Re-reads the stored keys, parsing only those not already parsed.
    pub async fn reload(&self, store: &dyn Store, now: UnixTime) -> Result<(), KeysError> {
        store
            .delete_retired_keys(now.saturating_sub(self.retention))
            .await?;
        let stored = store.signing_keys().await?;
        let previous = self.current();
        let mut by_kid = HashMap::new();
        for k in &stored {
            let parsed = match previous.by_kid.get(&k.kid) {
                Some(p) => Arc::clone(p),
                None => {
                    let der = self.sealer.open(&k.sealed, &k.kid)?;
                    Arc::new(SigningKey::from_pkcs8(k.alg, &der, k.created_at)?)
                }
            };
            by_kid.insert(k.kid.clone(), parsed);
        }
        let mut active = HashMap::new();
        for alg in ALGS {
            // Latest activation first: the key whose turn has come, else the earliest there is.
            let of_alg: Vec<&StoredKey> = stored.iter().filter(|k| k.alg == alg).collect();
            let ready = of_alg.iter().find(|k| k.activates_at <= now);
            if let Some(k) = ready.or(of_alg.last())
                && let Some(parsed) = by_kid.get(&k.kid)
            {
                active.insert(alg, Arc::clone(parsed));
            }
        }
        let jwks = serde_json::json!({
            "keys": stored.iter().filter_map(|k| by_kid.get(&k.kid)).map(|k| k.public_jwk()).collect::<Vec<_>>()
        })
        .to_string();
        // What the old keys verified stays verified only if every one of them is still here.
        let verified = if previous.by_kid.keys().all(|k| by_kid.contains_key(k)) {
            Arc::clone(&previous.verified)
        } else {
            Arc::default()
        };
        let set = Arc::new(KeySet {
            active,
            by_kid,
            jwks,
            verified,
        });
        match self.current.write() {
            Ok(mut guard) => *guard = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
        Ok(())
    }

    /// Reloads every minute until the process stops.
    pub fn spawn_refresh(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        clock: Arc<dyn lanyard_core::Clock>,
    ) -> tokio::task::JoinHandle<()> {
        let ring = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + REFRESH, REFRESH);
            loop {
                tick.tick().await;
                if let Err(e) = ring.reload(&*store, clock.now()).await {
                    tracing::warn!(error = %e, "reloading signing keys failed");
                }
            }
        })
    }
}

pub(crate) fn decode_encryption_key(s: &str) -> Option<[u8; 32]> {
    URL_SAFE_NO_PAD
        .decode(s.trim().trim_end_matches('='))
        .ok()?
        .try_into()
        .ok()
}

/// The key that seals signing keys: from configuration, or from a file created on first use
/// with mode 0600.
fn encryption_key(config: &Config) -> Result<[u8; 32], KeysError> {
    if let Some(k) = &config.keys.encryption_key {
        return decode_encryption_key(&k.0).ok_or_else(|| {
            KeysError::EncryptionKey("keys.encryption_key must be 32 bytes, base64url".into())
        });
    }
    let path = match &config.keys.encryption_key_file {
        Some(p) => p.clone(),
        None => default_key_file(&config.database_url),
    };
    read_or_create_key_file(&path)
}

fn default_key_file(database_url: &str) -> PathBuf {
    let sqlite_path = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))
        .map(|p| p.split('?').next().unwrap_or(p));
    match sqlite_path {
        Some(p) if p != ":memory:" && !p.is_empty() => Path::new(p)
            .parent()
            .map_or_else(|| PathBuf::from("lanyard.key"), |d| d.join("lanyard.key")),
        _ => PathBuf::from("lanyard.key"),
    }
}

fn read_or_create_key_file(path: &Path) -> Result<[u8; 32], KeysError> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let shown = path.display();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            if mode & 0o077 != 0 {
                return Err(KeysError::EncryptionKey(format!(
                    "the encryption key file {shown} is readable by others (mode {:o}); run: chmod 600 {shown}",
                    mode & 0o777
                )));
            }
            decode_encryption_key(&text).ok_or_else(|| {
                KeysError::EncryptionKey(format!(
                    "the encryption key file {shown} does not hold 32 base64url bytes"
                ))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| KeysError::EncryptionKey(e.to_string()))?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| {
                    KeysError::EncryptionKey(format!(
                        "cannot create the encryption key file {shown}: {e}"
                    ))
                })?;
            writeln!(file, "{}", URL_SAFE_NO_PAD.encode(key))
                .map_err(|e| KeysError::EncryptionKey(format!("cannot write {shown}: {e}")))?;
            tracing::warn!(file = %shown, "created a new encryption key for signing keys; back it up");
            Ok(key)
        }
        Err(e) => Err(KeysError::EncryptionKey(format!(
            "cannot read the encryption key file {shown}: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_sits_beside_the_sqlite_database() {
        assert_eq!(
            default_key_file("sqlite://lanyard.db"),
            PathBuf::from("lanyard.key")
        );
        assert_eq!(
            default_key_file("sqlite:///var/lib/lanyard/db.sqlite"),
            PathBuf::from("/var/lib/lanyard/lanyard.key")
        );
        assert_eq!(
            default_key_file("postgres://h/db"),
            PathBuf::from("lanyard.key")
        );
    }

    #[test]
    fn key_files_are_created_private_and_refused_when_not() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let created = read_or_create_key_file(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_or_create_key_file(&path).unwrap(), created);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            read_or_create_key_file(&path)
                .unwrap_err()
                .to_string()
                .contains("chmod 600")
        );
    }
}
