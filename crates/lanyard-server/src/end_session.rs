//! `/end_session` (OpenID Connect RP-Initiated Logout 1.0).
//!
//! Invariants: a session is ended without asking only when the app proves which sign-in it means
//! with an `id_token_hint` this issuer signed (expired ones are fine, §2) for the user signed in
//! here; otherwise the user confirms with a CSRF-protected "Sign out" button. The browser is
//! sent to `post_logout_redirect_uri` only if it is one the client registered, compared as a
//! string; otherwise it sees a page. Ending the session writes its back-channel logouts; the
//! page that follows loads each app's front-channel logout URI in an iframe, and its CSP allows
//! frames from exactly those origins.

use std::collections::HashMap;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use lanyard_core::audit::{AuditKind, NewAuditEvent};
use lanyard_core::client::{Client, ClientId};
use lanyard_core::session::EndReason;

use crate::AppState;
use crate::session::{session_cookie_name, set_cookie, signed_in};
use crate::web::{CSP, ClientInfo, PageError, check_csrf, render};

#[derive(askama::Template)]
#[template(path = "logout/confirm.html")]
struct ConfirmView {
    app: Option<String>,
    username: Option<String>,
    csrf: String,
    params: Vec<(String, String)>,
}

#[derive(askama::Template)]
#[template(path = "logout/done.html")]
struct DoneView {
    apps: Vec<SignedOutApp>,
    has_frames: bool,
    continue_to: Option<String>,
}

/// An app that shared an ended session, and the Front-Channel Logout page to load for it.
pub(crate) struct SignedOutApp {
    name: String,
    /// `frontchannel_logout_uri` with `iss` and `sid` (Front-Channel Logout 1.0 §2).
    frame: Option<url::Url>,
}

fn parse(raw: &[u8]) -> Result<HashMap<String, String>, PageError> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(raw) {
        if v.len() > 8192 || k.chars().chain(v.chars()).any(char::is_control) {
            return Err(PageError::BadRequest(
                "The app's sign-out request is malformed.",
            ));
        }
        if !v.is_empty() && out.insert(k.into_owned(), v.into_owned()).is_some() {
            return Err(PageError::BadRequest(
                "A parameter of the sign-out request appears twice.",
            ));
        }
    }
    Ok(out)
}

pub(crate) async fn end_session_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    RawQuery(q): RawQuery,
) -> Result<Response, PageError> {
    let params = parse(q.unwrap_or_default().as_bytes())?;
    end_session(&state, &headers, &client, params, false).await
}

pub(crate) async fn end_session_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    body: axum::body::Bytes,
) -> Result<Response, PageError> {
    end_session(&state, &headers, &client, parse(&body)?, false).await
}

/// The user's "Sign out" on the confirmation page.
pub(crate) async fn confirm_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    body: axum::body::Bytes,
) -> Result<Response, PageError> {
    let mut params = parse(&body)?;
    let csrf = params.remove("csrf").unwrap_or_default();
    match signed_in(&state, &headers, &client).await? {
        Some(me) => check_csrf(&state, &headers, Some(&me.secret), &csrf)?,
        None => return finish(&params, None, Vec::new()).await,
    }
    end_session(&state, &headers, &client, params, true).await
}

/// What the request says about the app and the sign-in it means.
struct Request {
    client: Option<Client>,
    hinted_sub: Option<String>,
}

async fn understand(
    state: &AppState,
    params: &HashMap<String, String>,
) -> Result<Request, PageError> {
    let bad = || PageError::BadRequest("The app's sign-out request is not valid.");
    let mut hinted_sub = None;
    let mut hinted_client = None;
    if let Some(hint) = params.get("id_token_hint") {
        // Any ID token this issuer signed, expired or not (RP-Initiated Logout §2).
        let claims = state.keys.current().verify(hint, "JWT").ok_or_else(bad)?;
        if claims.get("iss").and_then(|v| v.as_str()) != Some(state.config.issuer.as_str()) {
            return Err(bad());
        }
        hinted_sub = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        hinted_client = claims
            .get("aud")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
    }
    let client_id = match (params.get("client_id"), hinted_client) {
        (Some(a), Some(b)) if *a != b => return Err(bad()),
        (Some(a), _) => Some(a.clone()),
        (None, b) => b,
    };
    let client = match client_id {
        Some(id) => state.store.client_by_id(&ClientId::from_stored(id)).await?,
        None => None,
    };
    Ok(Request { client, hinted_sub })
}

async fn end_session(
    state: &AppState,
    headers: &HeaderMap,
    info: &ClientInfo,
    params: HashMap<String, String>,
    confirmed: bool,
) -> Result<Response, PageError> {
    let req = understand(state, &params).await?;
    let me = signed_in(state, headers, info).await?;
    let Some(me) = me else {
        // Nothing to end here; the app is told it is done.
        return finish(&params, req.client.as_ref(), Vec::new()).await;
    };
    let proven = req.hinted_sub.as_deref() == Some(me.user.id.as_str());
    if !proven && !confirmed {
        let mut hidden: Vec<(String, String)> = params.into_iter().collect();
        hidden.sort();
        let view = ConfirmView {
            app: req.client.as_ref().map(|c| c.name.clone()),
            username: Some(me.user.username.to_string()),
            csrf: me.secret.csrf_token(),
            params: hidden,
        };
        return Ok(render(StatusCode::OK, &view));
    }
    let apps = sign_out(state, &me.secret.digest(), info).await?;
    let mut response = finish(&params, req.client.as_ref(), apps).await?;
    set_cookie(state, &mut response, session_cookie_name(state), None);
    Ok(response)
}

/// Ends the session whose secret has this digest; returns the apps that shared it.
pub(crate) async fn sign_out(
    state: &AppState,
    digest: &str,
    info: &ClientInfo,
) -> Result<Vec<SignedOutApp>, PageError> {
    let mut apps = Vec::new();
    if let Some(session) = state.store.session_by_digest(digest).await? {
        for id in state.store.session_clients(&session.public_id).await? {
            if let Some(c) = state.store.client_by_id(&id).await? {
                let frame = c
                    .frontchannel_logout_uri
                    .as_deref()
                    .and_then(|u| url::Url::parse(u).ok())
                    .map(|mut u| {
                        u.query_pairs_mut()
                            .append_pair("iss", state.config.issuer.as_str())
                            .append_pair("sid", &session.public_id);
                        u
                    });
                apps.push(SignedOutApp {
                    name: c.name,
                    frame,
                });
            }
        }
    }
    let event = NewAuditEvent::new(state.clock.now(), AuditKind::SessionEnded).actor(info.actor());
    state
        .store
        .end_session(digest, EndReason::SignedOut, &event)
        .await?;
    Ok(apps)
}

pub(crate) fn any_frames(apps: &[SignedOutApp]) -> bool {
    apps.iter().any(|a| a.frame.is_some())
}

/// The signed-out page. With front-channel frames its CSP lets exactly their origins load.
pub(crate) fn signed_out_page(apps: Vec<SignedOutApp>, continue_to: Option<String>) -> Response {
    let origins: Vec<String> = apps
        .iter()
        .filter_map(|a| a.frame.as_ref())
        .map(|u| u.origin().ascii_serialization())
        .collect();
    let view = DoneView {
        apps,
        has_frames: !origins.is_empty(),
        continue_to,
    };
    let mut response = render(StatusCode::OK, &view);
    if !origins.is_empty()
        && let Ok(csp) = HeaderValue::from_str(&format!("{CSP}; frame-src {}", origins.join(" ")))
    {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

/// Back to the app if it named a registered place to go, else a page saying what happened.
async fn finish(
    params: &HashMap<String, String>,
    client: Option<&Client>,
    apps: Vec<SignedOutApp>,
) -> Result<Response, PageError> {
    let target = params.get("post_logout_redirect_uri");
    let mut next = None;
    if let (Some(uri), Some(c)) = (target, client)
        && c.post_logout_redirect_uris.iter().any(|r| r == uri)
        && let Ok(mut url) = url::Url::parse(uri)
    {
        if let Some(s) = params.get("state") {
            url.query_pairs_mut().append_pair("state", s);
        }
        // Front-channel frames need a page to load in; it moves on by itself.
        if !any_frames(&apps) {
            return Ok(Redirect::to(url.as_str()).into_response());
        }
        next = Some(url.to_string());
    }
    Ok(signed_out_page(apps, next))
}
