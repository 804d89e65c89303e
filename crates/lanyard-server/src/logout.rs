//! Back-channel logout (OpenID Connect Back-Channel Logout 1.0): the worker that sends the
//! outbox.
//!
//! Rows are written by the store in the transaction that ends a session; this worker claims due
//! rows (a lease, with `FOR UPDATE SKIP LOCKED` on PostgreSQL, so instances running it at once
//! never send a row twice at once), POSTs a signed `logout_token` with a timeout, and records
//! the outcome: delivered, retried with exponential backoff, or failed past the deadline. The
//! worker survives restarts because the outbox does.

use std::time::Duration;

use lanyard_core::audit::{AuditKind, NewAuditEvent};
use lanyard_core::client::ClientId;
use lanyard_core::secret::random_token;
use lanyard_core::session::{DeliveryOutcome, LogoutDelivery, backoff};
use serde_json::json;

use crate::AppState;

const SEND_TIMEOUT: Duration = Duration::from_secs(5);
const LEASE: Duration = Duration::from_secs(60);
const BATCH: u32 = 20;

/// The `events` member of a logout token (Back-Channel Logout 1.0 §2.4).
const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Sends every due delivery once; returns how many were attempted.
pub async fn deliver_due(state: &AppState, http: &reqwest::Client) -> u32 {
    let now = state.clock.now();
    let due = match state
        .store
        .claim_logout_deliveries(now, now.saturating_add(LEASE), BATCH)
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "claiming logout deliveries failed");
            return 0;
        }
    };
    let n = u32::try_from(due.len()).unwrap_or(u32::MAX);
    for d in due {
        let result = send(state, http, &d).await;
        let now = state.clock.now();
        let event = |kind| {
            NewAuditEvent::new(now, kind)
                .user(&d.user_id)
                .client(&d.client_id)
                .detail(format!("session={} attempts={}", d.session_id, d.attempts))
        };
        let (outcome, audit) = match result {
            Ok(()) => (
                DeliveryOutcome::Delivered { at: now },
                Some(event(AuditKind::LogoutDelivered)),
            ),
            Err(error)
                if now
                    >= d.created_at
                        .saturating_add(state.config.logout.delivery_deadline) =>
            {
                let e = event(AuditKind::LogoutFailed);
                (DeliveryOutcome::Failed { at: now, error }, Some(e))
            }
            Err(error) => (
                DeliveryOutcome::Retry {
                    at: now,
                    next: now.saturating_add(backoff(d.attempts)),
                    error,
                },
                None,
            ),
        };
        state.metrics.logout_attempt(match outcome {
            DeliveryOutcome::Delivered { .. } => "delivered",
            DeliveryOutcome::Retry { .. } => "retry",
            DeliveryOutcome::Failed { .. } => "failed",
        });
        if let Err(e) = state
            .store
            .finish_logout_attempt(d.id, outcome, audit.as_ref())
            .await
        {
            tracing::warn!(error = %e, "recording a logout delivery failed");
        }
    }
    n
}

async fn send(state: &AppState, http: &reqwest::Client, d: &LogoutDelivery) -> Result<(), String> {
    let Some(client) = state
        .store
        .client_by_id(&ClientId::from_stored(d.client_id.clone()))
        .await
        .map_err(|e| e.to_string())?
    else {
        return Err("the client was removed".to_owned());
    };
    let now = state.clock.now();
    let claims = json!({
        "iss": state.config.issuer.as_str(),
        "aud": client.id.as_str(),
        "iat": now.as_secs(),
        "exp": now.saturating_add(Duration::from_secs(120)).as_secs(),
        "jti": random_token(16).map_err(|e| e.to_string())?,
        "sub": d.user_id,
        "sid": d.session_id,
        "events": { EVENT: {} },
    });
    let keys = state.keys.current();
    let key = keys.signer(client.id_token_alg).ok_or("no signing key")?;
    let token = key
        .sign_jwt("logout+jwt", &claims)
        .map_err(|e| e.to_string())?;
    let response = http
        .post(&d.uri)
        .form(&[("logout_token", token.as_str())])
        .timeout(SEND_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("sending failed: {}", e.without_url()))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("the app answered {}", response.status().as_u16()))
    }
}

/// An HTTP client for logout deliveries: no redirects (a redirect is a failure, not a hop).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("Lanyard back-channel logout")
        .build()
        .unwrap_or_default()
}

/// Sends due deliveries every few seconds until the process stops.
pub(crate) fn spawn_worker(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = http_client();
        let mut tick = tokio::time::interval(state.config.logout.poll_interval);
        loop {
            tick.tick().await;
            while deliver_due(&state, &http).await == BATCH {}
        }
    })
}
