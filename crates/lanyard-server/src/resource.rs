//! What relying apps do with tokens: `/userinfo` (OpenID Connect Core §5.3), introspection
//! (RFC 7662) and revocation (RFC 7009).
//!
//! Invariant: an access token is active only if this issuer signed it with a published key, it
//! has not expired, its `jti` has not been revoked, and the session it was issued under (if
//! any) is still alive. Introspection answers `active: false` without saying why.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lanyard_core::client::ClientId;
use lanyard_core::grant::RefreshToken;
use lanyard_core::oauth::{ErrorCode, OAuthError, Scope};
use lanyard_core::secret::digest;
use lanyard_core::store::AccessTokenCheck;
use lanyard_core::user::UserId;
use serde_json::json;

use crate::AppState;
use crate::client_auth::{JsonError, authenticate, single_params};
use crate::session::live_session;
use crate::token::{AccessClaims, user_claims};

/// The claims of an access token whose signature, issuer and expiry check out.
fn verify_signature(state: &AppState, token: &str) -> Option<AccessClaims> {
    let claims = state.keys.current().verify(token, "at+jwt")?;
    let claims: AccessClaims = serde_json::from_value(claims).ok()?;
    let now = state.clock.now().as_secs();
    (claims.iss == state.config.issuer.as_str() && claims.exp > now).then_some(claims)
}

/// Whom an access token's claims name.
struct TokenParties {
    client: ClientId,
    /// `None` for a client_credentials token, whose subject is its client.
    user: Option<UserId>,
}

impl TokenParties {
    fn of(claims: &AccessClaims) -> Self {
        Self {
            client: ClientId::from_stored(claims.client_id.clone()),
            user: (claims.sub != claims.client_id).then(|| UserId::from_stored(claims.sub.clone())),
        }
    }

    /// What the token's activity depends on in the database (see `AccessTokenCheck`). A
    /// removed client's tokens, and a disabled user's, stop working at once.
    fn check<'a>(&'a self, state: &AppState, claims: &'a AccessClaims) -> AccessTokenCheck<'a> {
        let now = state.clock.now();
        let policy = state.config.session.policy();
        AccessTokenCheck {
            jti: &claims.jti,
            family: claims.fam.as_deref(),
            session: claims.sid.as_deref(),
            client: &self.client,
            user: self.user.as_ref(),
            idle_cutoff: policy.idle_cutoff(now),
            lifetime_cutoff: policy.lifetime_cutoff(now),
        }
    }
}

/// An access token that is active now: one signature check (remembered, see `keys`) and one
/// database read, however many rules there are.
async fn active_access(state: &AppState, token: &str) -> Result<Option<AccessClaims>, JsonError> {
    let Some(claims) = verify_signature(state, token) else {
        return Ok(None);
    };
    let parties = TokenParties::of(&claims);
    let active = state
        .store
        .access_token_active(&parties.check(state, &claims))
        .await?;
    Ok(active.then_some(claims))
}

fn bearer_error(description: &'static str) -> Response {
    let challenge = format!("Bearer error=\"invalid_token\", error_description=\"{description}\"");
    let mut r = JsonError(OAuthError::new(ErrorCode::InvalidToken, description)).into_response();
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

pub(crate) async fn userinfo(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, JsonError> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
    // RFC 6750 §2.2 also allows the token in a form body.
    let from_body = single_params(&body)
        .ok()
        .and_then(|p| p.get("access_token").cloned());
    let token = match (from_header, from_body) {
        (Some(t), None) | (None, Some(t)) => t,
        (Some(_), Some(_)) => {
            return Err(JsonError(OAuthError::new(
                ErrorCode::InvalidRequest,
                "send the token once",
            )));
        }
        (None, None) => {
            let mut r = (StatusCode::UNAUTHORIZED, "").into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Ok(r);
        }
    };
    let inactive = || bearer_error("the access token is invalid, expired or revoked");
    let Some(claims) = verify_signature(&state, &token) else {
        return Ok(inactive());
    };
    // One read: the rules and, for a user's token, the user to describe.
    let parties = TokenParties::of(&claims);
    let check = parties.check(&state, &claims);
    let user = match parties.user {
        Some(_) => state.store.active_token_user(&check).await?,
        None => None,
    };
    if user.is_none()
        && (parties.user.is_some() || !state.store.access_token_active(&check).await?)
    {
        return Ok(inactive());
    }
    let scope = Scope::parse(&claims.scope);
    if !scope.contains("openid") {
        let mut r = JsonError(OAuthError::new(
            ErrorCode::InsufficientScope,
            "the access token has no openid scope",
        ))
        .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"insufficient_scope\", scope=\"openid\""),
        );
        return Ok(r);
    }
    // A client's own token never carries `openid` (client_credentials has no user scopes).
    let Some(user) = user else {
        return Ok(inactive());
    };
    let mut body = json!({"sub": user.id.as_str()});
    user_claims(&mut body, &user, &scope);
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response())
}

/// A refresh token that is still usable, if `client` owns it. Looked up, never consumed.
async fn active_refresh(
    state: &AppState,
    token: &str,
    client: &ClientId,
) -> Result<Option<RefreshToken>, JsonError> {
    let Some(found) = state.store.refresh_token(&digest(token)).await? else {
        return Ok(None);
    };
    let t = found.token;
    if found.used || found.revoked || t.client_id != *client || state.clock.now() >= t.expires_at {
        return Ok(None);
    }
    if !state.config.tokens.outlives_session(&t) {
        let alive = match &t.session_id {
            Some(sid) => live_session(state, sid).await?.is_some(),
            None => false,
        };
        if !alive {
            return Ok(None);
        }
    }
    Ok(Some(t))
}

pub(crate) async fn introspect_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, JsonError> {
    let params = single_params(&body)?;
    let client = authenticate(&state, &headers, &params).await?;
    if client.public {
        return Err(JsonError(OAuthError::new(
            ErrorCode::InvalidClient,
            "introspection needs a confidential client",
        )));
    }
    let token = params.get("token").ok_or_else(|| {
        JsonError(OAuthError::new(
            ErrorCode::InvalidRequest,
            "token is missing",
        ))
    })?;
    let inactive = json!({"active": false});
    // A client learns about its own tokens only (RFC 7662 §2.2, §4).
    let own = |c: &AccessClaims| c.client_id == client.id.as_str();
    let answer = match active_access(&state, token).await?.filter(own) {
        Some(c) => json!({
            "active": true,
            "scope": c.scope,
            "client_id": c.client_id,
            "sub": c.sub,
            "aud": c.aud,
            "iss": c.iss,
            "exp": c.exp,
            "iat": c.iat,
            "jti": c.jti,
            "token_type": "Bearer",
        }),
        None => match active_refresh(&state, token, &client.id).await? {
            Some(r) => json!({
                "active": true,
                "scope": r.scope,
                "client_id": r.client_id.as_str(),
                "sub": r.user_id.as_str(),
                "exp": r.expires_at.as_secs(),
                "iat": r.issued_at.as_secs(),
                "token_type": "refresh_token",
            }),
            None => inactive,
        },
    };
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
        .into_response())
}

pub(crate) async fn revoke_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, JsonError> {
    let params: HashMap<String, String> = single_params(&body)?;
    let client = authenticate(&state, &headers, &params).await?;
    let token = params.get("token").ok_or_else(|| {
        JsonError(OAuthError::new(
            ErrorCode::InvalidRequest,
            "token is missing",
        ))
    })?;
    let now = state.clock.now();
    if let Some(found) = state.store.refresh_token(&digest(token)).await? {
        // Only the client the token was issued to may revoke it (RFC 7009 §2.1).
        if found.token.client_id == client.id {
            state
                .store
                .revoke_refresh_family(&found.token.family_id, now)
                .await?;
        }
    } else if let Some(c) = verify_signature(&state, token)
        && c.client_id == client.id.as_str()
    {
        state
            .store
            .revoke_access_token(&c.jti, lanyard_core::UnixTime::from_secs(c.exp))
            .await?;
    }
    // RFC 7009 §2.2: the answer is the same whether or not the token was known.
    Ok(StatusCode::OK.into_response())
}
