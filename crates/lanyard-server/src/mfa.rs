//! Second factors on the web: enrolling an authenticator app (`/account/totp`), removing it,
//! recovery codes, and the second step of sign-in (`/login/mfa`).
//!
//! Invariants: a password alone never creates a session for a user with a second factor: it
//! creates a pending sign-in (its own cookie, five minutes) that becomes a session with a new
//! ID only when a code passes. Second-factor guesses are throttled like passwords. TOTP secrets
//! are sealed at rest under the signing keys' encryption key.

use std::time::Duration;

use crate::session::start_session;
use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use lanyard_core::audit::{AuditKind, NewAuditEvent};
use lanyard_core::mfa::{PendingSignIn, TotpSecret, new_recovery_codes, recovery_digest};
use lanyard_core::password::Verified;
use lanyard_core::session::SessionSecret;
use lanyard_core::throttle::AttemptOutcome;
use lanyard_core::user::User;
use secrecy::SecretString;

use crate::account::{Gate, form_user, page, require};
use crate::session::{SignedIn, secret_from, session_cookie_name, set_cookie};
use crate::web::{ClientInfo, PageError, check_csrf, form_error, render, safe_return_to};
use crate::{AppState, throttle};

const PENDING_LIFETIME: Duration = Duration::from_secs(300);

#[derive(askama::Template)]
#[template(path = "account/totp.html")]
struct TotpView {
    qr_svg: String,
    otpauth_uri: String,
    secret: String,
    csrf: String,
    error: Option<&'static str>,
    return_to: String,
    required: bool,
}

#[derive(askama::Template)]
#[template(path = "account/recovery.html")]
struct RecoveryView {
    codes: Vec<String>,
    message: Option<&'static str>,
    next: String,
}

#[derive(askama::Template)]
#[template(path = "login/mfa.html")]
struct MfaView<'a> {
    username: &'a str,
    csrf: String,
    error: Option<&'static str>,
    has_keys: bool,
}

fn internal(e: impl std::fmt::Display) -> PageError {
    PageError::Internal(e.to_string())
}

fn totp_context(user: &User) -> String {
    format!("totp:{}", user.id.as_str())
}

/// The user's confirmed authenticator secret, if any.
pub(crate) async fn confirmed_secret(
    state: &AppState,
    user: &User,
) -> Result<Option<TotpSecret>, PageError> {
    match state.store.totp_factor(&user.id).await? {
        Some(f) if f.confirmed => {
            let bytes = state
                .keys
                .unseal(&f.sealed_secret, &totp_context(user))
                .map_err(internal)?;
            Ok(Some(TotpSecret::from_bytes(bytes)))
        }
        _ => Ok(None),
    }
}

fn qr_svg(uri: &str) -> Result<String, PageError> {
    let code = qrcode::QrCode::new(uri.as_bytes()).map_err(internal)?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build())
}

async fn enrol_page(
    state: &AppState,
    me: &SignedIn,
    error: Option<&'static str>,
    return_to: Option<&str>,
) -> Result<Response, PageError> {
    let secret = TotpSecret::generate()?;
    let sealed = state
        .keys
        .seal(secret.as_bytes(), &totp_context(&me.user))
        .map_err(internal)?;
    if !state
        .store
        .begin_totp(&me.user.id, &sealed, state.clock.now())
        .await?
    {
        return Ok(Redirect::to("/account").into_response());
    }
    let issuer = url::Url::parse(state.config.issuer.as_str())
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "Lanyard".to_owned());
    let uri = secret
        .otpauth_uri(&format!("Lanyard ({issuer})"), me.user.username.as_str())
        .map_err(internal)?;
    let view = TotpView {
        qr_svg: qr_svg(&uri)?,
        otpauth_uri: uri,
        secret: secret.base32(),
        csrf: me.secret.csrf_token(),
        error,
        return_to: safe_return_to(return_to),
        required: return_to.is_some(),
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok(render(status, &view))
}

#[derive(serde::Deserialize)]
pub(crate) struct EnrolQuery {
    return_to: Option<String>,
}

pub(crate) async fn totp_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    Query(q): Query<EnrolQuery>,
) -> Result<Response, PageError> {
    let me = match require(&state, &headers, &client).await? {
        Ok(me) => me,
        Err(redirect) => return Ok(redirect),
    };
    if !may_manage_factors(&state, &me).await? {
        return Ok(step_up_first());
    }
    enrol_page(&state, &me, None, q.return_to.as_deref()).await
}

#[derive(serde::Deserialize)]
pub(crate) struct CodeForm {
    csrf: String,
    code: String,
    return_to: Option<String>,
}

pub(crate) async fn totp_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    form: Result<Form<CodeForm>, FormRejection>,
) -> Result<Response, PageError> {
    let Form(form) = form.map_err(form_error)?;
    let me = match form_user(&state, &headers, &client, &form.csrf, Gate::Factors).await? {
        Ok(me) => me,
        Err(response) => return Ok(response),
    };
    let Some(factor) = state
        .store
        .totp_factor(&me.user.id)
        .await?
        .filter(|f| !f.confirmed)
    else {
        return Ok(Redirect::to("/account").into_response());
    };
    let sealed = state
        .keys
        .unseal(&factor.sealed_secret, &totp_context(&me.user))
        .map_err(internal)?;
    let secret = TotpSecret::from_bytes(sealed);
    let now = state.clock.now();
    let return_to = form.return_to.as_deref().filter(|r| *r != "/account");
    let Some(step) = secret.matching_step(&form.code, now) else {
        // A new secret and QR code; the one the user scanned was not confirmed.
        let why = "That code did not match. Scan the new code and try again.";
        return enrol_page(&state, &me, Some(why), return_to).await;
    };
    let codes = new_recovery_codes()?;
    let digests: Vec<String> = codes
        .iter()
        .map(|c| recovery_digest(me.user.id.as_str(), c))
        .collect();
    let event = NewAuditEvent::new(now, AuditKind::MfaEnrolled)
        .user(me.user.id.as_str())
        .actor(client.actor())
        .detail("totp");
    if !state
        .store
        .confirm_totp(&me.user.id, &factor.sealed_secret, step, &digests, &event)
        .await?
    {
        return Ok(Redirect::to("/account").into_response());
    }
    // The user just proved the new factor: the session steps up (a new secret, same sid).
    let mut amr = me.session.amr.clone();
    amr.retain(|m| m != "otp" && m != "mfa");
    amr.push("otp".to_owned());
    amr.push("mfa".to_owned());
    let renewed = start_session(&state, &headers, &client, &me.user, amr, Vec::new()).await?;
    let view = RecoveryView {
        codes,
        message: Some(
            "Your authenticator app is on. You will be asked for a code after your password.",
        ),
        next: safe_return_to(return_to),
    };
    let mut response = render(StatusCode::OK, &view);
    set_cookie(
        &state,
        &mut response,
        session_cookie_name(&state),
        Some(renewed.cookie_value()),
    );
    Ok(response)
}

#[derive(serde::Deserialize)]
pub(crate) struct RemoveForm {
    csrf: String,
    password: String,
}

pub(crate) async fn totp_remove_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    form: Result<Form<RemoveForm>, FormRejection>,
) -> Result<Response, PageError> {
    let Form(form) = form.map_err(form_error)?;
    let me = match form_user(&state, &headers, &client, &form.csrf, Gate::Factors).await? {
        Ok(me) => me,
        Err(response) => return Ok(response),
    };
    let attempt = throttle::begin(
        &state,
        me.user.username.as_str(),
        Some(me.user.id.as_str()),
        &client,
    )
    .await?;
    let verdict = state
        .passwords
        .verify(
            SecretString::from(form.password),
            Some(me.user.password_hash.clone()),
        )
        .await;
    if verdict == Verified::No {
        attempt.settle(&state, AttemptOutcome::Failed).await?;
        let why = "Your password was not correct, so the authenticator stays on.".to_owned();
        return page(&state, &me, StatusCode::UNAUTHORIZED, None, Some(why)).await;
    }
    attempt.settle(&state, AttemptOutcome::Succeeded).await?;
    let event = NewAuditEvent::new(state.clock.now(), AuditKind::MfaRemoved)
        .user(me.user.id.as_str())
        .actor(client.actor())
        .detail("totp");
    state.store.remove_totp(&me.user.id, &event).await?;
    page(
        &state,
        &me,
        StatusCode::OK,
        Some("Your authenticator app was removed."),
        None,
    )
    .await
}

#[derive(serde::Deserialize)]
pub(crate) struct CsrfOnly {
    csrf: String,
}

pub(crate) async fn recovery_codes_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    form: Result<Form<CsrfOnly>, FormRejection>,
) -> Result<Response, PageError> {
    let Form(form) = form.map_err(form_error)?;
    let me = match form_user(&state, &headers, &client, &form.csrf, Gate::Factors).await? {
        Ok(me) => me,
        Err(response) => return Ok(response),
    };
    if !has_second_factor(&state, &me.user).await? {
        return Ok(Redirect::to("/account").into_response());
    }
    let codes = new_recovery_codes()?;
    let digests: Vec<String> = codes
        .iter()
        .map(|c| recovery_digest(me.user.id.as_str(), c))
        .collect();
    let event = NewAuditEvent::new(state.clock.now(), AuditKind::RecoveryCodesRenewed)
        .user(me.user.id.as_str())
        .actor(client.actor());
    state
        .store
        .replace_recovery_codes(&me.user.id, &digests, &event)
        .await?;
    let view = RecoveryView {
        codes,
        message: Some("Your old recovery codes no longer work."),
        next: "/account".to_owned(),
    };
    Ok(render(StatusCode::OK, &view))
}

// ---- the second step of sign-in ----

pub(crate) fn pending_cookie_name(state: &AppState) -> &'static str {
    if state.config.issuer.is_https() {
        "__Host-lanyard_mfa"
    } else {
        "lanyard_mfa"
    }
}

/// After a right password for a user with a second factor: remember the sign-in, ask for the
/// code.
pub(crate) async fn start_second_step(
    state: &AppState,
    user: &User,
    return_to: &str,
) -> Result<Response, PageError> {
    let secret = SessionSecret::generate()?;
    let now = state.clock.now();
    let pending = PendingSignIn {
        id_digest: secret.digest(),
        user_id: user.id.clone(),
        created_at: now,
        expires_at: now.saturating_add(PENDING_LIFETIME),
        amr: vec!["pwd".to_owned()],
        return_to: return_to.to_owned(),
    };
    state.store.create_pending_signin(&pending).await?;
    let mut response = Redirect::to("/login/mfa").into_response();
    set_cookie(
        state,
        &mut response,
        pending_cookie_name(state),
        Some(secret.cookie_value()),
    );
    Ok(response)
}

async fn pending(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<(SessionSecret, PendingSignIn, User)>, PageError> {
    let Some(secret) = secret_from(headers, pending_cookie_name(state)) else {
        return Ok(None);
    };
    let Some(p) = state
        .store
        .pending_signin(&secret.digest(), state.clock.now())
        .await?
    else {
        return Ok(None);
    };
    match state.store.user_by_id(&p.user_id).await? {
        Some(u) if !u.disabled => Ok(Some((secret, p, u))),
        _ => Ok(None),
    }
}

pub(crate) async fn mfa_get(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, PageError> {
    match pending(&state, &headers).await? {
        Some((secret, _, user)) => {
            let view = MfaView {
                username: user.username.as_str(),
                csrf: secret.csrf_token(),
                error: None,
                has_keys: has_security_key(&state, &user).await?,
            };
            Ok(render(StatusCode::OK, &view))
        }
        None => Ok(Redirect::to("/login").into_response()),
    }
}

pub(crate) async fn mfa_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    form: Result<Form<CodeForm>, FormRejection>,
) -> Result<Response, PageError> {
    let Form(form) = form.map_err(form_error)?;
    let Some((pending_secret, _, user)) = pending(&state, &headers).await? else {
        return Ok(Redirect::to("/login").into_response());
    };
    check_csrf(&state, &headers, Some(&pending_secret), &form.csrf)?;
    let now = state.clock.now();
    let account = format!("mfa:{}", user.username);
    let attempt = throttle::begin(&state, &account, Some(user.id.as_str()), &client).await?;
    let method = verify_second_factor(&state, &user, &form.code).await?;
    let Some(method) = method else {
        attempt.settle(&state, AttemptOutcome::Failed).await?;
        state.metrics.signin("failed", "otp");
        let e = NewAuditEvent::new(now, AuditKind::MfaFailed)
            .user(user.id.as_str())
            .actor(client.actor());
        state.store.append_audit(&e).await?;
        let view = MfaView {
            username: user.username.as_str(),
            csrf: pending_secret.csrf_token(),
            error: Some("That code is not right, or was used already."),
            has_keys: has_security_key(&state, &user).await?,
        };
        return Ok(render(StatusCode::UNAUTHORIZED, &view));
    };
    attempt.settle(&state, AttemptOutcome::Succeeded).await?;
    let (next, secret) = finish_second_step(&state, &headers, &client, &user, method).await?;
    let mut response = Redirect::to(&next).into_response();
    set_cookie(
        &state,
        &mut response,
        session_cookie_name(&state),
        Some(secret.cookie_value()),
    );
    set_cookie(&state, &mut response, pending_cookie_name(&state), None);
    Ok(response)
}

/// The pending sign-in's secret and user, for the security-key endpoints.
pub(crate) async fn pending_for_webauthn(
    state: &AppState,
    headers: &HeaderMap,
) -> Option<(SessionSecret, User)> {
    pending(state, headers)
        .await
        .ok()
        .flatten()
        .map(|(secret, _, user)| (secret, user))
}

/// Turns the pending sign-in into a session after its second factor (`method`, RFC 8176)
/// passed. Returns where to go next and the session's secret.
pub(crate) async fn finish_second_step(
    state: &AppState,
    headers: &HeaderMap,
    client: &ClientInfo,
    user: &User,
    method: &str,
) -> Result<(String, SessionSecret), PageError> {
    let Some((_, p, _)) = pending(state, headers).await? else {
        return Err(PageError::BadRequest("The sign-in expired. Start again."));
    };
    // Exactly one request finishes a pending sign-in.
    if !state.store.delete_pending_signin(&p.id_digest).await? {
        return Err(PageError::BadRequest("The sign-in expired. Start again."));
    }
    let mut amr = p.amr.clone();
    amr.push(method.to_owned());
    amr.push("mfa".to_owned());
    let done = NewAuditEvent::new(state.clock.now(), AuditKind::MfaSucceeded)
        .actor(client.actor())
        .user(user.id.as_str())
        .detail(method.to_owned());
    let secret = start_session(state, headers, client, user, amr, vec![done]).await?;
    Ok((safe_return_to(Some(&p.return_to)), secret))
}

/// Checks a code: an authenticator code (consuming its step) or a recovery code (consuming
/// it). Returns the RFC 8176 method it proves.
async fn verify_second_factor(
    state: &AppState,
    user: &User,
    code: &str,
) -> Result<Option<&'static str>, PageError> {
    let now = state.clock.now();
    let compact: String = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect();
    if compact.len() == 6 && compact.bytes().all(|b| b.is_ascii_digit()) {
        let Some(secret) = confirmed_secret(state, user).await? else {
            return Ok(None);
        };
        let Some(step) = secret.matching_step(&compact, now) else {
            return Ok(None);
        };
        // A code is good for one sign-in only (RFC 6238 §5.2).
        return Ok(state
            .store
            .use_totp_step(&user.id, step)
            .await?
            .then_some("otp"));
    }
    if compact.len() == 16 {
        let used = state
            .store
            .use_recovery_code(&user.id, &recovery_digest(user.id.as_str(), &compact), now)
            .await?;
        if used {
            let e = NewAuditEvent::new(now, AuditKind::RecoveryCodeUsed).user(user.id.as_str());
            state.store.append_audit(&e).await?;
            // RFC 8176 has no value for a recovery code; "rc" says what it was.
            return Ok(Some("rc"));
        }
    }
    Ok(None)
}

async fn has_security_key(state: &AppState, user: &User) -> Result<bool, PageError> {
    let keys = state.store.webauthn_credentials(&user.id).await?;
    Ok(keys
        .iter()
        .any(|k| k.kind == lanyard_core::mfa::KeyKind::SecurityKey))
}

/// Whether this session may change the user's sign-in methods: if the user has a second factor,
/// only a session that passed one may (else a stolen password could add its own key, or take
/// the factor away).
pub(crate) async fn may_manage_factors(state: &AppState, me: &SignedIn) -> Result<bool, PageError> {
    Ok(me.session.amr.iter().any(|m| m == "mfa") || !has_second_factor(state, &me.user).await?)
}

/// `GET /account/step-up`: confirm the second factor, then back to /account.
pub(crate) async fn step_up_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
) -> Result<Response, PageError> {
    let me = match require(&state, &headers, &client).await? {
        Ok(me) => me,
        Err(redirect) => return Ok(redirect),
    };
    if !has_second_factor(&state, &me.user).await? {
        return Ok(Redirect::to("/account").into_response());
    }
    start_second_step(&state, &me.user, "/account").await
}

/// The redirect for a request that needs a session that passed the second factor.
fn step_up_first() -> Response {
    Redirect::to("/account/step-up").into_response()
}

/// Whether the user must pass a second step after the password.
pub(crate) async fn has_second_factor(state: &AppState, user: &User) -> Result<bool, PageError> {
    if state
        .store
        .totp_factor(&user.id)
        .await?
        .is_some_and(|f| f.confirmed)
    {
        return Ok(true);
    }
    let keys = state.store.webauthn_credentials(&user.id).await?;
    Ok(keys
        .iter()
        .any(|k| k.kind == lanyard_core::mfa::KeyKind::SecurityKey))
}
