//! A relying app for trying Lanyard's single sign-on: it signs in with the code flow (PKCE,
//! nonce, state, RFC 9207 `iss`) through the `openidconnect` crate, shows the verified claims,
//! signs out through the provider's end-session endpoint, and ends its own sessions when a
//! back-channel logout token (verified against the provider's JWKS) or a front-channel logout
//! request arrives.
//!
//! Sessions live in this process's memory: a restart signs everyone out of the app (not out of
//! Lanyard).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreJsonWebKey, CoreJsonWebKeySet,
    CoreJwsSigningAlgorithm,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndSessionUrl, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, IssuerUrl, JsonWebKey, JsonWebKeySetUrl, LogoutRequest, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, PostLogoutRedirectUrl, ProviderMetadataWithLogout,
    RedirectUrl, Scope, TokenResponse,
};
use serde::Deserialize;
use url::Url;

/// How the app is set up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Lanyard's issuer URL.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    /// Where browsers reach this app, without a path (`http://localhost:3001`).
    pub public_url: Url,
    /// Shown on its pages ("App A").
    pub name: String,
}

const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Clock difference tolerated between Lanyard and the app when checking `iat` and `exp`.
const LEEWAY: Duration = Duration::from_secs(300);
/// Bounds on what the app remembers, so a flood of sign-in starts cannot grow it forever.
const MAX_PENDING: usize = 10_000;
const MAX_SEEN_TOKENS: usize = 100_000;

type Rp = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// The app; clones share one state.
#[derive(Clone)]
pub struct App(Arc<Inner>);

struct Inner {
    settings: Settings,
    rp: Rp,
    http: reqwest::Client,
    end_session: Option<EndSessionUrl>,
    jwks_uri: JsonWebKeySetUrl,
    keys: RwLock<CoreJsonWebKeySet>,
    cookie: String,
    sessions: Mutex<HashMap<String, Local>>,
    pending: Mutex<HashMap<String, Pending>>,
    seen_tokens: Mutex<HashSet<String>>,
}

/// A signed-in user of this app.
#[derive(Clone)]
struct Local {
    sub: String,
    /// Lanyard's session, from the ID token's `sid`.
    sid: Option<String>,
    claims: String,
    id_token: CoreIdToken,
}

/// A sign-in on its way through Lanyard, keyed by its `state`.
struct Pending {
    verifier: PkceCodeVerifier,
    nonce: Nonce,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl App {
    /// Discovers the provider and builds the app.
    pub async fn new(settings: Settings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()?;
        let issuer = IssuerUrl::new(settings.issuer.clone()).context("the issuer URL")?;
        let meta = ProviderMetadataWithLogout::discover_async(issuer, &http)
            .await
            .with_context(|| format!("discovering {}", settings.issuer))?;
        let end_session = meta.additional_metadata().end_session_endpoint.clone();
        let jwks_uri = meta.jwks_uri().clone();
        let keys = meta.jwks().clone();
        let callback = settings.public_url.join("/callback")?;
        let rp = CoreClient::from_provider_metadata(
            meta,
            ClientId::new(settings.client_id.clone()),
            settings.client_secret.clone().map(ClientSecret::new),
        )
        .set_redirect_uri(RedirectUrl::from_url(callback));
        let port = settings.public_url.port_or_known_default().unwrap_or(0);
        Ok(Self(Arc::new(Inner {
            settings,
            rp,
            http,
            end_session,
            jwks_uri,
            keys: RwLock::new(keys),
            // Browsers share cookies between ports of one host: each app needs its own name.
            cookie: format!("demo_rp_{port}"),
            sessions: Mutex::default(),
            pending: Mutex::default(),
            seen_tokens: Mutex::default(),
        })))
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(home))
            .route("/login", get(login))
            .route("/callback", get(callback))
            .route("/logout", post(logout))
            .route("/backchannel_logout", post(backchannel_logout))
            .route("/frontchannel_logout", get(frontchannel_logout))
            .with_state(self.clone())
    }

    /// The Lanyard sessions (`sid`) of the users signed in to this app now.
    pub fn signed_in_sids(&self) -> Vec<String> {
        lock(&self.0.sessions)
            .values()
            .filter_map(|s| s.sid.clone())
            .collect()
    }

    fn session(&self, headers: &HeaderMap) -> Option<(String, Local)> {
        let id = cookie(headers, &self.0.cookie)?;
        let found = lock(&self.0.sessions).get(&id).cloned()?;
        Some((id, found))
    }

    /// Ends this app's sessions that belong to the Lanyard session `sid` (or, without one, to
    /// the user `sub`).
    fn end_sessions(&self, sid: Option<&str>, sub: Option<&str>) -> usize {
        let mut sessions = lock(&self.0.sessions);
        let before = sessions.len();
        sessions.retain(|_, s| match sid {
            Some(sid) => s.sid.as_deref() != Some(sid),
            None => Some(s.sub.as_str()) != sub,
        });
        before - sessions.len()
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie(response: &mut Response, name: &str, value: Option<&str>) {
    let header = match value {
        Some(v) => format!("{name}={v}; Path=/; HttpOnly; SameSite=Lax"),
        None => format!("{name}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
    };
    if let Ok(v) = HeaderValue::from_str(&header) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response()
}

fn page(status: StatusCode, view: &impl askama::Template) -> Response {
    match view.render() {
        Ok(html) => (status, [(header::CACHE_CONTROL, "no-store")], Html(html)).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "template error\n").into_response(),
    }
}

#[derive(askama::Template)]
#[template(
    ext = "html",
    source = r#"<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ app }}</title></head>
<body>
<h1>{{ app }}</h1>
{% if let Some(m) = message %}<p role="status">{{ m }}</p>
{% endif %}{% if let Some(u) = user %}<p>Signed in as <strong id="who">{{ u.sub }}</strong>.</p>
<p>The ID token's claims, verified:</p>
<pre>{{ u.claims }}</pre>
<form method="post" action="/logout"><button type="submit">Sign out</button></form>
{% else %}<p id="who">Not signed in.</p>
<p><a href="/login">Sign in with Lanyard</a></p>
{% endif %}</body>
</html>
"#
)]
struct HomeView<'a> {
    app: &'a str,
    user: Option<&'a Local>,
    message: Option<&'a str>,
}

async fn home(State(app): State<App>, headers: HeaderMap) -> Response {
    let session = app.session(&headers);
    let view = HomeView {
        app: &app.0.settings.name,
        user: session.as_ref().map(|(_, s)| s),
        message: None,
    };
    page(StatusCode::OK, &view)
}

fn message(app: &App, status: StatusCode, text: &str) -> Response {
    let view = HomeView {
        app: &app.0.settings.name,
        user: None,
        message: Some(text),
    };
    page(status, &view)
}

fn state_cookie(app: &App) -> String {
    format!("{}_state", app.0.cookie)
}

async fn login(State(app): State<App>) -> Response {
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state, nonce) = app
        .0
        .rp
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".into()))
        .add_scope(Scope::new("email".into()))
        .set_pkce_challenge(challenge)
        .url();
    {
        let mut pending = lock(&app.0.pending);
        if pending.len() >= MAX_PENDING {
            pending.clear();
        }
        pending.insert(state.secret().clone(), Pending { verifier, nonce });
    }
    let mut response = see_other(url.as_str());
    set_cookie(&mut response, &state_cookie(&app), Some(state.secret()));
    response
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

async fn callback(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let expected_state = cookie(&headers, &state_cookie(&app));
    let pending = match (&q.state, expected_state) {
        (Some(s), Some(e)) if *s == e => lock(&app.0.pending).remove(s),
        _ => None,
    };
    let Some(pending) = pending else {
        return message(
            &app,
            StatusCode::BAD_REQUEST,
            "This sign-in was not started here, or it was already used. Start again.",
        );
    };
    if q.iss.as_deref().is_some_and(|i| i != app.0.settings.issuer) {
        return message(
            &app,
            StatusCode::BAD_REQUEST,
            "The answer came from another issuer.",
        );
    }
    if let Some(e) = q.error {
        let text = format!("Lanyard did not sign you in ({e}).");
        return message(&app, StatusCode::BAD_REQUEST, &text);
    }
    let Some(code) = q.code else {
        return message(&app, StatusCode::BAD_REQUEST, "The answer carries no code.");
    };
    let local = match sign_in(&app, code, pending).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "sign-in failed");
            return message(
                &app,
                StatusCode::BAD_GATEWAY,
                "Signing in through Lanyard failed.",
            );
        }
    };
    let id = CsrfToken::new_random().secret().clone();
    lock(&app.0.sessions).insert(id.clone(), local);
    let mut response = see_other("/");
    set_cookie(&mut response, &app.0.cookie, Some(&id));
    set_cookie(&mut response, &state_cookie(&app), None);
    response
}

/// Redeems the code and verifies the ID token (signature, issuer, audience, expiry, nonce).
async fn sign_in(app: &App, code: String, pending: Pending) -> anyhow::Result<Local> {
    let tokens = app
        .0
        .rp
        .exchange_code(AuthorizationCode::new(code))?
        .set_pkce_verifier(pending.verifier)
        .request_async(&app.0.http)
        .await
        .context("redeeming the code")?;
    let id_token = tokens.id_token().context("no ID token")?.clone();
    let claims = id_token.claims(&app.0.rp.id_token_verifier(), &pending.nonce)?;
    let sub = claims.subject().to_string();
    // The library verified the token; `sid` is read from the same payload.
    let raw = id_token.to_string();
    let payload = raw.split('.').nth(1).context("not a JWS")?;
    let all: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload)?)?;
    Ok(Local {
        sub,
        sid: all["sid"].as_str().map(str::to_owned),
        claims: serde_json::to_string_pretty(&all)?,
        id_token,
    })
}

/// Ends the app's session, then sends the browser to Lanyard to end the single sign-on.
async fn logout(State(app): State<App>, headers: HeaderMap) -> Response {
    let session = app.session(&headers);
    if let Some((id, _)) = &session {
        lock(&app.0.sessions).remove(id);
    }
    let mut response = match (&app.0.end_session, session) {
        (Some(end), Some((_, local))) => {
            let url = LogoutRequest::from(end.clone())
                .set_id_token_hint(&local.id_token)
                .set_client_id(ClientId::new(app.0.settings.client_id.clone()))
                .set_post_logout_redirect_uri(PostLogoutRedirectUrl::from_url(
                    app.0.settings.public_url.clone(),
                ))
                .set_state(CsrfToken::new_random())
                .http_get_url();
            see_other(url.as_str())
        }
        _ => see_other("/"),
    };
    set_cookie(&mut response, &app.0.cookie, None);
    response
}

fn logout_error(description: &str) -> Response {
    let body = serde_json::json!({"error": "invalid_request", "error_description": description});
    (
        StatusCode::BAD_REQUEST,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// Back-Channel Logout 1.0 §2.5: a POSTed `logout_token`, validated per §2.6.
async fn backchannel_logout(State(app): State<App>, body: axum::body::Bytes) -> Response {
    let token = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "logout_token")
        .map(|(_, v)| v.into_owned());
    let Some(token) = token else {
        return logout_error("logout_token is missing");
    };
    let claims = match app.verify_logout_token(&token).await {
        Ok(c) => c,
        Err(why) => {
            tracing::warn!(why, "logout token refused");
            return logout_error(why);
        }
    };
    let ended = app.end_sessions(claims.sid.as_deref(), claims.sub.as_deref());
    tracing::info!(ended, "back-channel logout");
    (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")]).into_response()
}

#[derive(Deserialize)]
struct JwsHeader {
    alg: CoreJwsSigningAlgorithm,
    kid: Option<String>,
    typ: Option<String>,
}

struct LogoutClaims {
    sid: Option<String>,
    sub: Option<String>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl App {
    async fn verify_logout_token(&self, token: &str) -> Result<LogoutClaims, &'static str> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a signed JWT");
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| "not base64url");
        let header: JwsHeader =
            serde_json::from_slice(&decode(h)?).map_err(|_| "unreadable JWS header")?;
        if header.typ.as_deref() != Some("logout+jwt") {
            return Err("not a logout token (typ)");
        }
        if matches!(header.alg, CoreJwsSigningAlgorithm::None) {
            return Err("unsigned");
        }
        let key = self.key(header.kid.as_deref()).await?;
        key.verify_signature(
            &header.alg,
            &token.as_bytes()[..h.len() + 1 + p.len()],
            &decode(s)?,
        )
        .map_err(|_| "bad signature")?;

        let c: serde_json::Value =
            serde_json::from_slice(&decode(p)?).map_err(|_| "unreadable claims")?;
        if c["iss"].as_str() != Some(self.0.settings.issuer.as_str()) {
            return Err("wrong issuer");
        }
        let me = self.0.settings.client_id.as_str();
        let for_me = match &c["aud"] {
            serde_json::Value::String(a) => a == me,
            serde_json::Value::Array(a) => a.iter().any(|v| v.as_str() == Some(me)),
            _ => false,
        };
        if !for_me {
            return Err("not for this app (aud)");
        }
        let now = now_secs();
        match c["iat"].as_u64() {
            Some(iat) if iat <= now + LEEWAY.as_secs() => {}
            _ => return Err("iat missing or in the future"),
        }
        if c["exp"]
            .as_u64()
            .is_some_and(|exp| exp + LEEWAY.as_secs() < now)
        {
            return Err("expired");
        }
        if c["events"]
            .get(BACKCHANNEL_EVENT)
            .is_none_or(|e| !e.is_object())
        {
            return Err("no back-channel logout event");
        }
        if c.get("nonce").is_some() {
            return Err("a logout token has no nonce");
        }
        let sid = c["sid"].as_str().map(str::to_owned);
        let sub = c["sub"].as_str().map(str::to_owned);
        if sid.is_none() && sub.is_none() {
            return Err("neither sid nor sub");
        }
        let jti = c["jti"].as_str().ok_or("no jti")?;
        let mut seen = lock(&self.0.seen_tokens);
        if seen.len() >= MAX_SEEN_TOKENS {
            seen.clear();
        }
        if !seen.insert(jti.to_owned()) {
            return Err("replayed (jti already seen)");
        }
        Ok(LogoutClaims { sid, sub })
    }

    /// The provider's key named `kid`, fetching the JWKS again once if it is new (a rotation).
    async fn key(&self, kid: Option<&str>) -> Result<CoreJsonWebKey, &'static str> {
        let find = |set: &CoreJsonWebKeySet| {
            set.keys()
                .iter()
                .find(|k| k.key_id().map(|id| id.as_str()) == kid)
                .cloned()
        };
        let cached = find(&self.0.keys.read().unwrap_or_else(PoisonError::into_inner));
        if let Some(k) = cached {
            return Ok(k);
        }
        let fresh = CoreJsonWebKeySet::fetch_async(&self.0.jwks_uri, &self.0.http)
            .await
            .map_err(|_| "the provider's keys could not be fetched")?;
        let found = find(&fresh);
        *self.0.keys.write().unwrap_or_else(PoisonError::into_inner) = fresh;
        found.ok_or("signed with a key the provider does not publish")
    }
}

#[derive(Deserialize)]
struct FrontChannelQuery {
    iss: Option<String>,
    sid: Option<String>,
}

/// Front-Channel Logout 1.0 §2: loaded in an iframe by Lanyard's signed-out page.
async fn frontchannel_logout(
    State(app): State<App>,
    Query(q): Query<FrontChannelQuery>,
) -> Response {
    match (q.iss, q.sid) {
        (Some(iss), Some(sid)) if iss == app.0.settings.issuer => {
            let ended = app.end_sessions(Some(&sid), None);
            tracing::info!(ended, "front-channel logout");
            message(&app, StatusCode::OK, "Signed out.")
        }
        _ => message(
            &app,
            StatusCode::BAD_REQUEST,
            "Not a logout request from Lanyard.",
        ),
    }
}
