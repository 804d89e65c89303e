//! Counting sign-in attempts against `lanyard_core::throttle`'s limits, for every form that
//! checks a password (sign-in, password change).
//!
//! An attempt is recorded before its password is checked, so a burst of parallel attempts
//! cannot all pass a check made before any of them was counted; it is then settled as a
//! failure (kept), a refusal (forgotten) or a success (forgotten, with the account's failures
//! from that address).

use std::collections::HashMap;
use std::sync::Mutex;

use lanyard_core::UnixTime;
use lanyard_core::audit::{AuditKind, NewAuditEvent};
use lanyard_core::secret::random_token;
use lanyard_core::throttle::{AttemptOutcome, Key};

use crate::AppState;
use crate::web::{ClientInfo, PageError};

/// A counted attempt, to be settled once the password has been checked.
pub(crate) struct Attempt {
    id: String,
    keys: Vec<Key>,
}

/// Counts an attempt for `account` from `client`, or refuses it while a penalty runs.
pub(crate) async fn begin(
    state: &AppState,
    account: &str,
    user_id: Option<&str>,
    client: &ClientInfo,
) -> Result<Attempt, PageError> {
    let now = state.clock.now();
    let throttle = &state.config.throttle;
    let attempt = Attempt {
        id: random_token(12)?,
        keys: throttle.keys(account, client.ip),
    };
    let failures = state
        .store
        .begin_sign_in_attempt(&attempt.id, &attempt.keys, now)
        .await?;
    let Some(wait) = throttle.retry_after(&failures, now) else {
        return Ok(attempt);
    };
    state
        .store
        .settle_sign_in_attempt(&attempt.id, AttemptOutcome::Refused, &attempt.keys)
        .await?;
    state.metrics.throttled();
    // Refused attempts cost an attacker nothing: audit one per account and address a minute.
    let gate_key = attempt
        .keys
        .first()
        .map(|k| k.key.as_str())
        .unwrap_or_default();
    if state.audit_gate.admit(gate_key, now) {
        let mut e = NewAuditEvent::new(now, AuditKind::SignInThrottled)
            .actor(client.actor())
            .detail(format!(
                "account={:?} wait={}s",
                account.trim(),
                wait.as_secs()
            ));
        if let Some(id) = user_id {
            e = e.user(id);
        }
        state.store.append_audit(&e).await?;
    }
    Err(PageError::Throttled(wait))
}

impl Attempt {
    pub(crate) async fn settle(
        self,
        state: &AppState,
        outcome: AttemptOutcome,
    ) -> Result<(), PageError> {
        state
            .store
            .settle_sign_in_attempt(&self.id, outcome, &self.keys)
            .await?;
        Ok(())
    }
}

/// Lets through one event per key per minute; forgets everything past 10,000 keys.
#[derive(Default)]
pub struct AuditGate(Mutex<HashMap<String, i64>>);

impl AuditGate {
    pub(crate) fn admit(&self, key: &str, now: UnixTime) -> bool {
        let Ok(mut seen) = self.0.lock() else {
            return true;
        };
        if seen.len() > 10_000 {
            seen.clear();
        }
        match seen.get(key) {
            Some(&at) if now.as_secs() - at < 60 => false,
            _ => {
                seen.insert(key.to_owned(), now.as_secs());
                true
            }
        }
    }
}
