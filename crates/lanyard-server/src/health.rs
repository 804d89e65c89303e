//! Liveness and readiness for load balancers and orchestrators: `/healthz` says the process
//! answers, `/readyz` that the database does too.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;

use crate::AppState;

pub(crate) async fn healthz_get() -> &'static str {
    "ok\n"
}

pub(crate) async fn readyz_get(State(state): State<AppState>) -> (StatusCode, &'static str) {
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n"),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness check: the database did not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
        }
        Err(_) => {
            tracing::warn!("readiness check: the database did not answer within 2s");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
        }
    }
}
