//! The session cookie and the signed-in request.
//!
//! Invariants: the cookie is `HttpOnly; SameSite=Lax; Path=/`, and `Secure` with the `__Host-`
//! prefix when the issuer is https; its value is a `SessionSecret`. A presented session that
//! the policy says has ended (idle, too old, other network) is ended in the store right away,
//! with its audit event, and the request proceeds as signed out.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use lanyard_core::audit::{AuditKind, NewAuditEvent};
use lanyard_core::session::{Session, SessionSecret, Verdict};
use lanyard_core::user::User;

use crate::AppState;
use crate::web::{ClientInfo, PageError, cookie};

/// A request made with a live session.
pub(crate) struct SignedIn {
    pub secret: SessionSecret,
    pub session: Session,
    pub user: User,
}

pub(crate) fn session_cookie_name(state: &AppState) -> &'static str {
    if state.config.issuer.is_https() {
        "__Host-lanyard_session"
    } else {
        "lanyard_session"
    }
}

/// The pre-session cookie: held by a browser before sign-in, to tie the login form's CSRF
/// token to it. It is never turned into a session.
pub(crate) fn pre_cookie_name(state: &AppState) -> &'static str {
    if state.config.issuer.is_https() {
        "__Host-lanyard_pre"
    } else {
        "lanyard_pre"
    }
}

/// Adds a `Set-Cookie` for `name` to `response`; `None` clears the cookie.
pub(crate) fn set_cookie(
    state: &AppState,
    response: &mut Response,
    name: &str,
    value: Option<&str>,
) {
    let secure = if state.config.issuer.is_https() {
        "; Secure"
    } else {
        ""
    };
    let cookie = match value {
        Some(v) => format!("{name}={v}; HttpOnly; SameSite=Lax; Path=/{secure}"),
        None => format!("{name}=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0{secure}"),
    };
    // Names are constants and values base64url, so this always parses.
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// The secret in cookie `name`, if well-formed.
pub(crate) fn secret_from(headers: &HeaderMap, name: &str) -> Option<SessionSecret> {
    cookie(headers, name).and_then(SessionSecret::from_cookie)
}

/// `GET /session/check`: 204 when the request carries a live session, 401 when not. For a page
/// or a proxy that only needs to know; it says nothing about whose session it is.
pub(crate) async fn check_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
) -> Result<StatusCode, PageError> {
    Ok(match signed_in(&state, &headers, &client).await? {
        Some(_) => StatusCode::NO_CONTENT,
        None => StatusCode::UNAUTHORIZED,
    })
}

/// The live session this request carries, if any. Ends a session the policy rules out.
pub(crate) async fn signed_in(
    state: &AppState,
    headers: &HeaderMap,
    client: &ClientInfo,
) -> Result<Option<SignedIn>, PageError> {
    let Some(secret) = secret_from(headers, session_cookie_name(state)) else {
        return Ok(None);
    };
    let digest = secret.digest();
    let Some((session, user)) = state.store.session_with_user(&digest).await? else {
        return Ok(None);
    };
    let now = state.clock.now();
    match state
        .config
        .session
        .policy()
        .judge(&session, now, client.ip)
    {
        Verdict::Ended(reason) => {
            let event = NewAuditEvent::new(now, AuditKind::SessionEnded).actor(client.actor());
            state.store.end_session(&digest, reason, &event).await?;
            tracing::info!(reason = reason.as_str(), session = %session.public_id, "session ended");
            Ok(None)
        }
        Verdict::Valid { touch } => {
            if user.disabled {
                return Ok(None);
            }
            if touch {
                state.store.touch_session(&digest, now).await?;
            }
            Ok(Some(SignedIn {
                secret,
                session,
                user,
            }))
        }
    }
}

/// The session with this public ID, if it is alive: present, and not ended by time even if the
/// sweeper has not removed it yet.
pub(crate) async fn live_session(
    state: &AppState,
    public_id: &str,
) -> Result<Option<Session>, lanyard_core::StoreError> {
    let Some(s) = state.store.session_by_public_id(public_id).await? else {
        return Ok(None);
    };
    let expired = state
        .config
        .session
        .policy()
        .expired(&s, state.clock.now())
        .is_some();
    Ok((!expired).then_some(s))
}

/// The sessions that have not ended, of one user or all, newest first.
pub(crate) async fn live_sessions(
    state: &AppState,
    user: Option<&lanyard_core::user::UserId>,
) -> Result<Vec<Session>, lanyard_core::StoreError> {
    let now = state.clock.now();
    let policy = state.config.session.policy();
    state
        .store
        .list_sessions(user, policy.idle_cutoff(now), policy.lifetime_cutoff(now))
        .await
}

/// Starts a session for `user` after a successful sign-in: a fresh secret, always. If the
/// browser held a session of the same user, it is renewed under the same public ID (the `sid`
/// apps know); any other session it held ends. Appends `events` with the sign-in's own.
pub(crate) async fn start_session(
    state: &AppState,
    headers: &HeaderMap,
    client: &ClientInfo,
    user: &lanyard_core::user::User,
    amr: Vec<String>,
    mut events: Vec<NewAuditEvent>,
) -> Result<SessionSecret, PageError> {
    let now = state.clock.now();
    let secret = SessionSecret::generate()?;
    let method = amr.join("+");
    let mut session = lanyard_core::session::NewSession::new(&secret, user.id.clone(), now, amr)?;
    session.ip = client.ip.map(|ip| ip.to_string());
    session.user_agent = client.user_agent.clone();
    let replaces = secret_from(headers, session_cookie_name(state)).map(|old| old.digest());
    let mut renewed = false;
    if let Some(old) = &replaces
        && let Some(previous) = state.store.session_by_digest(old).await?
        && previous.user_id == user.id
    {
        session.public_id = previous.public_id;
        renewed = true;
    }
    let event = |kind| {
        NewAuditEvent::new(now, kind)
            .actor(client.actor())
            .user(user.id.as_str())
    };
    events.push(event(AuditKind::SignInSucceeded));
    events.push(event(AuditKind::SessionStarted).detail(format!(
        "session={}{}",
        session.public_id,
        if renewed { " renewed" } else { "" }
    )));
    let max = state.config.session.max_per_user;
    let public_id = state
        .store
        .create_session(&session, replaces.as_deref(), max, &events)
        .await?;
    state.metrics.signin("succeeded", &method);
    tracing::info!(user = %user.id.as_str(), session = %public_id, renewed, "signed in");
    Ok(secret)
}

/// Ends expired sessions and forgets old sign-in failures, once a minute, until the process
/// stops. Safe to run on every instance at once: each row is deleted by exactly one of them.
pub(crate) fn spawn_sweeper(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let every = Duration::from_secs(60);
        // The first sweep waits a full period: start-up has enough to do.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tick.tick().await;
            sweep(&state).await;
        }
    })
}

/// One sweep: what the background task does every minute.
pub async fn sweep(state: &AppState) {
    let now = state.clock.now();
    let policy = state.config.session.policy();
    let store: &Arc<dyn lanyard_core::Store> = &state.store;
    match store
        .sweep_sessions(policy.idle_cutoff(now), policy.lifetime_cutoff(now), now)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(ended = n, "expired sessions ended"),
        Err(e) => tracing::warn!(error = %e, "session sweep failed"),
    }
    let t = &state.config.throttle;
    let longest = [
        t.per_account_and_ip.window,
        t.per_ip.window,
        t.per_account.window,
    ]
    .into_iter()
    .max()
    .unwrap_or_default();
    if let Err(e) = store.sweep_codes(now).await {
        tracing::warn!(error = %e, "code and token sweep failed");
    }
    if let Err(e) = store
        .sweep_sign_in_failures(now.saturating_sub(longest))
        .await
    {
        tracing::warn!(error = %e, "sign-in failure sweep failed");
    }
}
