//! Protocol plumbing shared by the token, introspection and revocation endpoints: form
//! parameters that may appear once only, client authentication (RFC 6749 §2.3.1), and JSON
//! error responses (RFC 6749 §5.2).

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use lanyard_core::client::{Client, ClientId};
use lanyard_core::oauth::{ErrorCode, OAuthError};

use crate::AppState;

/// A protocol error as a JSON response; `invalid_client` is 401 with a Basic challenge.
pub(crate) struct JsonError(pub OAuthError);

impl From<OAuthError> for JsonError {
    fn from(e: OAuthError) -> Self {
        Self(e)
    }
}

impl From<lanyard_core::StoreError> for JsonError {
    fn from(e: lanyard_core::StoreError) -> Self {
        Self(store_failure(&e))
    }
}

/// What a client is told when the store fails: `temporarily_unavailable` (503) when the
/// database cannot be reached, `server_error` otherwise; the details go to the log only.
pub(crate) fn store_failure(e: &lanyard_core::StoreError) -> OAuthError {
    if let lanyard_core::StoreError::Unavailable(_) = e {
        tracing::warn!(error = %e, "database unavailable at a protocol endpoint");
        return OAuthError::new(
            ErrorCode::TemporarilyUnavailable,
            "the server cannot reach its database; try again shortly",
        );
    }
    tracing::error!(error = %e, "store error at a protocol endpoint");
    OAuthError::new(
        ErrorCode::ServerError,
        "the server could not complete the request",
    )
}

impl IntoResponse for JsonError {
    fn into_response(self) -> Response {
        let status = match self.0.code {
            ErrorCode::InvalidClient => StatusCode::UNAUTHORIZED,
            ErrorCode::InvalidToken => StatusCode::UNAUTHORIZED,
            ErrorCode::InsufficientScope => StatusCode::FORBIDDEN,
            ErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        let body = serde_json::json!({
            "error": self.0.code.as_str(),
            "error_description": self.0.description,
        });
        let mut r = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        if self.0.code == ErrorCode::TemporarilyUnavailable {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if self.0.code == ErrorCode::InvalidClient {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"lanyard\""),
            );
        }
        r
    }
}

/// Form parameters, each present at most once (RFC 6749 §3.1, §3.2), empty ones dropped.
pub(crate) fn single_params(body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut out = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        if v.is_empty() {
            continue;
        }
        if k.chars().chain(v.chars()).any(char::is_control) {
            return Err(OAuthError::new(
                ErrorCode::InvalidRequest,
                "a parameter contains control characters",
            ));
        }
        if out.insert(k.into_owned(), v.into_owned()).is_some() {
            return Err(OAuthError::new(
                ErrorCode::InvalidRequest,
                "a parameter was repeated",
            ));
        }
    }
    Ok(out)
}

/// Who is calling: a client that proved itself, or a public client that named itself.
pub(crate) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<Arc<Client>, OAuthError> {
    let invalid = OAuthError::new(ErrorCode::InvalidClient, "client authentication failed");
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(rest.trim())
        });
    let (id, secret) = match (basic, params.get("client_secret")) {
        (Some(_), Some(_)) => {
            return Err(OAuthError::new(
                ErrorCode::InvalidRequest,
                "use one client authentication method",
            ));
        }
        (Some(encoded), None) => {
            let decoded = STANDARD.decode(encoded).map_err(|_| invalid.clone())?;
            let decoded = String::from_utf8(decoded).map_err(|_| invalid.clone())?;
            let (id, secret) = decoded.split_once(':').ok_or_else(|| invalid.clone())?;
            // Both halves are form-urlencoded (RFC 6749 §2.3.1).
            let dec = |s: &str| {
                url::form_urlencoded::parse(format!("x={s}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            let (id, secret) = (
                dec(id).ok_or_else(|| invalid.clone())?,
                dec(secret).ok_or_else(|| invalid.clone())?,
            );
            if params.get("client_id").is_some_and(|p| *p != id) {
                return Err(invalid);
            }
            (id, Some(secret))
        }
        (None, secret) => {
            let id = params
                .get("client_id")
                .ok_or_else(|| invalid.clone())?
                .clone();
            (id, secret.cloned())
        }
    };
    let client = state
        .clients
        .get(&*state.store, &ClientId::from_stored(id))
        .await
        .map_err(|e| store_failure(&e))?;
    let Some(client) = client else {
        return Err(invalid);
    };
    match (client.public, secret) {
        (true, None) => Ok(client),
        (false, Some(s)) if client.secret_matches(&s) => Ok(client),
        _ => Err(invalid),
    }
}

impl From<lanyard_core::secret::EntropyError> for JsonError {
    fn from(e: lanyard_core::secret::EntropyError) -> Self {
        tracing::error!(error = %e, "no randomness");
        Self(OAuthError::new(
            ErrorCode::ServerError,
            "the server could not complete the request",
        ))
    }
}
