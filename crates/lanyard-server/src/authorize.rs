//! `/authorize` (OpenID Connect Core §3.1.2, RFC 6749 §4.1.1) and the consent page.
//!
//! Invariants: nothing is sent to a redirect URI until the client is known and the URI is one
//! it registered, compared as exact strings (RFC 9700 §4.1.3); until then errors are a page.
//! Every redirect carries `iss` (RFC 9207). Codes are 256 random bits, stored by digest, live
//! 60 seconds and are bound to the client, the redirect URI, the PKCE challenge and the session.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use lanyard_core::client::{Client, ClientId, GrantType};
use lanyard_core::grant::{Authentication, AuthorizationCode};
use lanyard_core::oauth::{ErrorCode, OAuthError, Prompt, Scope, is_valid_challenge};
use lanyard_core::secret::{digest, random_token};

use crate::AppState;
use crate::session::{SignedIn, signed_in};
use crate::web::{ClientInfo, PageError, check_csrf, render};

/// The `acr` of a password sign-in.
pub const ACR_PASSWORD: &str = "urn:lanyard:acr:pwd";

/// What a session's methods amount to.
pub(crate) fn acr_of(amr: &[String]) -> &'static str {
    if amr.iter().any(|m| m == "mfa") {
        lanyard_core::mfa::ACR_MFA
    } else {
        ACR_PASSWORD
    }
}
const CODE_LIFETIME: Duration = Duration::from_secs(60);
const MAX_PARAM: usize = 2048;

#[derive(askama::Template)]
#[template(path = "consent/consent.html")]
struct ConsentView {
    client_name: String,
    username: String,
    scopes: Vec<&'static str>,
    csrf: String,
    params: Vec<(String, String)>,
    redirect_host: String,
}

pub(crate) async fn authorize_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    RawQuery(query): RawQuery,
) -> Result<Response, PageError> {
    let params = parse(query.unwrap_or_default().as_bytes())?;
    authorize(&state, &headers, &client, params, None).await
}

pub(crate) async fn authorize_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    body: axum::body::Bytes,
) -> Result<Response, PageError> {
    let params = parse(&body)?;
    authorize(&state, &headers, &client, params, None).await
}

/// The consent form: the authorization request again, with the user's answer.
pub(crate) async fn consent_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    client: ClientInfo,
    body: axum::body::Bytes,
) -> Result<Response, PageError> {
    let mut params = parse(&body)?;
    let csrf = params.remove("csrf").unwrap_or_default();
    let decision = params.remove("decision");
    let Some(me) = signed_in(&state, &headers, &client).await? else {
        return Err(PageError::BadRequest(
            "You are not signed in any more. Start again from the app.",
        ));
    };
    check_csrf(&state, &headers, Some(&me.secret), &csrf)?;
    let allow = match decision.as_deref() {
        Some("allow") => true,
        Some("deny") => false,
        _ => return Err(PageError::BadRequest("Choose Allow or Deny.")),
    };
    authorize(&state, &headers, &client, params, Some(allow)).await
}

fn parse(raw: &[u8]) -> Result<HashMap<String, String>, PageError> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(raw) {
        if v.len() > MAX_PARAM {
            return Err(PageError::BadRequest(
                "A parameter of this sign-in request is too long.",
            ));
        }
        if v.is_empty() {
            continue;
        }
        if k.chars().chain(v.chars()).any(char::is_control) {
            return Err(PageError::BadRequest(
                "A parameter of this sign-in request contains control characters.",
            ));
        }
        if out.insert(k.into_owned(), v.into_owned()).is_some() {
            return Err(PageError::BadRequest(
                "A parameter of this sign-in request appears twice.",
            ));
        }
    }
    Ok(out)
}

/// Where errors and codes go once the client and its redirect URI are trusted.
struct Reply<'a> {
    issuer: &'a str,
    redirect_uri: &'a str,
    state: Option<&'a str>,
}

impl Reply<'_> {
    fn send(&self, params: &[(&str, &str)]) -> Response {
        let Ok(mut url) = url::Url::parse(self.redirect_uri) else {
            return PageError::BadRequest("The app's redirect URI is not valid.").into_response();
        };
        {
            let mut q = url.query_pairs_mut();
            for (k, v) in params {
                q.append_pair(k, v);
            }
            if let Some(s) = self.state {
                q.append_pair("state", s);
            }
            q.append_pair("iss", self.issuer);
        }
        Redirect::to(url.as_str()).into_response()
    }

    fn error(&self, e: OAuthError) -> Response {
        self.send(&[
            ("error", e.code.as_str()),
            ("error_description", e.description),
        ])
    }
}

async fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    info: &ClientInfo,
    params: HashMap<String, String>,
    consent: Option<bool>,
) -> Result<Response, PageError> {
    let get = |k: &str| params.get(k).map(String::as_str);
    let Some(client_id) = get("client_id") else {
        return Err(PageError::BadRequest(
            "The app did not say who it is (no client_id).",
        ));
    };
    let Some(client) = state
        .clients
        .get(&*state.store, &ClientId::from_stored(client_id.to_owned()))
        .await?
    else {
        return Err(PageError::BadRequest(
            "This app is not registered with Lanyard.",
        ));
    };
    let Some(redirect_uri) = get("redirect_uri") else {
        return Err(PageError::BadRequest(
            "The app did not say where to send you back (no redirect_uri).",
        ));
    };
    if !client.redirect_uris.iter().any(|r| r == redirect_uri) {
        return Err(PageError::BadRequest(
            "The app asked to send you back to an address it did not register.",
        ));
    }
    let reply = Reply {
        issuer: state.config.issuer.as_str(),
        redirect_uri,
        state: get("state"),
    };
    match check(state, &client, &params) {
        Ok(checked) => {
            proceed(
                state, headers, info, &client, &params, checked, consent, &reply,
            )
            .await
        }
        Err(e) => Ok(reply.error(e)),
    }
}

/// The parts of a request that passed the checks.
struct Checked {
    scope: Scope,
    prompt: Prompt,
    max_age: Option<u64>,
    code_challenge: Option<String>,
    /// The `sub` of a valid `id_token_hint`: the user the app expects.
    hinted_sub: Option<String>,
}

fn check(
    state: &AppState,
    client: &Client,
    params: &HashMap<String, String>,
) -> Result<Checked, OAuthError> {
    use ErrorCode::*;
    let get = |k: &str| params.get(k).map(String::as_str);
    if get("request").is_some() {
        return Err(OAuthError::new(
            RequestNotSupported,
            "request objects are not supported",
        ));
    }
    if get("request_uri").is_some() {
        return Err(OAuthError::new(
            RequestUriNotSupported,
            "request_uri is not supported",
        ));
    }
    match get("response_type") {
        None => return Err(OAuthError::new(InvalidRequest, "response_type is missing")),
        Some("code") => {}
        Some(_) => {
            return Err(OAuthError::new(
                UnsupportedResponseType,
                "only response_type=code is supported",
            ));
        }
    }
    if get("response_mode").is_some_and(|m| m != "query") {
        return Err(OAuthError::new(
            InvalidRequest,
            "only response_mode=query is supported",
        ));
    }
    if !client.allows(GrantType::AuthorizationCode) {
        return Err(OAuthError::new(
            UnauthorizedClient,
            "this client may not use the code flow",
        ));
    }
    let mut scope = Scope::parse(get("scope").unwrap_or_default());
    if !scope.contains("openid") {
        return Err(OAuthError::new(
            InvalidScope,
            "the openid scope is required",
        ));
    }
    if !client.allows(GrantType::RefreshToken) {
        scope = scope.without("offline_access");
    }
    let code_challenge = match (get("code_challenge"), get("code_challenge_method")) {
        (_, Some(m)) if m != "S256" => {
            return Err(OAuthError::new(
                InvalidRequest,
                "only code_challenge_method=S256 is supported",
            ));
        }
        (Some(c), _) if !is_valid_challenge(c) => {
            return Err(OAuthError::new(
                InvalidRequest,
                "code_challenge is malformed",
            ));
        }
        (Some(c), Some(_)) => Some(c.to_owned()),
        (Some(_), None) => {
            return Err(OAuthError::new(
                InvalidRequest,
                "code_challenge_method=S256 is required",
            ));
        }
        (None, _) if client.public || state.config.tokens.require_pkce => {
            return Err(OAuthError::new(
                InvalidRequest,
                "PKCE (code_challenge with S256) is required",
            ));
        }
        (None, _) => None,
    };
    let prompt = Prompt::parse(get("prompt"))?;
    let max_age =
        match get("max_age") {
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                OAuthError::new(InvalidRequest, "max_age must be a number of seconds")
            })?),
            None => None,
        };
    // An ID token this issuer signed for this client; expired ones are fine (Core §3.1.2.1).
    let hinted_sub = match get("id_token_hint") {
        Some(hint) => {
            let claims = state.keys.current().verify(hint, "JWT").filter(|c| {
                c.get("iss").and_then(|i| i.as_str()) == Some(state.config.issuer.as_str())
                    && c.get("aud").and_then(|a| a.as_str()) == Some(client.id.as_str())
            });
            let sub = claims
                .as_ref()
                .and_then(|c| c.get("sub"))
                .and_then(|s| s.as_str());
            match sub {
                Some(sub) => Some(sub.to_owned()),
                None => {
                    return Err(OAuthError::new(
                        InvalidRequest,
                        "id_token_hint is not an ID token this issuer gave this client",
                    ));
                }
            }
        }
        None => None,
    };
    Ok(Checked {
        scope,
        prompt,
        max_age,
        code_challenge,
        hinted_sub,
    })
}

#[allow(clippy::too_many_arguments)]
async fn proceed(
    state: &AppState,
    headers: &HeaderMap,
    info: &ClientInfo,
    client: &Client,
    params: &HashMap<String, String>,
    c: Checked,
    consent: Option<bool>,
    reply: &Reply<'_>,
) -> Result<Response, PageError> {
    use ErrorCode::*;
    let now = state.clock.now();
    let me = signed_in(state, headers, info).await?;
    let too_old = |me: &SignedIn| {
        c.max_age.is_some_and(|max| {
            now.as_secs() - me.session.auth_time.as_secs() > i64::try_from(max).unwrap_or(i64::MAX)
        })
    };
    // A session of someone other than the hinted user does not count (Core §3.1.2.1).
    let expected = |m: &SignedIn| {
        c.hinted_sub
            .as_deref()
            .is_none_or(|sub| sub == m.user.id.as_str())
    };
    // An answer on the consent page comes from a session that was fresh enough to be shown it.
    let reauth = c.prompt.login || c.prompt.select_account;
    let fresh_enough = me
        .as_ref()
        .is_some_and(|m| expected(m) && (consent.is_some() || (!reauth && !too_old(m))));
    let me = match me {
        Some(me) if fresh_enough => me,
        _ if c.prompt.none => {
            return Ok(reply.error(OAuthError::new(LoginRequired, "the user must sign in")));
        }
        // Signed in, but not recently enough: the form must show even so.
        other => return Ok(to_login(params, other.is_some())),
    };
    // A second factor, if the operator, the client or the request (acr_values) asks for one
    // and this session has not passed one: step up, or enrol first.
    let wants_mfa = state.config.mfa.required
        || client.require_mfa
        || params
            .get("acr_values")
            .is_some_and(|v| v.split(' ').any(|a| a == lanyard_core::mfa::ACR_MFA));
    if wants_mfa && !me.session.amr.iter().any(|m| m == "mfa") {
        if c.prompt.none {
            return Ok(reply.error(OAuthError::new(
                InteractionRequired,
                "a second factor is required",
            )));
        }
        let here = format!("/authorize?{}", encode(params));
        if crate::mfa::has_second_factor(state, &me.user).await? {
            return crate::mfa::start_second_step(state, &me.user, &here).await;
        }
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        q.append_pair("return_to", &here);
        return Ok(Redirect::to(&format!("/account/totp?{}", q.finish())).into_response());
    }
    if consent == Some(false) {
        return Ok(reply.error(OAuthError::new(AccessDenied, "the user denied the request")));
    }
    if consent == Some(true) {
        // Remember the union with what was allowed before, not just this request's scopes.
        let before = state
            .store
            .consent(&me.user.id, &client.id)
            .await?
            .unwrap_or_default();
        let union = Scope::parse(&format!("{before} {}", c.scope));
        state
            .store
            .grant_consent(&me.user.id, &client.id, &union.to_string(), now)
            .await?;
        let e = lanyard_core::audit::NewAuditEvent::new(
            now,
            lanyard_core::audit::AuditKind::ConsentGranted,
        )
        .user(me.user.id.as_str())
        .client(client.id.as_str())
        .actor(info.actor())
        .detail(format!("scope={}", c.scope));
        state.store.append_audit(&e).await?;
    } else if !client.skip_consent || c.prompt.consent {
        // A public client's identity cannot be proven (any app on the device can use its
        // client_id and loopback redirect), so it gets no remembered consent (RFC 8252 §8.6).
        let remembered = match client.public && !client.skip_consent {
            true => None,
            false => state.store.consent(&me.user.id, &client.id).await?,
        };
        let covered = remembered.is_some_and(|r| c.scope.within(&Scope::parse(&r)));
        if c.prompt.consent || !covered {
            if c.prompt.none {
                return Ok(reply.error(OAuthError::new(
                    ConsentRequired,
                    "the user has not allowed this app",
                )));
            }
            return Ok(consent_page(
                client,
                &me,
                params,
                &c.scope,
                reply.redirect_uri,
            ));
        }
    }

    let code = random_token(32)?;
    let auth = Authentication {
        auth_time: me.session.auth_time,
        amr: me.session.amr.clone(),
        acr: Some(acr_of(&me.session.amr).to_owned()),
    };
    let record = AuthorizationCode {
        code_digest: digest(&code),
        client_id: client.id.clone(),
        user_id: me.user.id.clone(),
        session_id: me.session.public_id.clone(),
        redirect_uri: reply.redirect_uri.to_owned(),
        scope: c.scope.to_string(),
        nonce: params.get("nonce").cloned(),
        code_challenge: c.code_challenge,
        auth,
        created_at: now,
        expires_at: now.saturating_add(CODE_LIFETIME),
    };
    if let Err(e) = state.store.insert_code(&record).await {
        // The client may have been removed since it was looked up (see `clients`).
        if state.store.client_by_id(&client.id).await?.is_none() {
            return Err(PageError::BadRequest(
                "This app is not registered with Lanyard.",
            ));
        }
        return Err(e.into());
    }
    Ok(reply.send(&[("code", &code)]))
}

/// The request's parameters as a query string, in a stable order.
fn encode(params: &HashMap<String, String>) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    for k in keys {
        q.append_pair(k, &params[k]);
    }
    q.finish()
}

/// Sends the browser to sign in, then back here. `force` shows the form even to a signed-in
/// browser (prompt=login or select_account, max_age); those are dropped from the request on
/// the way back so the fresh sign-in satisfies them instead of asking again.
fn to_login(params: &HashMap<String, String>, force: bool) -> Response {
    let mut back = url::form_urlencoded::Serializer::new(String::new());
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    for k in keys {
        let v = &params[k];
        if k == "prompt" {
            let rest: Vec<&str> = v
                .split(' ')
                .filter(|p| !matches!(*p, "login" | "select_account"))
                .collect();
            if !rest.is_empty() {
                back.append_pair(k, &rest.join(" "));
            }
        } else if k == "max_age" {
            // The sign-in about to happen satisfies it; keeping it could loop on a slow user.
        } else {
            back.append_pair(k, v);
        }
    }
    let return_to = format!("/authorize?{}", back.finish());
    let mut login = url::form_urlencoded::Serializer::new(String::new());
    login.append_pair("return_to", &return_to);
    if force {
        login.append_pair("force", "1");
    }
    if let Some(hint) = params.get("login_hint") {
        login.append_pair("login_hint", hint);
    }
    Redirect::to(&format!("/login?{}", login.finish())).into_response()
}

fn consent_page(
    client: &Client,
    me: &SignedIn,
    params: &HashMap<String, String>,
    scope: &Scope,
    redirect_uri: &str,
) -> Response {
    let describe = |s: &str| match s {
        "openid" => "sign you in",
        "profile" => "see your name and username",
        "email" => "see your email address",
        "offline_access" => "keep access while you are away",
        _ => "do something Lanyard does not know",
    };
    let mut hidden: Vec<(String, String)> =
        params.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    hidden.sort();
    let view = ConsentView {
        client_name: client.name.clone(),
        username: me.user.username.to_string(),
        scopes: scope.iter().map(describe).collect(),
        csrf: me.secret.csrf_token(),
        params: hidden,
        redirect_host: url::Url::parse(redirect_uri)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default(),
    };
    render(StatusCode::OK, &view)
}
