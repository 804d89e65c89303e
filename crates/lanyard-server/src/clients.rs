//! Clients as client authentication and `/authorize` see them, kept in memory for a moment.
//!
//! Every call to `/token`, `/introspect` and `/revoke` authenticates its client, and every
//! authorization request names one, so a busy app would otherwise cost one database read per
//! call just to find its own row. Client rows never
//! change once written (they are only added and removed), so a remembered client is exact until
//! it is removed; it is remembered for [`TTL`] at most, which bounds how long a removal takes to
//! reach client authentication on every instance, with no messaging between them.
//!
//! Nothing a removed client could do in that window outlives it: its codes and refresh tokens
//! are deleted with it (so `/token` finds nothing to exchange), a code for it cannot be stored
//! (`/authorize` then says the app is not registered), and introspection and `/userinfo` check
//! in the database that a token's client still exists. An access token a
//! resource server validates on its own stays valid until it expires, but that was already true
//! of every token issued before the removal. Unknown client IDs are not remembered, so a new
//! client works at once and guessed IDs take no memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lanyard_core::Store;
use lanyard_core::StoreError;
use lanyard_core::client::{Client, ClientId};

/// How long a client is remembered.
pub const TTL: Duration = Duration::from_secs(1);
/// More distinct clients than this in one `TTL` and the cache starts over (it only saves reads).
const MAX_ENTRIES: usize = 4096;

#[derive(Default)]
pub struct ClientCache {
    entries: Mutex<HashMap<ClientId, (Arc<Client>, Instant)>>,
}

impl ClientCache {
    /// The client with this ID, from memory if it was read less than `TTL` ago.
    pub async fn get(
        &self,
        store: &dyn Store,
        id: &ClientId,
    ) -> Result<Option<Arc<Client>>, StoreError> {
        let now = Instant::now();
        if let Ok(entries) = self.entries.lock()
            && let Some((client, read_at)) = entries.get(id)
            && now.duration_since(*read_at) < TTL
        {
            return Ok(Some(Arc::clone(client)));
        }
        let Some(client) = store.client_by_id(id).await? else {
            if let Ok(mut entries) = self.entries.lock() {
                entries.remove(id);
            }
            return Ok(None);
        };
        let client = Arc::new(client);
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_ENTRIES {
                entries.retain(|_, (_, read_at)| now.duration_since(*read_at) < TTL);
                if entries.len() >= MAX_ENTRIES {
                    entries.clear();
                }
            }
            entries.insert(id.clone(), (Arc::clone(&client), now));
        }
        Ok(Some(client))
    }
}
