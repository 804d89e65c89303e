//! Turning sqlx errors into `StoreError` without leaking credentials.

use lanyard_core::StoreError;

pub(crate) fn from_sqlx(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        other => StoreError::Internal(other.to_string()),
    }
}

/// Like `from_sqlx`, but a unique-constraint violation becomes `Conflict(message())`.
pub(crate) fn conflict_or(e: sqlx::Error, message: impl FnOnce() -> String) -> StoreError {
    match e.as_database_error() {
        Some(db) if db.is_unique_violation() => StoreError::Conflict(message()),
        _ => from_sqlx(e),
    }
}

pub(crate) fn open_error(url: &str, e: sqlx::Error) -> StoreError {
    let what = format!("cannot open the database {}", redact_url(url));
    match from_sqlx(e) {
        StoreError::Unavailable(why) => StoreError::Unavailable(format!("{what}: {why}")),
        other => StoreError::Internal(format!("{what}: {other}")),
    }
}

/// The URL with any password replaced, fit for messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            // Cannot fail: a URL with a password has a host.
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(unparsable URL)".to_owned(),
    }
}
