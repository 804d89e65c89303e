//! `/metrics` in the Prometheus text format (version 0.0.4).
//!
//! Two kinds of series. Counted by this process: requests (a latency histogram by route, method
//! and status), sign-ins by result and method, throttled attempts, tokens issued by grant,
//! logout delivery attempts, and its database pool. Read from the database when scraped, the same
//! on every instance: active sessions, sessions ended by reason (kept by the transactions that end
//! them, so sweeps and command-line revocations count too), and logout deliveries by state.
//!
//! Invariants: label values come from closed sets (matched routes, known methods and outcomes),
//! never from what a client sends; no metric holds a user, token or address.

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use lanyard_core::store::Store;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::AppState;

pub struct Metrics {
    registry: Registry,
    requests: HistogramVec,
    signins: IntCounterVec,
    throttled: IntCounter,
    tokens: IntCounterVec,
    logout_attempts: IntCounterVec,
    pool: IntGaugeVec,
    pool_max: IntGauge,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = HistogramVec::new(
            HistogramOpts::new(
                "lanyard_http_request_duration_seconds",
                "Time to answer HTTP requests, by route, method and status.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["route", "method", "status"],
        )?;
        let signins = IntCounterVec::new(
            Opts::new(
                "lanyard_signins_total",
                "Sign-in steps by result (succeeded, failed) and method (amr values).",
            ),
            &["result", "method"],
        )?;
        let throttled = IntCounter::new(
            "lanyard_signin_throttled_total",
            "Sign-in attempts refused by throttling.",
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "lanyard_tokens_issued_total",
                "Token responses by grant type.",
            ),
            &["grant"],
        )?;
        let logout_attempts = IntCounterVec::new(
            Opts::new(
                "lanyard_logout_delivery_attempts_total",
                "Back-channel logout attempts by this instance, by result (delivered, retry, failed).",
            ),
            &["result"],
        )?;
        let pool = IntGaugeVec::new(
            Opts::new(
                "lanyard_db_pool_connections",
                "This process's database connections, by state (idle, in_use).",
            ),
            &["state"],
        )?;
        let pool_max = IntGauge::new(
            "lanyard_db_pool_max_connections",
            "The most database connections this process opens.",
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(signins.clone()))?;
        registry.register(Box::new(throttled.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(logout_attempts.clone()))?;
        registry.register(Box::new(pool.clone()))?;
        registry.register(Box::new(pool_max.clone()))?;
        Ok(Self {
            registry,
            requests,
            signins,
            throttled,
            tokens,
            logout_attempts,
            pool,
            pool_max,
        })
    }

    /// A sign-in step that ended: `result` is `succeeded` or `failed`; `method` names it in
    /// `amr` terms (`pwd`, `otp`, `hwk`, joined by `+` for a completed sign-in).
    pub fn signin(&self, result: &'static str, method: &str) {
        self.signins.with_label_values(&[result, method]).inc();
    }

    pub fn throttled(&self) {
        self.throttled.inc();
    }

    pub fn token_issued(&self, grant: &'static str) {
        self.tokens.with_label_values(&[grant]).inc();
    }

    pub fn logout_attempt(&self, result: &'static str) {
        self.logout_attempts.with_label_values(&[result]).inc();
    }

    fn request(&self, route: &str, method: &Method, status: StatusCode, took: Duration) {
        let method = match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
            _ => "other",
        };
        self.requests
            .with_label_values(&[route, method, status.as_str()])
            .observe(took.as_secs_f64());
    }

    /// The exposition: this process's series, then the database's.
    pub async fn render(&self, store: &dyn Store) -> Result<String, String> {
        let (open, idle, max) = store.pool_use();
        self.pool.with_label_values(&["idle"]).set(i64::from(idle));
        self.pool
            .with_label_values(&["in_use"])
            .set(i64::from(open.saturating_sub(idle)));
        self.pool_max.set(i64::from(max));
        let mut families = self.registry.gather();
        families.extend(shared(store).await?);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&families, &mut out)
            .map_err(|e| e.to_string())?;
        String::from_utf8(out).map_err(|e| e.to_string())
    }
}

/// The database's counts, gathered afresh at each scrape.
async fn shared(store: &dyn Store) -> Result<Vec<prometheus::proto::MetricFamily>, String> {
    let m = store.shared_metrics().await.map_err(|e| e.to_string())?;
    let build = || -> Result<Registry, prometheus::Error> {
        let registry = Registry::new();
        let active = IntGauge::new(
            "lanyard_sessions_active",
            "Sessions not ended yet, on all instances (expired ones until the sweeper ends them).",
        )?;
        active.set(i64::try_from(m.sessions).unwrap_or(i64::MAX));
        let ended = IntCounterVec::new(
            Opts::new(
                "lanyard_sessions_ended_total",
                "Sessions ended on all instances since the database was created, by reason.",
            ),
            &["reason"],
        )?;
        for (reason, n) in &m.sessions_ended {
            ended.with_label_values(&[reason.as_str()]).inc_by(*n);
        }
        let deliveries = IntGaugeVec::new(
            Opts::new(
                "lanyard_logout_deliveries",
                "Back-channel logout deliveries in the outbox, by state.",
            ),
            &["state"],
        )?;
        for (state, n) in &m.logout_deliveries {
            deliveries
                .with_label_values(&[state.as_str()])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        registry.register(Box::new(active))?;
        registry.register(Box::new(ended))?;
        registry.register(Box::new(deliveries))?;
        Ok(registry)
    };
    Ok(build().map_err(|e| e.to_string())?.gather())
}

/// Times every routed request.
pub(crate) async fn track(
    State(state): State<AppState>,
    route: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    let route = route.as_ref().map_or("unmatched", |r| r.as_str());
    state
        .metrics
        .request(route, &method, response.status(), started.elapsed());
    response
}

/// `GET /metrics`.
pub(crate) async fn metrics_get(State(state): State<AppState>) -> Response {
    match state.metrics.render(&*state.store).await {
        Ok(body) => (
            [
                (header::CONTENT_TYPE, prometheus::TEXT_FORMAT),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "metrics unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "metrics unavailable\n").into_response()
        }
    }
}
