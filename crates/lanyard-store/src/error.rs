//! Turning sqlx errors into `StoreError` without leaking credentials.

use lanyard_core::StoreError;

pub(crate) fn from_sqlx(e: sqlx::Error) -> StoreError {
    if breaks_connection(&e) {
        crate::connections::connection_failed();
        return StoreError::Unavailable(e.to_string());
    }
    StoreError::Internal(e.to_string())
}

/// Whether `e` may have left its connection unusable: a failed socket or worker, a reply
/// sqlx could not follow, or PostgreSQL ending the session (SQLSTATE classes 08 and 57P).
fn breaks_connection(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
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
