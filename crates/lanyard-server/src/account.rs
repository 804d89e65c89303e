//! `/account`: who is signed in, where, and the controls to end sessions and change the
//! password.
//!
//! Invariant: a user can only ever end their own sessions: the store is asked to end a
//! session by its public ID *and* the signed-in user's ID, so another user's ID matches nothing.

use axum::Form;
use axum::extract::State;
use axum::extract::rejection::FormRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use lanyard_core::audit::{AuditKind, NewAuditEvent};
use lanyard_core::password::Verified;
use lanyard_core::session::{EndReason, NOTICE_EVICTED};
use lanyard_core::throttle::AttemptOutcome;
use secrecy::SecretString;

use crate::session::{SignedIn, live_sessions, signed_in};
use crate::web::{ClientInfo, PageError, check_csrf, form_error, render};
use crate::{AppState, throttle};

struct SessionRow {
    public_id: String,
    device: String,
    ip: String,
    started: String,
    last_active: String,
    current: bool,
}

#[derive(askama::Template)]
#[template(path = "account/account.html")]
struct AccountView {
    username: String,
    display_name: Option<String>,
    csrf: String,
    sessions: Vec<SessionRow>,
    evicted: bool,
    message: Option<&'static str>,
    error: Option<String>,
    min_length: usize,
    totp_on: bool,
    mfa_on: bool,
    may_manage: bool,
    recovery_left: u32,
    keys: Vec<KeyRow>,
}

struct KeyRow {
    id: String,
    name: String,
    kind: &'static str,
    created: String,
    last_used: String,
}

/// What a form post on /account acts as.
pub(crate) enum Gate {
    /// Any signed-in session.
    Session,
    /// A session allowed to change sign-in methods (see `mfa::may_manage_factors`).
    Factors,
}

/// The signed-in user behind a form post, after its CSRF check and `gate`; or the response
/// that sends the browser elsewhere (to sign in, or to confirm its second factor).
pub(crate) async fn form_user(
    state: &AppState,
    headers: &HeaderMap,
    client: &ClientInfo,
    csrf: &str,
    gate: Gate,
) -> Result<Result<SignedIn, Response>, PageError> {
    let me = match require(state, headers, client).await? {
        Ok(me) => me,
        Err(redirect) => return Ok(Err(redirect)),
    };
    check_csrf(state, headers, Some(&me.secret), csrf)?;
    if matches!(gate, Gate::Factors) && !crate::mfa::may_manage_factors(state, &me).await? {
        return Ok(Err(Redirect::to("/account/step-up").into_response()));
    }
    Ok(Ok(me))
}

pub(crate) async fn require(
    state: &AppState,
    headers: &HeaderMap,
    client: &ClientInfo,
) -> Result<Result<SignedIn, Response>, PageError> {
    Ok(match signed_in(state, headers, client).await? {
        Some(s) => Ok(s),
        None => Err(Redirect::to("/login?return_to=/account").into_response()),
    })
}

fn mfa_on_and_passed(me: &SignedIn, mfa_on: bool) -> bool {
    !mfa_on || me.session.amr.iter().any(|m| m == "mfa")
}

pub(crate) async fn page(
    state: &AppState,
    me: &SignedIn,
    status: StatusCode,
    message: Option<&'static str>,
    error: Option<String>,
) -> Result<Response, PageError> {
    let sessions = live_sessions(state, Some(&me.user.id)).await?;
    let evicted = me.session.notice.as_deref() == Some(NOTICE_EVICTED);
    if me.session.notice.is_some() {
        state
            .store
            .clear_session_notice(&me.secret.digest())
            .await?;
    }
    let totp_on = state
        .store
        .totp_factor(&me.user.id)
        .await?
        .is_some_and(|f| f.confirmed);
    let mfa_on = crate::mfa::has_second_factor(state, &me.user).await?;
    let recovery_left = if mfa_on {
        state.store.recovery_codes_left(&me.user.id).await?
    } else {
        0
    };
    let view = AccountView {
        username: me.user.username.to_string(),
        display_name: me.user.display_name.as_ref().map(|d| d.as_str().to_owned()),
        csrf: me.secret.csrf_token(),
        sessions: sessions
            .into_iter()
            .map(|s| SessionRow {
                current: s.public_id == me.session.public_id,
                device: device(s.user_agent.as_deref()),
                ip: s.ip.unwrap_or_else(|| "unknown".into()),
                started: s.created_at.to_string(),
                last_active: s.last_seen_at.to_string(),
                public_id: s.public_id,
            })
            .collect(),
        evicted,
        message,
        error,
        min_length: state.config.password.min_length,
        totp_on,
        mfa_on,
        may_manage: mfa_on_and_passed(me, mfa_on),
        recovery_left,
        keys: state
            .store
            .webauthn_credentials(&me.user.id)
            .await?
            .into_iter()
            .map(|k| KeyRow {
                id: k.credential_id,
                name: k.name,
                kind: match k.kind {
                    lanyard_core::mfa::KeyKind::Passkey => "Passkey",
                    lanyard_core::mfa::KeyKind::SecurityKey => "Security key",
                },
                created: k.created_at.to_string(),
                last_used: k
                    .last_used_at
                    .map_or_else(|| "never".to_owned(), |t| t.to_string()),
            })
            .collect(),
    };
    Ok(render(status, &view))
}

pub(crate) async fn account_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
) -> Result<Response, PageError> {
    match require(&state, &headers, &client).await? {
        Ok(me) => page(&state, &me, StatusCode::OK, None, None).await,
        Err(redirect) => Ok(redirect),
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct EndForm {
    csrf: String,
    session: String,
}

pub(crate) async fn end_session_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    form: Result<Form<EndForm>, FormRejection>,
) -> Result<Response, PageError> {
    let Form(form) = form.map_err(form_error)?;
    let me = match form_user(&state, &headers, &client, &form.csrf, Gate::Session).await? {
        Ok(me) => me,
        Err(response) => return Ok(response),
    };
    let event =
        NewAuditEvent::new(state.clock.now(), AuditKind::SessionEnded).actor(client.actor());
    let ended = state
        .store
        .end_session_by_public_id(&form.session, Some(&me.user.id), EndReason::Revoked, &event)
        .await?;
    if !ended {
        let why = "That session had already ended.".to_owned();
        return page(&state, &me, StatusCode::NOT_FOUND, None, Some(why)).await;
    }
    Ok(Redirect::to("/account").into_response())
}

#[derive(serde::Deserialize)]
pub(crate) struct CsrfOnly {
    csrf: String,
}

pub(crate) async fn end_others_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    form: Result<Form<CsrfOnly>, FormRejection>,
) -> Result<Response, PageError> {
    let Form(form) = form.map_err(form_error)?;
    let me = match form_user(&state, &headers, &client, &form.csrf, Gate::Session).await? {
        Ok(me) => me,
        Err(response) => return Ok(response),
    };
    let event =
        NewAuditEvent::new(state.clock.now(), AuditKind::SessionEnded).actor(client.actor());
    let digest = me.secret.digest();
    state
        .store
        .end_user_sessions(&me.user.id, Some(&digest), EndReason::Revoked, &event)
        .await?;
    page(
        &state,
        &me,
        StatusCode::OK,
        Some("You are now signed out everywhere else."),
        None,
    )
    .await
}

#[derive(serde::Deserialize)]
pub(crate) struct PasswordForm {
    csrf: String,
    current: String,
    new: String,
}

pub(crate) async fn password_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    form: Result<Form<PasswordForm>, FormRejection>,
) -> Result<Response, PageError> {
    let Form(form) = form.map_err(form_error)?;
    let me = match form_user(&state, &headers, &client, &form.csrf, Gate::Session).await? {
        Ok(me) => me,
        Err(response) => return Ok(response),
    };
    let now = state.clock.now();

    // The current password is a sign-in secret too: guesses here are throttled like sign-ins.
    let user_id = me.user.id.as_str();
    let attempt =
        throttle::begin(&state, me.user.username.as_str(), Some(user_id), &client).await?;
    let current = SecretString::from(form.current);
    let verdict = state
        .passwords
        .verify(current, Some(me.user.password_hash.clone()))
        .await;
    if verdict == Verified::No {
        attempt.settle(&state, AttemptOutcome::Failed).await?;
        state.metrics.signin("failed", "pwd");
        let e = NewAuditEvent::new(now, AuditKind::SignInFailed)
            .user(user_id)
            .actor(client.actor())
            .detail("wrong current password at password change");
        state.store.append_audit(&e).await?;
        let why = "Your current password was not correct.".to_owned();
        return page(&state, &me, StatusCode::UNAUTHORIZED, None, Some(why)).await;
    }
    attempt.settle(&state, AttemptOutcome::Succeeded).await?;
    let new = SecretString::from(form.new);
    if let Err(e) = state
        .passwords
        .hasher()
        .check_new_for(&new, me.user.username.as_str())
    {
        return page(
            &state,
            &me,
            StatusCode::BAD_REQUEST,
            None,
            Some(capitalise(&e.to_string())),
        )
        .await;
    }
    let hash = state
        .passwords
        .hash(new)
        .await
        .map_err(|e| PageError::Internal(e.to_string()))?;
    let event = NewAuditEvent::new(now, AuditKind::PasswordChanged)
        .user(me.user.id.as_str())
        .actor(client.actor());
    state
        .store
        .set_password_hash(&me.user.id, &hash, Some(&me.secret.digest()), &event)
        .await?;
    tracing::info!(user = %me.user.id.as_str(), "password changed; other sessions ended");
    let message = "Your password was changed, and you were signed out everywhere else.";
    page(&state, &me, StatusCode::OK, Some(message), None).await
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), c.as_str()),
        None => String::new(),
    }
}

/// A short, human description of a user agent: "Firefox on Linux".
fn device(user_agent: Option<&str>) -> String {
    let Some(ua) = user_agent else {
        return "Unknown device".to_owned();
    };
    let browser = [
        ("Edg/", "Edge"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("Chromium/", "Chromium"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
    ]
    .iter()
    .find(|(needle, _)| ua.contains(needle))
    .map_or("A browser", |(_, name)| name);
    let os = [
        ("Android", "Android"),
        ("iPhone", "iOS"),
        ("iPad", "iPadOS"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("CrOS", "ChromeOS"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(needle, _)| ua.contains(needle))
    .map(|(_, name)| *name);
    match os {
        Some(os) => format!("{browser} on {os}"),
        None => browser.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::device;

    #[test]
    fn devices() {
        let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
        assert_eq!(device(Some(firefox)), "Firefox on Linux");
        let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36";
        assert_eq!(device(Some(chrome)), "Chrome on Windows");
        assert_eq!(device(None), "Unknown device");
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct KeyForm {
    csrf: String,
    key: String,
    name: Option<String>,
    password: Option<String>,
}

pub(crate) async fn key_rename_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    form: Result<Form<KeyForm>, FormRejection>,
) -> Result<Response, PageError> {
    let Form(form) = form.map_err(form_error)?;
    let me = match form_user(&state, &headers, &client, &form.csrf, Gate::Factors).await? {
        Ok(me) => me,
        Err(response) => return Ok(response),
    };
    let name = form.name.as_deref().unwrap_or_default().trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        let why = "Give the key a name of up to 64 characters.".to_owned();
        return page(&state, &me, StatusCode::BAD_REQUEST, None, Some(why)).await;
    }
    if !state
        .store
        .rename_webauthn_credential(&me.user.id, &form.key, name)
        .await?
    {
        return page(
            &state,
            &me,
            StatusCode::NOT_FOUND,
            None,
            Some("No such key.".to_owned()),
        )
        .await;
    }
    Ok(Redirect::to("/account").into_response())
}

pub(crate) async fn key_remove_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    form: Result<Form<KeyForm>, FormRejection>,
) -> Result<Response, PageError> {
    let Form(form) = form.map_err(form_error)?;
    let me = match form_user(&state, &headers, &client, &form.csrf, Gate::Factors).await? {
        Ok(me) => me,
        Err(response) => return Ok(response),
    };
    // Taking a key away is taking a way in away: the password confirms it is the owner.
    let attempt = throttle::begin(
        &state,
        me.user.username.as_str(),
        Some(me.user.id.as_str()),
        &client,
    )
    .await?;
    let password = SecretString::from(form.password.clone().unwrap_or_default());
    if state
        .passwords
        .verify(password, Some(me.user.password_hash.clone()))
        .await
        == Verified::No
    {
        attempt.settle(&state, AttemptOutcome::Failed).await?;
        let why = "Your password was not correct, so the key stays.".to_owned();
        return page(&state, &me, StatusCode::UNAUTHORIZED, None, Some(why)).await;
    }
    attempt.settle(&state, AttemptOutcome::Succeeded).await?;
    let event = NewAuditEvent::new(state.clock.now(), AuditKind::KeyRemoved)
        .user(me.user.id.as_str())
        .actor(client.actor())
        .detail(format!("credential={}", form.key));
    if !state
        .store
        .remove_webauthn_credential(&me.user.id, &form.key, &event)
        .await?
    {
        return page(
            &state,
            &me,
            StatusCode::NOT_FOUND,
            None,
            Some("No such key.".to_owned()),
        )
        .await;
    }
    Ok(Redirect::to("/account").into_response())
}
