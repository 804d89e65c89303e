//! WebAuthn with webauthn-rs: passkeys (discoverable, user-verifying credentials that sign in on
//! their own, with or without a username, including browser autofill) and security keys (a
//! second factor after the password). The RP ID is the issuer's host, so WebAuthn needs https
//! or `localhost`.
//!
//! Invariants: a ceremony's state lives server-side, keyed by the digest of its purpose and the
//! browser's session or pre-session secret, and is taken (deleted) when answered, so every
//! challenge works once and only for the browser that asked; a signature counter that does not
//! move forward is audited as a possible cloned key. The JSON endpoints need the page's CSRF
//! token in `x-csrf-token`.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use lanyard_core::audit::{AuditKind, NewAuditEvent};
use lanyard_core::mfa::{KeyKind, WebauthnCredential};
use lanyard_core::secret::digest;
use lanyard_core::session::SessionSecret;
use lanyard_core::user::{User, UserId};
use serde::Deserialize;
use serde_json::json;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, Url, Uuid, Webauthn, WebauthnBuilder,
};

use crate::AppState;
use crate::session::{
    pre_cookie_name, secret_from, session_cookie_name, set_cookie, signed_in, start_session,
};
use crate::web::{ClientInfo, PageError, check_csrf, safe_return_to};

const CEREMONY_LIFETIME: Duration = Duration::from_secs(300);

/// The relying party: this issuer.
pub fn relying_party(issuer: &str) -> Result<Webauthn, String> {
    let origin = Url::parse(issuer).map_err(|e| e.to_string())?;
    let rp_id = origin
        .host_str()
        .ok_or("the issuer has no host")?
        .to_owned();
    WebauthnBuilder::new(&rp_id, &origin)
        .and_then(|b| b.rp_name("Lanyard").build())
        .map_err(|e| format!("WebAuthn cannot use the issuer {issuer}: {e}"))
}

/// A JSON error for the scripts; details stay in the log.
fn fail(status: StatusCode, message: &'static str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

fn page_error(e: PageError) -> Response {
    match e {
        PageError::Csrf => fail(StatusCode::FORBIDDEN, "the page has expired; reload it"),
        PageError::BadRequest(why) => fail(StatusCode::BAD_REQUEST, why),
        PageError::Throttled(_) => fail(StatusCode::TOO_MANY_REQUESTS, "too many attempts"),
        other => {
            tracing::error!(error = %other, "webauthn request failed");
            fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the server could not complete the request",
            )
        }
    }
}

fn csrf_header(headers: &HeaderMap) -> &str {
    headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The WebAuthn user handle of a user: their 16-byte id as a UUID.
fn user_handle(user: &User) -> Option<Uuid> {
    let bytes: Vec<u8> = (0..user.id.as_str().len())
        .step_by(2)
        .filter_map(|i| {
            user.id
                .as_str()
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    Uuid::from_slice(&bytes).ok()
}

/// How a credential ID is stored: base64url, as browsers show it.
fn cred_key(id: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
}

fn ceremony_key(purpose: &str, secret: &SessionSecret) -> String {
    digest(&format!("webauthn:{purpose}:{}", secret.cookie_value()))
}

async fn put<T: serde::Serialize>(state: &AppState, key: &str, value: &T) -> Result<(), Response> {
    let text = serde_json::to_string(value)
        .map_err(|_| fail(StatusCode::INTERNAL_SERVER_ERROR, "state"))?;
    let until = state.clock.now().saturating_add(CEREMONY_LIFETIME);
    state
        .store
        .put_ceremony(key, &text, until)
        .await
        .map_err(|e| page_error(e.into()))
}

async fn take<T: serde::de::DeserializeOwned>(state: &AppState, key: &str) -> Result<T, Response> {
    let text = state
        .store
        .take_ceremony(key, state.clock.now())
        .await
        .map_err(|e| page_error(e.into()))?;
    let text = text.ok_or_else(|| {
        fail(
            StatusCode::BAD_REQUEST,
            "no such challenge, or it expired; try again",
        )
    })?;
    serde_json::from_str(&text).map_err(|_| {
        fail(
            StatusCode::BAD_REQUEST,
            "the challenge could not be read; try again",
        )
    })
}

// ---- registration, from /account ----

/// The signed-in user behind a key-management request: its CSRF token checked, and a session
/// allowed to change sign-in methods.
async fn key_manager(
    state: &AppState,
    headers: &HeaderMap,
    client: &ClientInfo,
) -> Result<crate::session::SignedIn, Response> {
    let me = match signed_in(state, headers, client).await {
        Ok(Some(me)) => me,
        Ok(None) => return Err(fail(StatusCode::UNAUTHORIZED, "sign in first")),
        Err(e) => return Err(page_error(e)),
    };
    check_csrf(state, headers, Some(&me.secret), csrf_header(headers)).map_err(page_error)?;
    match crate::mfa::may_manage_factors(state, &me).await {
        Ok(true) => Ok(me),
        Ok(false) => Err(fail(
            StatusCode::FORBIDDEN,
            "confirm your second factor first: reload the page",
        )),
        Err(e) => Err(page_error(e)),
    }
}

#[derive(Deserialize)]
pub(crate) struct StartRegistration {
    kind: String,
}

pub(crate) async fn register_start(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    Json(body): Json<StartRegistration>,
) -> Response {
    let me = match key_manager(&state, &headers, &client).await {
        Ok(me) => me,
        Err(response) => return response,
    };
    let Some(kind) = KeyKind::parse(&body.kind) else {
        return fail(StatusCode::BAD_REQUEST, "unknown kind");
    };
    let Some(handle) = user_handle(&me.user) else {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, "user handle");
    };
    let existing = match state.store.webauthn_credentials(&me.user.id).await {
        Ok(list) => list,
        Err(e) => return page_error(e.into()),
    };
    let exclude: Vec<_> = existing
        .iter()
        .filter_map(|c| serde_json::from_str::<Passkey>(&c.credential).ok())
        .map(|p| p.cred_id().clone())
        .collect();
    let display = me
        .user
        .display_name
        .as_ref()
        .map_or(me.user.username.as_str(), |d| d.as_str());
    let (challenge, reg) = match state.webauthn.start_passkey_registration(
        handle,
        me.user.username.as_str(),
        display,
        Some(exclude),
    ) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::error!(error = %e, "starting a WebAuthn registration failed");
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "registration could not start",
            );
        }
    };
    let Ok(mut challenge) = serde_json::to_value(&challenge) else {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, "state");
    };
    if kind == KeyKind::Passkey
        && let Some(sel) = challenge
            .pointer_mut("/publicKey/authenticatorSelection")
            .and_then(|s| s.as_object_mut())
    {
        // A passkey must be discoverable, to sign in without a username.
        sel.insert("residentKey".into(), "required".into());
        sel.insert("requireResidentKey".into(), true.into());
    }
    if let Err(r) = put(
        &state,
        &ceremony_key(&format!("register:{}", kind.as_str()), &me.secret),
        &reg,
    )
    .await
    {
        return r;
    }
    Json(challenge).into_response()
}

#[derive(Deserialize)]
pub(crate) struct FinishRegistration {
    kind: String,
    name: String,
    credential: RegisterPublicKeyCredential,
}

pub(crate) async fn register_finish(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    Json(body): Json<FinishRegistration>,
) -> Response {
    let me = match key_manager(&state, &headers, &client).await {
        Ok(me) => me,
        Err(response) => return response,
    };
    let Some(kind) = KeyKind::parse(&body.kind) else {
        return fail(StatusCode::BAD_REQUEST, "unknown kind");
    };
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return fail(
            StatusCode::BAD_REQUEST,
            "give the key a name of up to 64 characters",
        );
    }
    let reg: PasskeyRegistration = match take(
        &state,
        &ceremony_key(&format!("register:{}", kind.as_str()), &me.secret),
    )
    .await
    {
        Ok(r) => r,
        Err(r) => return r,
    };
    let passkey = match state
        .webauthn
        .finish_passkey_registration(&body.credential, &reg)
    {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(error = %e, "a WebAuthn registration was refused");
            return fail(StatusCode::BAD_REQUEST, "the key's answer was not valid");
        }
    };
    let now = state.clock.now();
    let Ok(serialised) = serde_json::to_string(&passkey) else {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, "state");
    };
    let credential = WebauthnCredential {
        credential_id: cred_key(passkey.cred_id()),
        user_id: me.user.id.clone(),
        kind,
        name: name.to_owned(),
        credential: serialised,
        created_at: now,
        last_used_at: None,
    };
    let event = NewAuditEvent::new(now, AuditKind::KeyRegistered)
        .user(me.user.id.as_str())
        .actor(client.actor())
        .detail(format!("kind={} name={name:?}", kind.as_str()));
    match state
        .store
        .add_webauthn_credential(&credential, &event)
        .await
    {
        Ok(()) if kind == KeyKind::SecurityKey => {
            match first_recovery_codes(&state, &me.user, &client).await {
                Ok(codes) => Json(json!({"ok": true, "recovery_codes": codes})).into_response(),
                Err(e) => page_error(e),
            }
        }
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(lanyard_core::StoreError::Conflict(_)) => {
            fail(StatusCode::CONFLICT, "this key is registered already")
        }
        Err(e) => page_error(e.into()),
    }
}

/// Recovery codes for a user's first second factor: made and returned once, if they have none.
async fn first_recovery_codes(
    state: &AppState,
    user: &User,
    client: &ClientInfo,
) -> Result<Vec<String>, PageError> {
    if state.store.recovery_codes_left(&user.id).await? > 0 {
        return Ok(Vec::new());
    }
    let codes = lanyard_core::mfa::new_recovery_codes()?;
    let digests: Vec<String> = codes
        .iter()
        .map(|c| lanyard_core::mfa::recovery_digest(user.id.as_str(), c))
        .collect();
    let event = NewAuditEvent::new(state.clock.now(), AuditKind::RecoveryCodesRenewed)
        .user(user.id.as_str())
        .actor(client.actor());
    state
        .store
        .replace_recovery_codes(&user.id, &digests, &event)
        .await?;
    Ok(codes)
}

// ---- passwordless sign-in with a passkey, from /login ----

pub(crate) async fn login_start(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(pre) = secret_from(&headers, pre_cookie_name(&state)) else {
        return fail(StatusCode::BAD_REQUEST, "reload the sign-in page");
    };
    if let Err(e) = check_csrf(&state, &headers, Some(&pre), csrf_header(&headers)) {
        return page_error(e);
    }
    let (challenge, auth) = match state.webauthn.start_discoverable_authentication() {
        Ok(pair) => pair,
        Err(e) => {
            tracing::error!(error = %e, "starting a passkey sign-in failed");
            return fail(StatusCode::INTERNAL_SERVER_ERROR, "sign-in could not start");
        }
    };
    if let Err(r) = put(&state, &ceremony_key("login", &pre), &auth).await {
        return r;
    }
    Json(challenge).into_response()
}

#[derive(Deserialize)]
pub(crate) struct FinishLogin {
    credential: PublicKeyCredential,
    return_to: Option<String>,
}

pub(crate) async fn login_finish(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    Json(body): Json<FinishLogin>,
) -> Response {
    let Some(pre) = secret_from(&headers, pre_cookie_name(&state)) else {
        return fail(StatusCode::BAD_REQUEST, "reload the sign-in page");
    };
    if let Err(e) = check_csrf(&state, &headers, Some(&pre), csrf_header(&headers)) {
        return page_error(e);
    }
    let auth: DiscoverableAuthentication = match take(&state, &ceremony_key("login", &pre)).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let refused = || fail(StatusCode::UNAUTHORIZED, "that passkey is not known here");
    let Ok((handle, cred_id)) = state
        .webauthn
        .identify_discoverable_authentication(&body.credential)
    else {
        return refused();
    };
    let cred_id = cred_key(cred_id);
    let stored = match state.store.webauthn_credential(&cred_id).await {
        Ok(Some(c)) if c.kind == KeyKind::Passkey => c,
        Ok(_) => return refused(),
        Err(e) => return page_error(e.into()),
    };
    let user = match state.store.user_by_id(&stored.user_id).await {
        Ok(Some(u)) if !u.disabled && user_handle(&u) == Some(handle) => u,
        Ok(_) => return refused(),
        Err(e) => return page_error(e.into()),
    };
    let Ok(mut passkey) = serde_json::from_str::<Passkey>(&stored.credential) else {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, "stored key");
    };
    let result =
        match state
            .webauthn
            .finish_discoverable_authentication_v2(&body.credential, auth, &passkey)
        {
            Ok(r) => r,
            Err(e) => return refused_with_audit(&state, &user, &client, &e.to_string()).await,
        };
    if let Err(r) = record_use(&state, &user, &mut passkey, &result, &cred_id).await {
        return r;
    }
    let amr = vec!["hwk".to_owned(), "user".to_owned(), "mfa".to_owned()];
    let secret = match start_session(&state, &headers, &client, &user, amr, Vec::new()).await {
        Ok(s) => s,
        Err(e) => return page_error(e),
    };
    let next = safe_return_to(body.return_to.as_deref());
    let mut response = Json(json!({"redirect": next})).into_response();
    set_cookie(
        &state,
        &mut response,
        session_cookie_name(&state),
        Some(secret.cookie_value()),
    );
    set_cookie(&state, &mut response, pre_cookie_name(&state), None);
    response
}

async fn refused_with_audit(
    state: &AppState,
    user: &User,
    client: &ClientInfo,
    why: &str,
) -> Response {
    let kind = if why.contains("ompromise") || why.contains("ounter") {
        AuditKind::KeyCounterRegressed
    } else {
        AuditKind::SignInFailed
    };
    state.metrics.signin("failed", "hwk");
    let e = NewAuditEvent::new(state.clock.now(), kind)
        .user(user.id.as_str())
        .actor(client.actor())
        .detail("webauthn");
    if let Err(e) = state.store.append_audit(&e).await {
        return page_error(e.into());
    }
    tracing::info!(error = why, "a WebAuthn assertion was refused");
    fail(
        StatusCode::UNAUTHORIZED,
        "that passkey's answer was not valid",
    )
}

/// Stores the new counter; a counter that did not move forward is a possible clone, audited.
async fn record_use(
    state: &AppState,
    user: &User,
    passkey: &mut Passkey,
    result: &webauthn_rs::prelude::AuthenticationResult,
    cred_id: &str,
) -> Result<(), Response> {
    let before = serde_json::to_value(&*passkey)
        .ok()
        .and_then(|v| v.pointer("/cred/counter").and_then(|c| c.as_u64()));
    if let (Some(before), true) = (before, result.counter() > 0)
        && u64::from(result.counter()) <= before
    {
        let e = NewAuditEvent::new(state.clock.now(), AuditKind::KeyCounterRegressed)
            .user(user.id.as_str())
            .detail(format!(
                "credential={cred_id} counter={} stored={before}",
                result.counter()
            ));
        state
            .store
            .append_audit(&e)
            .await
            .map_err(|e| page_error(e.into()))?;
    }
    passkey.update_credential(result);
    let text = serde_json::to_string(&*passkey)
        .map_err(|_| fail(StatusCode::INTERNAL_SERVER_ERROR, "state"))?;
    state
        .store
        .webauthn_used(cred_id, &text, state.clock.now())
        .await
        .map_err(|e| page_error(e.into()))
}

// ---- a security key as the second step after the password ----

pub(crate) async fn mfa_start(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some((pending, user)) = crate::mfa::pending_for_webauthn(&state, &headers).await else {
        return fail(StatusCode::BAD_REQUEST, "sign in with your password first");
    };
    if let Err(e) = check_csrf(&state, &headers, Some(&pending), csrf_header(&headers)) {
        return page_error(e);
    }
    let keys = match security_keys(&state, &user.id).await {
        Ok(k) if !k.is_empty() => k,
        Ok(_) => return fail(StatusCode::BAD_REQUEST, "no security key is registered"),
        Err(r) => return r,
    };
    let (challenge, auth) = match state.webauthn.start_passkey_authentication(&keys) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::error!(error = %e, "starting a security key check failed");
            return fail(StatusCode::INTERNAL_SERVER_ERROR, "could not start");
        }
    };
    if let Err(r) = put(&state, &ceremony_key("mfa", &pending), &auth).await {
        return r;
    }
    Json(challenge).into_response()
}

async fn security_keys(state: &AppState, user: &UserId) -> Result<Vec<Passkey>, Response> {
    let all = state
        .store
        .webauthn_credentials(user)
        .await
        .map_err(|e| page_error(e.into()))?;
    Ok(all
        .iter()
        .filter(|c| c.kind == KeyKind::SecurityKey)
        .filter_map(|c| serde_json::from_str::<Passkey>(&c.credential).ok())
        .collect())
}

#[derive(Deserialize)]
pub(crate) struct FinishMfa {
    credential: PublicKeyCredential,
}

pub(crate) async fn mfa_finish(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    Json(body): Json<FinishMfa>,
) -> Response {
    let Some((pending, user)) = crate::mfa::pending_for_webauthn(&state, &headers).await else {
        return fail(StatusCode::BAD_REQUEST, "sign in with your password first");
    };
    if let Err(e) = check_csrf(&state, &headers, Some(&pending), csrf_header(&headers)) {
        return page_error(e);
    }
    let auth: PasskeyAuthentication = match take(&state, &ceremony_key("mfa", &pending)).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let result = match state
        .webauthn
        .finish_passkey_authentication(&body.credential, &auth)
    {
        Ok(r) => r,
        Err(e) => return refused_with_audit(&state, &user, &client, &e.to_string()).await,
    };
    let cred_id = cred_key(result.cred_id());
    let keys = match state.store.webauthn_credential(&cred_id).await {
        Ok(Some(c)) if c.user_id == user.id => c,
        Ok(_) => return fail(StatusCode::UNAUTHORIZED, "that key is not yours"),
        Err(e) => return page_error(e.into()),
    };
    let Ok(mut passkey) = serde_json::from_str::<Passkey>(&keys.credential) else {
        return fail(StatusCode::INTERNAL_SERVER_ERROR, "stored key");
    };
    if let Err(r) = record_use(&state, &user, &mut passkey, &result, &cred_id).await {
        return r;
    }
    match crate::mfa::finish_second_step(&state, &headers, &client, &user, "hwk").await {
        Ok((next, secret)) => {
            let mut response = Json(json!({"redirect": next})).into_response();
            set_cookie(
                &state,
                &mut response,
                session_cookie_name(&state),
                Some(secret.cookie_value()),
            );
            set_cookie(
                &state,
                &mut response,
                crate::mfa::pending_cookie_name(&state),
                None,
            );
            response
        }
        Err(e) => page_error(e),
    }
}
