//! `/token` (RFC 6749 §3.2): the authorization code (with PKCE, RFC 7636 §4.6), refresh token
//! (rotated on every use, RFC 9700 §4.14.2) and client credentials grants, and the tokens they
//! mint: ID tokens (OpenID Connect Core §2) and JWT access tokens (RFC 9068).
//!
//! Invariants: a code works once; its replay revokes what it produced. A refresh token works
//! once; its reuse revokes its family. A session's tokens stop working when it ends, except
//! `offline_access` refresh tokens, which by default (`tokens.offline_access`) live on until they
//! expire or are revoked.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use lanyard_core::UnixTime;
use lanyard_core::audit::{AuditKind, NewAuditEvent};
use lanyard_core::client::{Client, GrantType};
use lanyard_core::grant::{Authentication, CodeRedemption, RefreshRedemption, RefreshToken};
use lanyard_core::oauth::{ErrorCode, OAuthError, Scope, pkce_matches, token_hash};
use lanyard_core::secret::{digest, random_token};
use lanyard_core::user::{User, UserId};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::client_auth::{JsonError, authenticate, single_params};

/// The claims of a Lanyard access token (RFC 9068 §2.2).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub client_id: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
    /// The refresh family the token came with: revoking the family revokes it too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fam: Option<String>,
}

fn err(code: ErrorCode, description: &'static str) -> JsonError {
    JsonError(OAuthError::new(code, description))
}

pub(crate) async fn token_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, JsonError> {
    let params = single_params(&body)?;
    let client = authenticate(&state, &headers, &params).await?;
    let grant = params.get("grant_type").map(String::as_str);
    let grant = match grant {
        Some("authorization_code") => GrantType::AuthorizationCode,
        Some("refresh_token") => GrantType::RefreshToken,
        Some("client_credentials") => GrantType::ClientCredentials,
        Some(_) => {
            return Err(err(
                ErrorCode::UnsupportedGrantType,
                "unsupported grant_type",
            ));
        }
        None => return Err(err(ErrorCode::InvalidRequest, "grant_type is missing")),
    };
    if !client.allows(grant) {
        return Err(err(
            ErrorCode::UnauthorizedClient,
            "this client may not use this grant type",
        ));
    }
    let body = match grant {
        GrantType::AuthorizationCode => code_grant(&state, &client, &params).await?,
        GrantType::RefreshToken => refresh_grant(&state, &client, &params).await?,
        GrantType::ClientCredentials => client_credentials(&state, &client, &params).await?,
    };
    state.metrics.token_issued(grant.as_str());
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::PRAGMA, "no-cache"),
        ],
        body.to_string(),
    )
        .into_response())
}

async fn code_grant(
    state: &AppState,
    client: &Client,
    params: &HashMap<String, String>,
) -> Result<serde_json::Value, JsonError> {
    let invalid = || {
        err(
            ErrorCode::InvalidGrant,
            "the code is invalid, expired or already used",
        )
    };
    let code = params
        .get("code")
        .ok_or_else(|| err(ErrorCode::InvalidRequest, "code is missing"))?;
    let now = state.clock.now();
    // Named before the code is consumed, and recorded in the same statement, so that a replay,
    // however close behind, knows what to revoke.
    let jti = random_token(16)?;
    let family = random_token(16)?;
    let record = match state
        .store
        .redeem_code(&digest(code), now, &jti, &family)
        .await?
    {
        CodeRedemption::Fresh(record) => record,
        CodeRedemption::Replayed {
            access_jti,
            refresh_family,
        } => {
            // RFC 6749 §4.1.2: a code used twice revokes what it was exchanged for.
            let until = now.saturating_add(state.config.tokens.access_token_lifetime);
            if let Some(jti) = access_jti {
                state.store.revoke_access_token(&jti, until).await?;
            }
            if let Some(family) = refresh_family {
                state.store.revoke_refresh_family(&family, now).await?;
            }
            let e = NewAuditEvent::new(now, AuditKind::CodeReplayed).client(client.id.as_str());
            state.store.append_audit(&e).await?;
            tracing::warn!(
                client = client.id.as_str(),
                "authorization code replayed; its tokens are revoked"
            );
            return Err(invalid());
        }
        CodeRedemption::Unknown => return Err(invalid()),
    };
    if record.client_id != client.id || now >= record.expires_at {
        return Err(invalid());
    }
    if params.get("redirect_uri") != Some(&record.redirect_uri) {
        return Err(err(
            ErrorCode::InvalidGrant,
            "redirect_uri does not match the authorization request",
        ));
    }
    let verifier = params.get("code_verifier");
    match (&record.code_challenge, verifier) {
        (Some(challenge), Some(v)) if pkce_matches(v, challenge) => {}
        (None, None) => {}
        _ => {
            return Err(err(
                ErrorCode::InvalidGrant,
                "the PKCE code_verifier does not match",
            ));
        }
    }
    let (user, session_alive) = live_user(state, &record.user_id, Some(&record.session_id)).await?;
    // The session the code was issued under must still be alive.
    if !session_alive {
        return Err(err(
            ErrorCode::InvalidGrant,
            "the sign-in behind this code has ended",
        ));
    }
    let scope = Scope::parse(&record.scope);
    let refresh = if client.allows(GrantType::RefreshToken) {
        let secret = random_token(32)?;
        let record = RefreshToken {
            token_digest: digest(&secret),
            family_id: family.clone(),
            client_id: client.id.clone(),
            user_id: user.id.clone(),
            session_id: Some(record.session_id.clone()),
            scope: scope.to_string(),
            auth: record.auth.clone(),
            issued_at: now,
            expires_at: now.saturating_add(state.config.tokens.refresh_token_lifetime),
        };
        state.store.insert_refresh_token(&record).await?;
        Some((secret, family))
    } else {
        None
    };
    let grant = Grant {
        client,
        user: &user,
        scope: &scope,
        session_id: Some(&record.session_id),
        auth: &record.auth,
    };
    mint(state, &grant, jti, record.nonce.as_deref(), refresh)
}

async fn refresh_grant(
    state: &AppState,
    client: &Client,
    params: &HashMap<String, String>,
) -> Result<serde_json::Value, JsonError> {
    let invalid = || {
        err(
            ErrorCode::InvalidGrant,
            "the refresh token is invalid, expired or revoked",
        )
    };
    let presented = params
        .get("refresh_token")
        .ok_or_else(|| err(ErrorCode::InvalidRequest, "refresh_token is missing"))?;
    let now = state.clock.now();
    // The successor is stored in the same transaction that consumes the token.
    let successor = random_token(32)?;
    let token = match state
        .store
        .rotate_refresh_token(&digest(presented), &digest(&successor), now)
        .await?
    {
        RefreshRedemption::Fresh(t) => t,
        RefreshRedemption::Reused { family_id } => {
            let e = NewAuditEvent::new(now, AuditKind::RefreshTokenReused)
                .client(client.id.as_str())
                .detail(format!("family={family_id}"));
            state.store.append_audit(&e).await?;
            tracing::warn!(
                client = client.id.as_str(),
                "refresh token reused; its family is revoked"
            );
            return Err(invalid());
        }
        RefreshRedemption::Unknown => return Err(invalid()),
    };
    // From here on a refusal also kills the successor: the token was presented wrongly.
    let refuse = |e: JsonError| refuse_family(state, token.family_id.clone(), e);
    if token.client_id != client.id || now >= token.expires_at {
        return refuse(invalid()).await;
    }
    let (user, session_alive) =
        match live_user(state, &token.user_id, token.session_id.as_deref()).await {
            Ok(found) => found,
            Err(e) => return refuse(e).await,
        };
    // offline_access tokens may outlive their session; their new tokens then carry no `sid`.
    if !session_alive && !state.config.tokens.outlives_session(&token) {
        return refuse(err(
            ErrorCode::InvalidGrant,
            "the sign-in behind this token has ended",
        ))
        .await;
    }
    let granted = Scope::parse(&token.scope);
    // A narrower scope applies to this response's tokens; the refresh token keeps the grant
    // (RFC 6749 §6).
    let scope = match params.get("scope") {
        Some(asked) => {
            let asked = Scope::parse(asked);
            if !asked.within(&granted) || asked.is_empty() {
                return refuse(err(
                    ErrorCode::InvalidScope,
                    "a refresh cannot widen the scope",
                ))
                .await;
            }
            asked
        }
        None => granted,
    };
    let sid = token.session_id.as_deref().filter(|_| session_alive);
    let grant = Grant {
        client,
        user: &user,
        scope: &scope,
        session_id: sid,
        auth: &token.auth,
    };
    mint(
        state,
        &grant,
        random_token(16)?,
        None,
        Some((successor, token.family_id.clone())),
    )
}

async fn refuse_family(
    state: &AppState,
    family: String,
    e: JsonError,
) -> Result<serde_json::Value, JsonError> {
    state
        .store
        .revoke_refresh_family(&family, state.clock.now())
        .await?;
    Err(e)
}

async fn client_credentials(
    state: &AppState,
    client: &Client,
    params: &HashMap<String, String>,
) -> Result<serde_json::Value, JsonError> {
    // Only confidential clients reach here (registration refuses the grant to public ones).
    if client.public {
        return Err(err(
            ErrorCode::UnauthorizedClient,
            "public clients cannot use client_credentials",
        ));
    }
    // The user scopes mean nothing without a user.
    let scope = Scope::parse(params.get("scope").map(String::as_str).unwrap_or_default());
    if scope.iter().next().is_some() {
        return Err(err(
            ErrorCode::InvalidScope,
            "user scopes are not available to client_credentials",
        ));
    }
    let now = state.clock.now();
    let lifetime = state.config.tokens.access_token_lifetime;
    let claims = AccessClaims {
        iss: state.config.issuer.as_str().to_owned(),
        sub: client.id.as_str().to_owned(),
        aud: client.id.as_str().to_owned(),
        client_id: client.id.as_str().to_owned(),
        exp: now.saturating_add(lifetime).as_secs(),
        iat: now.as_secs(),
        jti: random_token(16)?,
        scope: String::new(),
        sid: None,
        auth_time: None,
        fam: None,
    };
    let access = sign(state, client, "at+jwt", &claims)?;
    Ok(
        serde_json::json!({"access_token": access, "token_type": "Bearer", "expires_in": lifetime.as_secs()}),
    )
}

/// The user behind a grant, who must exist and not be disabled, and whether the grant's
/// session is alive: one database read.
async fn live_user(
    state: &AppState,
    id: &UserId,
    session: Option<&str>,
) -> Result<(User, bool), JsonError> {
    let now = state.clock.now();
    let policy = state.config.session.policy();
    let found = state
        .store
        .user_with_session(
            id,
            session,
            policy.idle_cutoff(now),
            policy.lifetime_cutoff(now),
        )
        .await?;
    match found {
        Some((u, session_alive)) if !u.disabled => Ok((u, session_alive)),
        _ => Err(err(
            ErrorCode::InvalidGrant,
            "the user no longer exists or is disabled",
        )),
    }
}

fn sign(
    state: &AppState,
    client: &Client,
    typ: &str,
    claims: &impl Serialize,
) -> Result<String, JsonError> {
    let keys = state.keys.current();
    // Access tokens use the client's algorithm too: one key family per client keeps things simple.
    let key = keys
        .signer(client.id_token_alg)
        .ok_or_else(|| err(ErrorCode::ServerError, "no signing key"))?;
    key.sign_jwt(typ, claims).map_err(|e| {
        tracing::error!(error = %e, "signing failed");
        err(ErrorCode::ServerError, "signing failed")
    })
}

/// Who the tokens are for and what they allow.
struct Grant<'a> {
    client: &'a Client,
    user: &'a User,
    scope: &'a Scope,
    session_id: Option<&'a str>,
    auth: &'a Authentication,
}

/// The token response: an access token, an ID token when the scope has `openid`, and the
/// refresh token (already stored) if there is one.
fn mint(
    state: &AppState,
    g: &Grant<'_>,
    jti: String,
    nonce: Option<&str>,
    refresh: Option<(String, String)>,
) -> Result<serde_json::Value, JsonError> {
    let now = state.clock.now();
    let t = &state.config.tokens;
    let access_claims = AccessClaims {
        iss: state.config.issuer.as_str().to_owned(),
        sub: g.user.id.as_str().to_owned(),
        aud: g.client.id.as_str().to_owned(),
        client_id: g.client.id.as_str().to_owned(),
        exp: now.saturating_add(t.access_token_lifetime).as_secs(),
        iat: now.as_secs(),
        jti,
        scope: g.scope.to_string(),
        sid: g.session_id.map(str::to_owned),
        auth_time: Some(g.auth.auth_time.as_secs()),
        fam: refresh.as_ref().map(|(_, family)| family.clone()),
    };
    let access = sign(state, g.client, "at+jwt", &access_claims)?;
    let mut body = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": t.access_token_lifetime.as_secs(),
        "scope": g.scope.to_string(),
    });
    if g.scope.contains("openid") {
        let claims = id_claims(
            state,
            g.client,
            g.user,
            g.scope,
            g.session_id,
            g.auth,
            nonce,
            &access,
            now,
        );
        body["id_token"] = sign(state, g.client, "JWT", &claims)?.into();
    }
    if let Some((secret, _)) = refresh {
        body["refresh_token"] = secret.into();
    }
    Ok(body)
}

#[allow(clippy::too_many_arguments)]
fn id_claims(
    state: &AppState,
    client: &Client,
    user: &User,
    scope: &Scope,
    session_id: Option<&str>,
    auth: &Authentication,
    nonce: Option<&str>,
    access_token: &str,
    now: UnixTime,
) -> serde_json::Value {
    let mut c = serde_json::json!({
        "iss": state.config.issuer.as_str(),
        "sub": user.id.as_str(),
        "aud": client.id.as_str(),
        "azp": client.id.as_str(),
        "exp": now.saturating_add(state.config.tokens.id_token_lifetime).as_secs(),
        "iat": now.as_secs(),
        "auth_time": auth.auth_time.as_secs(),
        "amr": auth.amr,
        "at_hash": token_hash(client.id_token_alg, access_token),
    });
    if let Some(n) = nonce {
        c["nonce"] = n.into();
    }
    if let Some(sid) = session_id {
        c["sid"] = sid.into();
    }
    if let Some(acr) = &auth.acr {
        c["acr"] = acr.as_str().into();
    }
    user_claims(&mut c, user, scope);
    c
}

/// The profile and email claims the scope allows (OpenID Connect Core §5.4).
pub(crate) fn user_claims(c: &mut serde_json::Value, user: &User, scope: &Scope) {
    if scope.contains("profile") {
        c["preferred_username"] = user.username.as_str().into();
        if let Some(name) = &user.display_name {
            c["name"] = name.as_str().into();
        }
    }
    if scope.contains("email") {
        c["email"] = user.email.as_str().into();
        // Lanyard does not verify addresses; saying so lets apps decide.
        c["email_verified"] = false.into();
    }
}
