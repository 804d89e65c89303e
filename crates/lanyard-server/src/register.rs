//! Dynamic Client Registration (RFC 7591) at `/register`: off unless an initial access token
//! is configured, and then open only to its holder. Registered clients pass exactly the
//! validation of `lanyard client add`, and are never exempt from consent (they are third-party
//! by nature).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lanyard_core::StoreError;
use lanyard_core::audit::{AuditKind, NewAuditEvent};
use lanyard_core::client::{ClientRegistration, GrantType, IdTokenAlg, RegistrationError};
use lanyard_core::secret::digests_match;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use crate::AppState;

/// The metadata Lanyard acts on; anything else is ignored, as RFC 7591 §2 requires.
#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    redirect_uris: Vec<String>,
    client_name: Option<String>,
    token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    grant_types: Vec<String>,
    #[serde(default)]
    response_types: Vec<String>,
    id_token_signed_response_alg: Option<String>,
    #[serde(default)]
    post_logout_redirect_uris: Vec<String>,
    backchannel_logout_uri: Option<String>,
    frontchannel_logout_uri: Option<String>,
    /// Accepted either way: every logout Lanyard sends carries `sid`.
    #[serde(rename = "backchannel_logout_session_required")]
    _backchannel_session_required: Option<bool>,
    #[serde(rename = "frontchannel_logout_session_required")]
    _frontchannel_session_required: Option<bool>,
}

fn error(status: StatusCode, code: &str, description: &str) -> Response {
    let body = json!({"error": code, "error_description": description});
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

pub(crate) async fn register_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(expected) = &state.config.registration.initial_access_token else {
        return error(
            StatusCode::NOT_FOUND,
            "invalid_request",
            "dynamic client registration is not enabled",
        );
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        });
    if !presented.is_some_and(|p| digests_match(p, &expected.0)) {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "a valid initial access token is required",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        return r;
    }
    let meta: Metadata = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => {
            let why = format!("the client metadata is not valid JSON of the expected shape: {e}");
            return error(StatusCode::BAD_REQUEST, "invalid_client_metadata", &why);
        }
    };
    match register(&state, meta).await {
        Ok(r) => r,
        Err(r) => r,
    }
}

async fn register(state: &AppState, meta: Metadata) -> Result<Response, Response> {
    let bad = |d: &str| error(StatusCode::BAD_REQUEST, "invalid_client_metadata", d);
    let public = match meta.token_endpoint_auth_method.as_deref() {
        None | Some("client_secret_basic") | Some("client_secret_post") => false,
        Some("none") => true,
        Some(_) => {
            return Err(bad(
                "token_endpoint_auth_method must be client_secret_basic, client_secret_post or none",
            ));
        }
    };
    if meta.response_types.iter().any(|r| r != "code") {
        return Err(bad("only the code response type is supported"));
    }
    let grant_types = meta
        .grant_types
        .iter()
        .map(|g| g.parse::<GrantType>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e.to_string()))?;
    let id_token_alg = match meta.id_token_signed_response_alg.as_deref() {
        Some(a) => a.parse::<IdTokenAlg>().map_err(|e| bad(&e.to_string()))?,
        None => IdTokenAlg::RS256,
    };
    let now = state.clock.now();
    let name = match meta.client_name {
        Some(n) => n,
        None => format!(
            "Registered client {}",
            lanyard_core::secret::random_id(4).map_err(|_| bad("no randomness"))?
        ),
    };
    let registration = ClientRegistration {
        name,
        redirect_uris: meta.redirect_uris,
        post_logout_redirect_uris: meta.post_logout_redirect_uris,
        backchannel_logout_uri: meta.backchannel_logout_uri,
        frontchannel_logout_uri: meta.frontchannel_logout_uri,
        public,
        skip_consent: false,
        id_token_alg,
        grant_types,
        require_mfa: false,
    };
    let valid = registration.validate(now).map_err(|e| match e {
        RegistrationError::Input(i) => {
            let code = if i.to_string().contains("redirect URI") {
                "invalid_redirect_uri"
            } else {
                "invalid_client_metadata"
            };
            error(StatusCode::BAD_REQUEST, code, &i.to_string())
        }
        RegistrationError::Entropy(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "no randomness",
        ),
    })?;
    let c = &valid.client;
    let event = NewAuditEvent::new(now, AuditKind::ClientCreated)
        .client(c.id.as_str())
        .detail(format!("name={:?} via=registration", c.name));
    state
        .store
        .create_client(c, &event)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(m) => bad(&m),
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "database unavailable while registering a client");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    "the server cannot reach its database; try again shortly",
                )
            }
            other => {
                tracing::error!(error = %other, "registering a client failed");
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the client could not be stored",
                )
            }
        })?;
    let mut body = json!({
        "client_id": c.id.as_str(),
        "client_id_issued_at": now.as_secs(),
        "client_name": c.name,
        "redirect_uris": c.redirect_uris,
        "post_logout_redirect_uris": c.post_logout_redirect_uris,
        "grant_types": c.grant_types,
        "response_types": ["code"],
        "token_endpoint_auth_method": if c.public { "none" } else { "client_secret_basic" },
        "id_token_signed_response_alg": c.id_token_alg.as_str(),
    });
    if let Some(secret) = &valid.secret {
        body["client_secret"] = secret.expose_secret().into();
        body["client_secret_expires_at"] = 0.into();
    }
    // Lanyard always sends `sid` (and `iss` to front-channel URIs), so whatever the request
    // said, the registered value is `true` (RFC 7591 §3.2.1 lets the server replace values).
    if let Some(u) = &c.backchannel_logout_uri {
        body["backchannel_logout_uri"] = u.as_str().into();
        body["backchannel_logout_session_required"] = true.into();
    }
    if let Some(u) = &c.frontchannel_logout_uri {
        body["frontchannel_logout_uri"] = u.as_str().into();
        body["frontchannel_logout_session_required"] = true.into();
    }
    Ok((
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response())
}
