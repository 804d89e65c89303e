//! The router, its middleware, and the server loop with graceful shutdown.
//!
//! Every route sits behind the same stack: a request ID (taken from `x-request-id` or made
//! here, echoed in the response and in every log line of the request), a trace span, a request
//! timeout and a body size limit.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, Request, StatusCode};
use axum::routing::{get, post};
use lanyard_core::{Clock, Store};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::Config;
use crate::account::{account_get, end_others_post, end_session_post, password_post};
use crate::authorize::{authorize_get, authorize_post, consent_post};
use crate::discovery::{discovery_get, jwks_get};
use crate::health::{healthz_get, readyz_get};
use crate::keys::KeyRing;
use crate::login::{login_get, login_post, logout_post};
use crate::mfa::{mfa_get, mfa_post, recovery_codes_post, totp_get, totp_post, totp_remove_post};
use crate::passwords::Passwords;
use crate::register::register_post;
use crate::resource::{introspect_post, revoke_post, userinfo};
use crate::session::spawn_sweeper;
use crate::throttle::AuditGate;
use crate::token::token_post;
use crate::web::{security_headers, stylesheet_get};

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<Config>,
    pub passwords: Arc<Passwords>,
    pub keys: Arc<KeyRing>,
    pub webauthn: Arc<webauthn_rs::Webauthn>,
    pub audit_gate: Arc<AuditGate>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Clients as client authentication last read them (see `clients`).
    pub clients: Arc<crate::clients::ClientCache>,
}

impl AppState {
    /// Builds the state: password hashing, and the signing keys (created on first start).
    pub async fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        config: Config,
    ) -> Result<Self, StartError> {
        let passwords = Passwords::new(config.password.clone())?;
        let keys = KeyRing::open(&config, &*store, clock.now()).await?;
        let webauthn = Arc::new(
            crate::webauthn::relying_party(config.issuer.as_str()).map_err(StartError::Webauthn)?,
        );
        Ok(Self {
            store,
            clock,
            config: Arc::new(config),
            passwords,
            keys,
            webauthn,
            audit_gate: Arc::default(),
            metrics: Arc::new(
                crate::metrics::Metrics::new().map_err(|e| StartError::Metrics(e.to_string()))?,
            ),
            clients: Arc::default(),
        })
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Password(#[from] lanyard_core::password::PasswordError),
    #[error(transparent)]
    Keys(#[from] crate::keys::KeysError),
    #[error("{0}")]
    Webauthn(String),
    #[error("metrics: {0}")]
    Metrics(String),
}

pub fn router(state: AppState) -> Router {
    let http = &state.config.http;
    let middleware = ServiceBuilder::new()
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::proxy::resolve_peer,
        ))
        .layer(SetRequestIdLayer::x_request_id(RandomRequestId))
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(RequestBodyLimitLayer::new(http.body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            http.request_timeout,
        ));
    let routes = Router::new()
        .route("/healthz", get(healthz_get))
        .route("/readyz", get(readyz_get))
        .route("/_lanyard/request", get(crate::proxy::request_get))
        .route("/static/lanyard.css", get(stylesheet_get))
        .route("/login", get(login_get).post(login_post))
        .route("/logout", post(logout_post))
        .route("/session/check", get(crate::session::check_get))
        .route("/account", get(account_get))
        .route("/account/sessions/end", post(end_session_post))
        .route("/account/sessions/end-others", post(end_others_post))
        .route("/account/password", post(password_post))
        .route("/account/totp", get(totp_get).post(totp_post))
        .route("/account/totp/remove", post(totp_remove_post))
        .route("/account/recovery-codes", post(recovery_codes_post))
        .route("/login/mfa", get(mfa_get).post(mfa_post))
        .route("/account/step-up", get(crate::mfa::step_up_get))
        .route("/login/passkey/start", post(crate::webauthn::login_start))
        .route("/login/passkey/finish", post(crate::webauthn::login_finish))
        .route("/login/mfa/key/start", post(crate::webauthn::mfa_start))
        .route("/login/mfa/key/finish", post(crate::webauthn::mfa_finish))
        .route("/account/keys/start", post(crate::webauthn::register_start))
        .route(
            "/account/keys/finish",
            post(crate::webauthn::register_finish),
        )
        .route(
            "/account/keys/rename",
            post(crate::account::key_rename_post),
        )
        .route(
            "/account/keys/remove",
            post(crate::account::key_remove_post),
        )
        .route("/static/webauthn.js", get(crate::web::script_get))
        .route("/.well-known/openid-configuration", get(discovery_get))
        .route("/jwks.json", get(jwks_get))
        .route("/authorize", get(authorize_get).post(authorize_post))
        .route("/consent", post(consent_post))
        .route("/token", post(token_post))
        .route("/userinfo", get(userinfo).post(userinfo))
        .route("/introspect", post(introspect_post))
        .route("/revoke", post(revoke_post))
        .route("/register", post(register_post))
        .route(
            "/end_session",
            get(crate::end_session::end_session_get).post(crate::end_session::end_session_post),
        )
        .route(
            "/end_session/confirm",
            post(crate::end_session::confirm_post),
        );
    // On their own address if configured, so the public listener need not show them.
    let routes = if state.config.metrics.listen.is_none() {
        routes.route("/metrics", get(crate::metrics::metrics_get))
    } else {
        routes
    };
    routes
        // Runs after routing, so it knows the matched route.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .layer(middleware)
        // Outermost, so early answers (413, 408) carry the headers too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security_headers,
        ))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` completes, then lets requests in
/// flight finish.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        issuer = state.config.issuer.as_str(),
        backend = state.store.backend(),
        "listening"
    );
    for warning in state.config.warnings() {
        tracing::warn!("{warning}");
    }
    let sweeper = spawn_sweeper(state.clone());
    let key_refresh = state
        .keys
        .spawn_refresh(state.store.clone(), state.clock.clone());
    let logout_worker = crate::logout::spawn_worker(state.clone());
    let metrics_server = match state.config.metrics.listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await?;
            tracing::info!(%addr, "metrics listening");
            let app = Router::new()
                .route("/metrics", get(crate::metrics::metrics_get))
                .with_state(state.clone());
            Some(tokio::spawn(
                async move { axum::serve(listener, app).await },
            ))
        }
        None => None,
    };
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    sweeper.abort();
    key_refresh.abort();
    logout_worker.abort();
    if let Some(m) = metrics_server {
        m.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

fn request_span<B>(req: &Request<B>) -> tracing::Span {
    let id = req
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("-");
    let client = req
        .extensions()
        .get::<crate::proxy::Seen>()
        .and_then(|s| s.client_ip)
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    // The path only: query strings carry codes, tokens and state.
    tracing::info_span!("request", request_id = %id, client = %client, method = %req.method(), path = %req.uri().path())
}

/// 128 random bits, hex. Request IDs only need to be unique, but a CSPRNG is as cheap as any.
#[derive(Clone, Copy)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).ok()?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        HeaderValue::from_str(&hex).ok().map(RequestId::new)
    }
}
