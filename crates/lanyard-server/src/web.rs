//! What every browser-facing page shares: rendering, the error page, security headers, the
//! client's address and agent, and CSRF checks.
//!
//! Invariants: every response carries a Content-Security-Policy without inline scripts and
//! `frame-ancestors 'none'`, `nosniff`, `no-referrer` and `Cache-Control: no-store` (pages
//! here are personal; the stylesheet is the exception), plus HSTS when the issuer is https.
//! A state-changing form is accepted only with the CSRF token derived from the browser's
//! session or pre-session cookie and, when the browser says where the request came from,
//! only from this origin.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use askama::Template;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use lanyard_core::session::SessionSecret;

use crate::AppState;

/// A page that could not be served, shown to the browser as a clear page with no internals.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PageError {
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("the form was not sent from this site, or has expired")]
    Csrf,
    #[error("too many attempts")]
    Throttled(Duration),
    #[error("the request is too large")]
    TooLarge,
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl From<lanyard_core::StoreError> for PageError {
    fn from(e: lanyard_core::StoreError) -> Self {
        match e {
            lanyard_core::StoreError::Unavailable(_) => Self::Unavailable(e.to_string()),
            _ => Self::Internal(e.to_string()),
        }
    }
}

impl From<lanyard_core::secret::EntropyError> for PageError {
    fn from(e: lanyard_core::secret::EntropyError) -> Self {
        Self::Internal(e.to_string())
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorView<'a> {
    title: &'a str,
    message: String,
    back: &'a str,
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let (status, title, message) = match &self {
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, "Something is wrong with that request", (*m).to_owned()),
            Self::Csrf => (
                StatusCode::FORBIDDEN,
                "This form has expired",
                "The form was not sent from this site, or it has expired. Go back, reload the page and try again.".to_owned(),
            ),
            Self::Throttled(wait) => (
                StatusCode::TOO_MANY_REQUESTS,
                "Too many attempts",
                format!("Too many sign-in attempts. Try again in {} seconds.", wait.as_secs().max(1)),
            ),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Too much data", "That request was too large.".to_owned()),
            Self::Unavailable(detail) => {
                tracing::warn!(error = %detail, "database unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Lanyard is briefly unavailable",
                    "Lanyard cannot reach its database just now. Try again in a moment.".to_owned(),
                )
            }
            Self::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "Lanyard could not complete that request. Try again in a moment.".to_owned(),
                )
            }
        };
        let mut response = render(
            status,
            &ErrorView {
                title,
                message,
                back: "/account",
            },
        );
        if let Self::Throttled(wait) = self
            && let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

/// Renders a template; a rendering failure (a bug) becomes a plain 500.
pub(crate) fn render(status: StatusCode, view: &impl Template) -> Response {
    match view.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "template rendering failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
        }
    }
}

/// The Content-Security-Policy of every response: no inline script or style, no frames.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'";

pub(crate) async fn security_headers(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let is_static = req.uri().path().starts_with("/static/");
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    // A handler may widen it (the signed-out page frames apps' logout pages).
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Pages and tokens are personal; a handler that says otherwise (static files, public
    // discovery documents) has set its own.
    if !is_static && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if state.config.issuer.is_https() {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        );
    }
    response
}

/// The stylesheet, built into the binary so Lanyard stays one file to deploy.
pub(crate) async fn stylesheet_get() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../../static/lanyard.css"),
    )
}

/// The little script WebAuthn needs; no framework, no inline code.
pub(crate) async fn script_get() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("../../../static/webauthn.js"),
    )
}

/// Where a request comes from: the peer address (proxies come later) and the user agent.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClientInfo {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

impl ClientInfo {
    pub fn actor(&self) -> lanyard_core::audit::Actor {
        lanyard_core::audit::Actor {
            ip: self.ip.map(|ip| ip.to_string()),
            user_agent: self.user_agent.clone(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        // Resolved behind trusted proxies by `proxy::resolve_peer`; the socket otherwise.
        let ip = match parts.extensions.get::<crate::proxy::Seen>() {
            Some(seen) => seen.client_ip,
            None => parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        };
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(256).collect());
        Ok(Self { ip, user_agent })
    }
}

/// The value of cookie `name`, if the request carries it exactly once. Two cookies of one name
/// mean one was planted (from a sibling host, or with a narrower path): trust neither.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v);
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// Checks a state-changing form: the browser's own claim about where it was sent from, then
/// the token only a page served to this cookie's holder can contain.
pub(crate) fn check_csrf(
    state: &AppState,
    headers: &HeaderMap,
    secret: Option<&SessionSecret>,
    token: &str,
) -> Result<(), PageError> {
    // Under `Referrer-Policy: no-referrer` browsers send `Origin: null` on form posts, even
    // same-origin ones; then `Sec-Fetch-Site` is the browser's word on where the form came from.
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| *o != "null");
    if let Some(origin) = origin {
        if origin != state.config.issuer.origin() {
            return Err(PageError::Csrf);
        }
    } else if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err(PageError::Csrf);
    }
    match secret {
        Some(s) if s.csrf_matches(token) => Ok(()),
        _ => Err(PageError::Csrf),
    }
}

/// Turns a form rejection into a page: too large is 413, anything else a bad request.
pub(crate) fn form_error(rejection: axum::extract::rejection::FormRejection) -> PageError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        PageError::TooLarge
    } else {
        PageError::BadRequest("The form was incomplete or malformed.")
    }
}

/// A `return_to` that stays inside Lanyard: an absolute path, never a scheme, a host
/// (`//evil.example`), a backslash (which browsers treat as a slash) or a control character.
pub(crate) fn safe_return_to(candidate: Option<&str>) -> String {
    const HOME: &str = "/account";
    let Some(path) = candidate else {
        return HOME.to_owned();
    };
    let ok = path.starts_with('/')
        && !path.starts_with("//")
        && path.len() <= 4096
        && !path.contains('\\')
        && !path.chars().any(|c| c.is_control() || c.is_whitespace());
    if ok { path.to_owned() } else { HOME.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_stays_inside() {
        for ok in ["/account", "/authorize?client_id=x&state=y", "/a/b"] {
            assert_eq!(safe_return_to(Some(ok)), ok);
        }
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "\\\\evil.example",
            "javascript:alert(1)",
            "evil.example",
            "/\tevil",
            "/a\nb",
            "",
        ] {
            assert_eq!(safe_return_to(Some(bad)), "/account", "{bad:?}");
        }
        assert_eq!(safe_return_to(None), "/account");
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; lanyard_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, "lanyard_session"), Some("abc"));
        assert_eq!(cookie(&h, "session"), None);
        h.append(
            header::COOKIE,
            HeaderValue::from_static("lanyard_session=planted"),
        );
        assert_eq!(
            cookie(&h, "lanyard_session"),
            None,
            "a duplicate is refused"
        );
    }
}
