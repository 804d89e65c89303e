//! `GET/POST /login` and `POST /logout`: password sign-in and sign-out.
//!
//! Sign-in always issues a brand-new session ID (never the pre-session's, never an earlier
//! session's), answers an unknown user, a wrong password and a disabled account with the same
//! words after the same work, and refuses every attempt during a throttle penalty, even a
//! correct one.

use crate::session::start_session;
use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use lanyard_core::audit::{AuditKind, NewAuditEvent};
use lanyard_core::password::Verified;
use lanyard_core::session::SessionSecret;
use lanyard_core::throttle::AttemptOutcome;
use lanyard_core::user::Username;
use secrecy::SecretString;

use crate::session::{pre_cookie_name, secret_from, session_cookie_name, set_cookie, signed_in};
use crate::web::{ClientInfo, PageError, check_csrf, form_error, render, safe_return_to};
use crate::{AppState, throttle};

#[derive(askama::Template)]
#[template(path = "login/login.html")]
struct LoginView<'a> {
    csrf: String,
    return_to: &'a str,
    username: &'a str,
    error: Option<&'a str>,
}

#[derive(serde::Deserialize)]
pub(crate) struct LoginQuery {
    return_to: Option<String>,
    /// Show the form even to a signed-in browser (prompt=login, max_age).
    force: Option<String>,
    /// A username the app suggested (OpenID Connect `login_hint`).
    login_hint: Option<String>,
}

#[derive(serde::Deserialize)]
pub(crate) struct LoginForm {
    csrf: String,
    return_to: Option<String>,
    username: String,
    password: String,
}

const WRONG: &str = "Incorrect username or password.";

pub(crate) async fn login_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    Query(q): Query<LoginQuery>,
) -> Result<Response, PageError> {
    let return_to = safe_return_to(q.return_to.as_deref());
    if q.force.is_none() && signed_in(&state, &headers, &client).await?.is_some() {
        return Ok(Redirect::to(&return_to).into_response());
    }
    let existing = secret_from(&headers, pre_cookie_name(&state));
    let fresh = existing.is_none();
    let pre = match existing {
        Some(s) => s,
        None => SessionSecret::generate()?,
    };
    let hint: String = q.login_hint.unwrap_or_default().chars().take(64).collect();
    let view = LoginView {
        csrf: pre.csrf_token(),
        return_to: &return_to,
        username: &hint,
        error: None,
    };
    let mut response = render(StatusCode::OK, &view);
    if fresh {
        set_cookie(
            &state,
            &mut response,
            pre_cookie_name(&state),
            Some(pre.cookie_value()),
        );
    }
    Ok(response)
}

pub(crate) async fn login_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Result<Response, PageError> {
    let Form(form) = form.map_err(form_error)?;
    let pre = secret_from(&headers, pre_cookie_name(&state));
    check_csrf(&state, &headers, pre.as_ref(), &form.csrf)?;
    let Some(pre) = pre else {
        return Err(PageError::Csrf);
    };
    let return_to = safe_return_to(form.return_to.as_deref());
    let now = state.clock.now();
    let event = |kind| NewAuditEvent::new(now, kind).actor(client.actor());

    let user = match Username::parse(&form.username) {
        Ok(name) => state.store.user_by_username(&name).await?,
        Err(_) => None,
    };
    let user_id = user.as_ref().map(|u| u.id.as_str());
    let attempt = throttle::begin(&state, &form.username, user_id, &client).await?;
    let password = SecretString::from(form.password);
    let stored = user.as_ref().map(|u| u.password_hash.clone());
    let verdict = state.passwords.verify(password.clone(), stored).await;

    let user = match (user, verdict) {
        (Some(user), Verified::Yes { needs_rehash }) if !user.disabled => {
            if needs_rehash {
                let new = state
                    .passwords
                    .hash(password)
                    .await
                    .map_err(|e| PageError::Internal(e.to_string()))?;
                state
                    .store
                    .rehash_password(&user.id, &user.password_hash, &new)
                    .await?;
            }
            user
        }
        (user, _) => {
            attempt.settle(&state, AttemptOutcome::Failed).await?;
            state.metrics.signin("failed", "pwd");
            let mut e = event(AuditKind::SignInFailed);
            if let Some(u) = &user {
                e = e.user(u.id.as_str()).detail(if u.disabled {
                    "disabled"
                } else {
                    "wrong password"
                });
            } else {
                e = e.detail("unknown user");
            }
            state.store.append_audit(&e).await?;
            let view = LoginView {
                csrf: pre.csrf_token(),
                return_to: &return_to,
                username: form.username.trim(),
                error: Some(WRONG),
            };
            return Ok(render(StatusCode::UNAUTHORIZED, &view));
        }
    };

    // Success: a fresh ID, never the pre-session's; any earlier session of this browser ends,
    // in the same transaction that creates the new one.
    attempt.settle(&state, AttemptOutcome::Succeeded).await?;
    if crate::mfa::has_second_factor(&state, &user).await? {
        let mut response = crate::mfa::start_second_step(&state, &user, &return_to).await?;
        set_cookie(&state, &mut response, pre_cookie_name(&state), None);
        return Ok(response);
    }
    let secret = start_session(
        &state,
        &headers,
        &client,
        &user,
        vec!["pwd".to_owned()],
        Vec::new(),
    )
    .await?;

    // When the operator requires a second factor, a user without one enrols before going on.
    let next = if state.config.mfa.required {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("return_to", &return_to);
        format!("/account/totp?{}", q.finish())
    } else {
        return_to
    };
    let mut response = Redirect::to(&next).into_response();
    set_cookie(
        &state,
        &mut response,
        session_cookie_name(&state),
        Some(secret.cookie_value()),
    );
    set_cookie(&state, &mut response, pre_cookie_name(&state), None);
    Ok(response)
}

#[derive(serde::Deserialize)]
pub(crate) struct CsrfForm {
    csrf: String,
}

pub(crate) async fn logout_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, PageError> {
    let Form(form) = form.map_err(form_error)?;
    let secret = secret_from(&headers, session_cookie_name(&state));
    check_csrf(&state, &headers, secret.as_ref(), &form.csrf)?;
    let apps = match secret {
        Some(secret) => crate::end_session::sign_out(&state, &secret.digest(), &client).await?,
        None => Vec::new(),
    };
    // Apps told through the browser need the signed-out page to load them.
    let mut response = if crate::end_session::any_frames(&apps) {
        crate::end_session::signed_out_page(apps, None)
    } else {
        Redirect::to("/login").into_response()
    };
    set_cookie(&state, &mut response, session_cookie_name(&state), None);
    Ok(response)
}
